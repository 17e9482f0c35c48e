"""errands: a self-hosted, always-on agent harness.

The errand log is the source of truth: every errand is an append-only sequence of
typed events (:mod:`errands.core.events`) kept by a durable store (:mod:`errands.store`).
The loop (:mod:`errands.engine.loop`) asks the model, runs tools behind the policy hook and
writes every step to the log, so that it resumes exactly after a crash.
"""

__version__ = "0.1.0"
