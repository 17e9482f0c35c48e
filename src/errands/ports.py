"""The protocols errands is built from, in one place.

You can ignore this module: it only gathers, for a reader, the interfaces that the
parts of errands meet at -- each defined beside the code that owns it. Anything that
fits one of them plugs into :func:`errands.harness.build`.

- :class:`Store`, :class:`StoreReader` -- errand logs, views, leases, budgets
  (:mod:`errands.store.protocol`; SQLite in :mod:`errands.store.sqlite`);
- :class:`Model` -- one model call, streamed (:mod:`errands.models.protocol`);
- :class:`Toolset` -- an errand's tools: list them, call one (:mod:`errands.tools.toolset`);
- :class:`PolicyHook` -- allow, ask or deny one tool call (:mod:`errands.policy.hook`);
- :class:`Channel` -- a way to reach the person besides the inbox (:mod:`errands.channels`);
- :data:`TextListener` -- where streamed model text goes (:mod:`errands.engine.loop`).
"""

from errands.channels import Channel
from errands.engine.loop import TextListener
from errands.models.protocol import Model
from errands.policy.hook import PolicyHook
from errands.store.protocol import Store, StoreReader
from errands.tools.toolset import Toolset

__all__ = ["Channel", "Model", "PolicyHook", "Store", "StoreReader", "TextListener", "Toolset"]
