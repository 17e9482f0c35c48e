"""OpenTelemetry: spans and metrics over real OTLP/HTTP, read from the errand log.

A real OTLP/HTTP receiver runs on 127.0.0.1 (a small HTTP server decoding
``ExportTraceServiceRequest`` / ``ExportMetricsServiceRequest`` with ``opentelemetry-proto``);
errands runs an errand with a scripted model -- a read, a call that waits for a person's
approval, a call the policy refuses, a failing tool -- through the real harness, store
and policy, with telemetry started the way ``errands up`` starts it (``harness.observe``).
The test checks the span tree (one trace, the root, a span per step, model calls, tool
calls, the approval wait), the attributes, the metrics, and that a canary -- in the
arguments, the model's text, a tool's output -- appears in no span. Negative controls: a
follower that puts arguments in spans is caught by the canary check; with no OTEL_*
variable nothing is created, imported or sent; a malformed endpoint is one clear error.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers.kit import Ledger, call, harness_for, ledger_registry, script
from helpers.server import Sink, clean_env, post_script, running, wait_for, write_config
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from errands.config import Settings, load_settings
from errands.core import events as ev
from errands.core.events import ToolCall
from errands.core.labels import Provenance
from errands.core.states import ErrandState
from errands.engine.operations import create_errand
from errands.observe import configured
from errands.observe.follow import Follower, SpanRecord, trace_id
from errands.observe.otel import Telemetry
from errands.policy.rules import Policy
from errands.store import Store
from errands.store.protocol import StoredEvent

CANARY = "sk-canary-7f3a9Q"  # shaped like a key; in arguments, model text, tool output


@dataclass
class Span:
    name: str
    trace: str
    span: str
    parent: str
    start: int
    end: int
    attrs: dict[str, Any]
    error: bool
    raw: bytes  # the span as the wire carried it (to search for the canary)


@dataclass
class Receiver:
    """An OTLP/HTTP collector on 127.0.0.1: what it was sent, decoded."""

    url: str = ""
    spans: list[Span] = field(default_factory=list)
    metrics: dict[str, list[Any]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    services: set[str] = field(default_factory=set)  # the resources' service.name
    raw: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def _decode_traces(body: bytes, into: Receiver) -> bytes:
    request = ExportTraceServiceRequest.FromString(body)
    for resource in request.resource_spans:
        for a in resource.resource.attributes:
            if a.key == "service.name":
                into.services.add(_value(a.value))
        for scope in resource.scope_spans:
            for s in scope.spans:
                into.spans.append(
                    Span(
                        name=s.name,
                        trace=s.trace_id.hex(),
                        span=s.span_id.hex(),
                        parent=s.parent_span_id.hex(),
                        start=s.start_time_unix_nano,
                        end=s.end_time_unix_nano,
                        attrs={a.key: _value(a.value) for a in s.attributes},
                        error=s.status.code == 2,
                        raw=s.SerializeToString(),
                    )
                )
    return ExportTraceServiceResponse().SerializeToString()


def _decode_metrics(body: bytes, into: Receiver) -> bytes:
    request = ExportMetricsServiceRequest.FromString(body)
    for resource in request.resource_metrics:
        for scope in resource.scope_metrics:
            for m in scope.metrics:
                kind = m.WhichOneof("data")
                points = list(getattr(m, kind).data_points)
                into.metrics.setdefault(m.name, []).extend(points)
    return ExportMetricsServiceResponse().SerializeToString()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            with got.lock:
                got.requests.append(self.path)
                got.raw.append(body)
                if self.path == "/v1/traces":
                    answer = _decode_traces(body, got)
                elif self.path == "/v1/metrics":
                    answer = _decode_metrics(body, got)
                else:
                    self.send_error(404)
                    return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    got.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield got
    server.shutdown()
    server.server_close()
    thread.join(5)


TURNS = (
    {
        "text": f"looking it up ({CANARY})",
        "tool_calls": [call("lookup", term=f"rent {CANARY}"), call("nope", x=CANARY)],
    },
    {"text": "sending", "tool_calls": [call("send_message", to="bob", body=f"key {CANARY}")]},
    {"text": "all done"},
)


def _env(receiver: Receiver) -> dict[str, str]:
    # metrics are exported when telemetry closes (the interval is longer than the test)
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_METRIC_EXPORT_INTERVAL": "600000"}


async def run_observed(
    store: Store,
    settings: Settings,
    tmp_path: Path,
    receiver: Receiver,
    follower: type[Follower],
    telemetry_class: type[Telemetry] = Telemetry,
) -> str:
    """One errand: a read (and an unknown tool), a send a person approves, a final answer."""
    ledger = Ledger(tmp_path / "ledger")
    harness = harness_for(
        store, settings, tools=ledger_registry(ledger), model=script(*TURNS), policy=Policy()
    )
    telemetry = harness.observe(_env(receiver))
    assert telemetry is not None
    telemetry.follower.__class__ = follower
    telemetry.__class__ = telemetry_class
    runner = harness.runner()
    eid = await create_errand(store, settings, "find the rent", model="scripted:demo")
    view = await runner.run_errand(eid)
    assert view.state is ErrandState.waiting_approval
    (pending,) = view.pending.values()
    await harness.approvals.approve(pending.id, by="ann", channel="cli")
    view = await runner.run_errand(eid)
    assert view.state is ErrandState.done, view
    await telemetry.close()
    assert len(ledger.entries()) == 2  # the lookup, and the approved send
    return eid


def check_no_canary(receiver: Receiver) -> None:
    for body in receiver.raw:
        assert CANARY.encode() not in body, "the canary reached the collector"
    for s in receiver.spans:
        assert CANARY not in json.dumps([s.name, s.attrs]), (s.name, s.attrs)


async def test_an_errand_arrives_as_one_trace_of_steps_calls_and_an_approval(
    store: Store, settings: Settings, tmp_path: Path, receiver: Receiver
) -> None:
    (settings.home / "errands.toml").write_text(
        '[prices."scripted:test"]\ninput = 2.0\noutput = 10.0\n'  # (a cost to report)
    )
    settings = load_settings(settings.home)
    eid = await run_observed(store, settings, tmp_path, receiver, Follower)
    assert set(receiver.requests) == {"/v1/traces", "/v1/metrics"}
    assert receiver.services == {"errands"}
    spans = receiver.spans
    assert len({s.trace for s in spans}) == 1  # one trace per errand run
    by_name: dict[str, list[Span]] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    (root,) = by_name["errand.run"]
    assert root.parent == "" and not root.error
    assert root.attrs["errands.errand.id"] == eid and root.attrs["errands.state"] == "done"
    assert root.attrs["errands.steps"] == 3
    steps = sorted(by_name["errand.step"], key=lambda s: s.start)
    assert [s.attrs["errands.step"] for s in steps] == [1, 2, 3]
    assert all(s.parent == root.span for s in steps)
    assert steps[-1].attrs["errands.state"] == "done"
    models = sorted(by_name["chat test"], key=lambda s: s.start)  # (scripted:test)
    assert [m.parent for m in models] == [s.span for s in steps]  # one call per step
    for m in models:
        assert m.attrs["gen_ai.operation.name"] == "chat"
        assert m.attrs["gen_ai.provider.name"] == "scripted"
        assert m.attrs["gen_ai.request.model"] == "test"
        assert m.attrs["gen_ai.usage.input_tokens"] > 0
        assert m.attrs["gen_ai.usage.output_tokens"] > 0
        assert m.attrs["errands.cost_usd"] > 0
        assert root.start <= m.start <= m.end <= root.end
    (lookup,) = by_name["execute_tool lookup"]
    assert lookup.parent == steps[0].span
    assert lookup.attrs["gen_ai.tool.name"] == "lookup"
    assert lookup.attrs["errands.tool.effect"] == "read"
    assert lookup.attrs["errands.tool.decision"] == "allow"
    assert lookup.attrs["errands.tool.ok"] is True
    assert lookup.attrs["errands.tool.duration_ms"] >= 0
    (unknown,) = by_name["execute_tool nope"]
    assert unknown.parent == steps[0].span and unknown.error
    assert unknown.attrs["errands.tool.decision"] == "refused"
    assert unknown.attrs["error.type"] == "unknown_tool"
    (wait,) = by_name["approval.wait send_message"]
    assert wait.parent == steps[1].span
    assert wait.attrs["errands.approval.decision"] == "granted"
    assert wait.attrs["errands.tool.effect"] == "external"
    (send,) = by_name["execute_tool send_message"]
    assert send.parent == steps[1].span and wait.end <= send.start
    assert send.attrs["errands.tool.decision"] == "approved"
    assert set(by_name) == {
        "errand.run",
        "errand.step",
        "chat test",
        "execute_tool lookup",
        "execute_tool nope",
        "approval.wait send_message",
        "execute_tool send_message",
    }
    check_no_canary(receiver)
    # the metrics (cumulative: the last export counts): steps, finished errands, the
    # store's commits, tokens, the gauges
    metrics = receiver.metrics
    assert max(p.as_int for p in metrics["errands.steps"]) == 3
    assert max(p.as_int for p in metrics["errands.finished"]) == 1
    assert max(p.count for p in metrics["errands.store.commit.duration"]) >= 5
    tokens = {
        p.attributes[-1].value.string_value: p.count for p in metrics["gen_ai.client.token.usage"]
    }
    assert tokens == {"input": 3, "output": 3}, tokens
    spent = max(p.as_double for p in metrics["errands.spend"])
    assert spent == pytest.approx(sum(m.attrs["errands.cost_usd"] for m in models))
    assert "errands.errands" in metrics and "errands.approvals.waiting" in metrics


class LeakyFollower(Follower):
    """Puts a tool call's arguments in its span (what the canary check must catch)."""

    def _on_tool_intent(self, e: Any, seq: int, event: ev.ToolIntent) -> None:
        super()._on_tool_intent(e, seq, event)
        self.sink.span(
            self._leak(e, json.dumps(event.arguments)),
        )

    def _leak(self, e: Any, text: str) -> Any:
        return SpanRecord("leak", trace_id(e.errand_id), None, None, 0.0, 0.0, {"args": text})


async def test_negative_control_arguments_in_a_span_are_caught(
    store: Store, settings: Settings, tmp_path: Path, receiver: Receiver
) -> None:
    await run_observed(store, settings, tmp_path, receiver, LeakyFollower)
    with pytest.raises(AssertionError, match="canary"):
        check_no_canary(receiver)


async def test_the_sampler_decides_for_a_whole_trace(
    store: Store,
    settings: Settings,
    tmp_path: Path,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_off")  # (read by the SDK)
    await run_observed(store, settings, tmp_path, receiver, Follower)
    assert receiver.spans == [] and "/v1/traces" not in receiver.requests
    assert "errands.steps" in receiver.metrics  # (metrics are not sampled)


class EverySpan(Telemetry):
    """Sends every span, whatever the sampler says of its trace."""

    def _sampled(self, trace_id: int) -> bool:
        return True


async def test_negative_control_without_the_sampler_a_dropped_trace_is_sent(
    store: Store,
    settings: Settings,
    tmp_path: Path,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_off")
    await run_observed(store, settings, tmp_path, receiver, Follower, EverySpan)
    assert "errand.run" in {s.name for s in receiver.spans}


def test_configuration_is_off_by_default_and_refuses_malformed_values() -> None:
    assert configured({}) is None
    assert (
        configured({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}) is None
    )
    only = configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    assert only is not None and only.metrics_url is None
    both = configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example:4318/"})
    assert both is not None and both.traces_url == "https://otel.example:4318/v1/traces"
    for bad in ("127.0.0.1:4318", "not a url", "ftp://x", "http://:99", "http://h:port"):
        with pytest.raises(Exception, match="is not an http\\(s\\) URL"):
            configured({"OTEL_EXPORTER_OTLP_ENDPOINT": bad})
    with pytest.raises(Exception, match="over HTTP"):
        configured(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        )


QUIET = """
import asyncio, sys
from errands.config import load_settings
from errands.harness import build
from errands.engine.operations import create_errand

async def main():
    settings = load_settings(sys.argv[1])
    harness = build(settings)
    telemetry = harness.observe()
    eid = await create_errand(harness.store, settings, "hi", model="scripted:demo")
    view = await harness.runner().run_errand(eid)
    await harness.close()
    loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
    print(telemetry, view.state, loaded)

asyncio.run(main())
"""


def test_without_the_variables_nothing_is_created_imported_or_sent(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = clean_env(tmp_path / "home")
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", QUIET, str(tmp_path / "home")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None done []", done.stdout
    assert receiver.requests == []


def test_errands_up_refuses_a_malformed_endpoint_in_one_line(tmp_path: Path) -> None:
    env = clean_env(tmp_path / "home", OTEL_EXPORTER_OTLP_ENDPOINT="localhost:4318")
    done = subprocess.run(
        [sys.executable, "-m", "errands", "up", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2, done
    said = " ".join(done.stderr.split())
    assert said.startswith("error: OTEL_EXPORTER_OTLP_ENDPOINT: 'localhost:4318' is not an"), said
    assert "Traceback" not in done.stderr and said.count("error:") == 1


def test_a_real_server_restarted_mid_errand_sends_one_trace_without_repeats(
    tmp_path: Path, receiver: Receiver
) -> None:
    """errands up with the variables set: an errand waits for approval, the server stops
    (SIGTERM) and starts again -- with a worker process this time, whose commits reach
    the server's observer through its change feed -- the person approves, it finishes."""
    home = tmp_path / "home"
    write_config(home)
    sink = Sink()
    spec = post_script(tmp_path / "s.json", f"{sink.url}/notes", body=f"note {CANARY}")
    env = clean_env(home, **_env(receiver), OTEL_SERVICE_NAME="errands-test")
    try:
        with running(home, env=env) as server, server.client() as api:
            r = api.post("/api/errands", json={"text": "post it", "model": spec})
            assert r.status_code == 201, r.text
            eid = r.json()["id"]
            wait_for(lambda: api.get(f"/api/errands/{eid}").json()["approvals"])
            assert server.stop() == 0  # a clean stop exports what ended
        with running(home, env=env, args=["--workers", "1"]) as server, server.client() as api:
            (approval,) = api.get(f"/api/errands/{eid}").json()["approvals"]
            r = api.post(f"/api/approvals/{approval['id']}/approve", json={})
            assert r.status_code == 200, r.text
            wait_for(lambda: api.get(f"/api/errands/{eid}").json()["status"] == "done")
            assert server.stop() == 0
    finally:
        sink.close()
    assert len(sink.effects) == 1
    assert receiver.services == {"errands-test"}  # (OTEL_SERVICE_NAME, as the SDK reads it)
    spans = receiver.spans
    assert {s.trace for s in spans} == {spans[0].trace}  # one trace, across the restart
    ids = [s.span for s in spans]
    assert len(ids) == len(set(ids)), "a span was sent twice"
    names = sorted(s.name.replace(str(tmp_path / "s.json"), "S") for s in spans)
    assert names == sorted(
        [
            "errand.run",
            "errand.step",
            "errand.step",
            "chat S",  # (scripted:PATH)
            "chat S",
            "approval.wait http_request",
            "execute_tool http_request",
        ]
    ), names
    (root,) = [s for s in spans if s.name == "errand.run"]
    (wait,) = [s for s in spans if s.name.startswith("approval.wait")]
    first = min((s for s in spans if s.name == "errand.step"), key=lambda s: s.start)
    assert wait.parent == first.span and first.parent == root.span
    assert root.attrs["errands.errand.id"] == eid
    check_no_canary(receiver)


# -- the follower alone: a schedule's run, and a restart in the middle of an errand -----------


class ListSink:
    def __init__(self) -> None:
        self.spans: list[SpanRecord] = []

    def span(self, record: SpanRecord) -> None:
        self.spans.append(record)

    def step(self, model: str) -> None:
        pass

    def spent(self, model: str, usage: ev.Usage) -> None:
        pass

    def finished(self, state: str) -> None:
        pass


def _log(t0: float) -> list[StoredEvent]:
    text = ev.Content(text="x", provenance=Provenance(kind="user"))
    events: list[ev.Event] = [
        ev.ErrandCreated(
            at=t0, title="t", content=text, model="m:x", workspace="w", schedule="morning"
        ),
        ev.ModelRequested(at=t0 + 1, model="m:x", tools_hash="h"),
        ev.ModelResponded(
            at=t0 + 2,
            request_seq=2,
            model="m:x",
            tool_calls=[ToolCall(call_id="c1", name="wait", arguments={})],
        ),
        ev.Sleeping(at=t0 + 2, call_id="c1", tool="wait", wake_at=t0 + 100),
        ev.ToolResult(at=t0 + 100, call_id="c1", tool="wait", ok=True, content=text),
        ev.ModelRequested(at=t0 + 101, model="m:x", tools_hash="h"),
        ev.ModelResponded(at=t0 + 102, request_seq=6, model="m:x"),
        ev.StateChanged(at=t0 + 102, state="done"),
    ]
    return [StoredEvent("e1", i + 1, e) for i, e in enumerate(events)]


def test_a_restart_mid_errand_goes_on_in_the_same_trace_without_repeats() -> None:
    log = _log(1000.0)
    whole = ListSink()
    one = Follower(whole)
    one.begin("e1", since=0.0)
    one.follow("e1", log)
    names = [s.name for s in whole.spans]
    assert names == [
        "schedule.fire morning",
        "chat x",
        "execute_tool wait",
        "errand.step",
        "chat x",
        "errand.step",
        "errand.run",
    ]
    # a first process followed up to the sleep; a second one (started at t0 + 50) reads
    # the errand's newest events again when it is woken: nothing repeats, nothing is lost
    before, after = ListSink(), ListSink()
    first = Follower(before)
    first.begin("e1", since=0.0)
    first.follow("e1", log[:4])
    second = Follower(after)
    second.begin("e1", since=1050.0, created=1000.0)
    second.follow("e1", log)
    key = [(s.name, s.span, s.parent, s.start, s.end) for s in whole.spans]
    assert sorted(key, key=str) == sorted(
        [(s.name, s.span, s.parent, s.start, s.end) for s in before.spans + after.spans], key=str
    )
    assert {s.trace for s in whole.spans} == {trace_id("e1")}


WITHOUT_OTEL = """
import sys
sys.modules["opentelemetry.sdk"] = None  # (as if the otel extra were not installed)
from errands.cli.app import main
sys.argv = ["errands", "up", "--port", "0"]
main()
"""


def test_errands_up_without_the_extra_says_how_to_install_it(tmp_path: Path) -> None:
    env = clean_env(tmp_path / "home", OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318")
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OTEL], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 2, done
    said = " ".join(done.stderr.split())
    assert said.startswith("error: OTEL_EXPORTER_OTLP_ENDPOINT is set, but OpenTelemetry is not"), (
        said
    )
    assert "[otel]" in said and "Traceback" not in done.stderr
    assert not (tmp_path / "home" / "server.json").exists()


def test_a_failed_model_call_is_an_error_span_without_its_message() -> None:
    text = ev.Content(text="x", provenance=Provenance(kind="user"))
    events: list[ev.Event] = [
        ev.ErrandCreated(at=1.0, title="t", content=text, model="p:m", workspace="w"),
        ev.ModelRequested(at=2.0, model="p:m", tools_hash="h"),
        ev.ErrorRaised(at=3.0, kind="model_error", message=f"provider said {CANARY}"),
        ev.StateChanged(at=3.0, state="failed", reason=f"the model failed: {CANARY}"),
    ]
    sink = ListSink()
    follower = Follower(sink)
    follower.begin("e2", since=0.0)
    follower.follow("e2", [StoredEvent("e2", i + 1, e) for i, e in enumerate(events)])
    chat, step, run = sink.spans
    assert (chat.name, chat.error, chat.attrs["error.type"]) == (
        "chat m",
        "model_error",
        "model_error",
    )
    assert chat.parent == step.span and step.attrs["errands.state"] == "failed"
    assert (run.name, run.error, run.attrs["errands.state"]) == ("errand.run", "failed", "failed")
    assert CANARY not in repr(sink.spans)
