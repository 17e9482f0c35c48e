"""The PostgreSQL store (``[store] url = "postgresql://…"``, the ``errands[postgres]``
extra): many processes on many hosts share one database. See :mod:`.store` and
``docs/scale-out.md``."""

from errands.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
