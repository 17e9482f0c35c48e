"""The OpenTelemetry side: the SDK's providers and OTLP/HTTP exporters, fed by the log.

:class:`Telemetry` subscribes to the store's commits (the listener the live streams use:
called on this event loop after each durable commit, with the errand and its last seq),
reads what is new of each errand, and hands it to a :class:`~.follow.Follower`, which
gives back finished spans and metric increments. All of it runs on the serving loop
(never on the runner's), after the commit; the loop itself carries no instrumentation.

Imported only when OpenTelemetry is configured (:func:`errands.observe.start`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterable

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

from errands import __version__
from errands.core import events as ev
from errands.core.states import ErrandState
from errands.observe import OtelConfig
from errands.observe.follow import Follower, SpanRecord
from errands.store import Store

__all__ = ["Telemetry"]

log = logging.getLogger("errands.observe")

REPLAY = 512  # newest events read of an errand first seen (where it is, after a restart)
FIRST_SIGHT = 30.0  # seconds: events of an errand first seen older than this were reported
ACTIVE = (
    ErrandState.queued,
    ErrandState.running,
    ErrandState.waiting_approval,
    ErrandState.sleeping,
    ErrandState.needs_attention,
)
_SAMPLED = trace.TraceFlags(trace.TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)


def _resource() -> Resource:
    """service.name "errands" unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) names
    it; the version; what the environment's resource detectors add."""
    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "errands"}))
    return resource


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class Telemetry:
    """Spans and metrics for every errand this process commits (or is told of)."""

    def __init__(self, store: Store, config: OtelConfig) -> None:
        self.store = store
        self.config = config
        self.started = time.time()
        resource = self.resource = _resource()
        # spans are made finished, from the log's times and ids, and handed straight to the
        # batch processor (no live span, no tracer); the provider is read for the sampler
        # OTEL_TRACES_SAMPLER configures
        self.sampler = TracerProvider(resource=resource).sampler
        self.processor: BatchSpanProcessor | None = None
        self.meter_provider: MeterProvider | None = None
        if config.traces_url is not None:
            self.processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=config.traces_url))
        self.scope = InstrumentationScope("errands", __version__)
        self.random = RandomIdGenerator()
        self.by_state: dict[str, int] = {}
        self.waiting = 0
        if config.metrics_url is not None:
            self._metrics(resource, config)
        self.follower = Follower(self)
        self._pending: dict[str, int] = {}
        self._drain: asyncio.Task[None] | None = None
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._poll = asyncio.create_task(self._poll_forever()) if self.meter_provider else None
        store.subscribe(self._committed)

    def _metrics(self, resource: Resource, config: OtelConfig) -> None:
        assert config.metrics_url is not None
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=config.metrics_url),
            export_interval_millis=config.metrics_seconds * 1000,
        )
        self.meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        meter = self.meter_provider.get_meter("errands", __version__)
        self.steps = meter.create_counter("errands.steps", "{step}", "model turns taken")
        self.spend = meter.create_counter("errands.spend", "USD", "what model calls cost")
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", "{token}", "tokens per model call, by type"
        )
        self.ended = meter.create_counter(
            "errands.finished", "{errand}", "errands that finished, by state"
        )
        self.commits = meter.create_histogram(
            "errands.store.commit.duration", "s", "how long the store's group commits took"
        )
        meter.create_observable_gauge(
            "errands.errands", [self._observe_states], "{errand}", "errands not finished, by state"
        )
        meter.create_observable_gauge(
            "errands.approvals.waiting", [self._observe_waiting], "{approval}", "approvals waiting"
        )
        # the writer thread times each commit (zero cost while nobody listens)
        if hasattr(self.store, "commit_timer"):
            self.store.commit_timer = self.commits.record

    # -- the Follower's sink -------------------------------------------------------------------

    def span(self, r: SpanRecord) -> None:
        if self.processor is None or not self._sampled(r.trace):
            return
        span_id = r.span if r.span is not None else self.random.generate_span_id()
        context = SpanContext(r.trace, span_id, is_remote=False, trace_flags=_SAMPLED)
        parent = None
        if r.parent is not None:
            parent = SpanContext(r.trace, r.parent, is_remote=False, trace_flags=_SAMPLED)
        status = Status(StatusCode.ERROR, r.error) if r.error is not None else _UNSET
        finished = ReadableSpan(
            r.name,
            context=context,
            parent=parent,
            resource=self.resource,
            attributes=r.attrs,
            kind=SpanKind.CLIENT if r.name.startswith("chat ") else SpanKind.INTERNAL,
            status=status,
            start_time=_ns(r.start),
            end_time=_ns(max(r.end, r.start)),
            instrumentation_scope=self.scope,
        )
        self.processor.on_end(finished)

    def _sampled(self, trace_id: int) -> bool:
        """Is the trace sampled? What the sampler says of its root, for each of its spans
        (a ratio sampler's answer depends only on the trace id, which is the errand's)."""
        said = self.sampler.should_sample(None, trace_id, "errand.run")
        return said.decision is Decision.RECORD_AND_SAMPLE

    def step(self, model: str) -> None:
        if self.meter_provider is not None:
            self.steps.add(1, {"gen_ai.request.model": model})

    def spent(self, model: str, usage: ev.Usage) -> None:
        if self.meter_provider is None:
            return
        attrs = {"gen_ai.request.model": model}
        if usage.cost_usd:
            self.spend.add(usage.cost_usd, attrs)
        self.tokens.record(usage.input_tokens, {**attrs, "gen_ai.token.type": "input"})
        self.tokens.record(usage.output_tokens, {**attrs, "gen_ai.token.type": "output"})

    def finished(self, state: str) -> None:
        if self.meter_provider is not None:
            self.ended.add(1, {"errands.state": state})

    # -- following the store ---------------------------------------------------------------------

    def _committed(self, errand_id: str, seq: int) -> None:
        if self._closed:
            return
        self._pending[errand_id] = seq
        if self._drain is None or self._drain.done():
            self._drain = self._loop.create_task(self._catch_up())

    async def _catch_up(self) -> None:
        while self._pending:
            errand_id = next(iter(self._pending))
            del self._pending[errand_id]
            try:
                await self._read(errand_id)
            except Exception:  # telemetry never stops errands; the next commit reads on
                log.exception("reading errand %s for telemetry failed", errand_id)

    async def _read(self, errand_id: str) -> None:
        after = self.follower.following(errand_id)
        if after is not None:
            self.follower.follow(errand_id, await self.store.read(errand_id, after))
            return
        view = await self.store.view(errand_id)
        since = max(self.started, time.time() - FIRST_SIGHT)
        self.follower.begin(errand_id, since, created=view.created_at)
        self.follower.follow(errand_id, await self.store.read_latest(errand_id, REPLAY))

    async def _poll_forever(self) -> None:
        """Read what the gauges report (errands by state, approvals waiting) now and then."""
        while True:
            try:
                views = await self.store.list_errands(states=list(ACTIVE), limit=1_000_000)
                found = Counter(str(v.state) for v in views)
                self.by_state = {str(s): found.get(str(s), 0) for s in ACTIVE}
                self.waiting = len(await self.store.pending_approvals())
            except Exception:
                log.exception("reading errands for the metrics failed")
            await asyncio.sleep(self.config.metrics_seconds)

    def _observe_states(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"errands.state": s}) for s, n in self.by_state.items()]

    def _observe_waiting(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.waiting)]

    # -- closing -----------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Wait until what was committed so far is read, and export it."""
        while self._drain is not None and not self._drain.done():
            await asyncio.shield(self._drain)
        if self.processor is not None:
            await asyncio.to_thread(self.processor.force_flush)
        if self.meter_provider is not None:
            await asyncio.to_thread(self.meter_provider.force_flush)

    async def close(self) -> None:
        """Read what is left, export it, and stop (the exporters' threads end)."""
        if self._closed:
            return
        with contextlib.suppress(Exception):
            # what other processes (errands up's workers) committed last, which the change
            # feed may not have announced before it stopped
            for errand_id, seq, _ in await self.store.changed_since(time.time() - FIRST_SIGHT):
                self._committed(errand_id, seq)
            await asyncio.wait_for(self.flush(), 10)
        self._closed = True
        if hasattr(self.store, "commit_timer"):
            self.store.commit_timer = None
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
        for part in (self.processor, self.meter_provider):
            if part is not None:
                await asyncio.to_thread(part.shutdown)
