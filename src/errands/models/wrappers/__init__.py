"""Models around models: retries, rate limits, fallback chains (and how they compose,
:mod:`.router`). Each wraps a :class:`~errands.models.protocol.Model` and is one."""
