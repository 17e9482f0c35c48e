"""errands as OpenTelemetry sees it: traces and metrics over OTLP/HTTP, off unless asked for.

Configured with the standard variables, read once at start-up by :func:`configured`:
``OTEL_EXPORTER_OTLP_ENDPOINT`` (traces to ``/v1/traces``, metrics to ``/v1/metrics``
under it), or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``_METRICS_ENDPOINT`` (used as
they are); ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_TRACES_SAMPLER`` as the SDK reads them;
``OTEL_SDK_DISABLED=true`` turns it off. None of them set: nothing is imported, no
exporter exists, nothing is sent, and the loop runs exactly as without this package.

Set, :func:`start` (the harness calls it where errands serve: ``errands up``) follows
the store's commits (:mod:`.follow` turns the log into spans; :mod:`.otel` exports them)
-- an observer of the event stream, not code in the loop. See docs/observability.md.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from errands.errors import ConfigError

if TYPE_CHECKING:
    from errands.observe.otel import Telemetry
    from errands.store import Store

__all__ = ["OtelConfig", "configured", "start"]


@dataclass(frozen=True)
class OtelConfig:
    traces_url: str | None  # where spans go (None: no traces)
    metrics_url: str | None  # where metrics go (None: no metrics)
    metrics_seconds: float = 15.0  # how often metrics are exported (and gauges read)


def _url(name: str, value: str) -> str:
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{name}: {value!r} is not an http(s) URL; errands sends OTLP over HTTP, "
            "e.g. http://127.0.0.1:4318"
        )
    return value


def configured(env: Mapping[str, str] | None = None) -> OtelConfig | None:
    """What the environment asks for; None: nothing (the default). A malformed value is
    a :class:`~errands.errors.ConfigError` saying which and why."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    metrics = env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "").strip()
    if not (base or traces or metrics):
        return None
    protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip() or "http/protobuf"
    if protocol != "http/protobuf":
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: errands sends OTLP over HTTP "
            "(http/protobuf); point it at the collector's HTTP port (usually 4318)"
        )
    if base:
        base = _url("OTEL_EXPORTER_OTLP_ENDPOINT", base).rstrip("/")
    interval = env.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
    try:
        seconds = float(interval) / 1000 if interval else 15.0
    except ValueError:
        raise ConfigError(
            f"OTEL_METRIC_EXPORT_INTERVAL: {interval!r} is not milliseconds"
        ) from None
    _installed()
    return OtelConfig(
        traces_url=_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces)
        if traces
        else (f"{base}/v1/traces" if base else None),
        metrics_url=_url("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", metrics)
        if metrics
        else (f"{base}/v1/metrics" if base else None),
        metrics_seconds=max(seconds, 0.05),
    )


NEEDED = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")


def _installed() -> None:
    """Refuse (one line, with the command that installs them) when the variables ask for
    OpenTelemetry and the ``otel`` extra is not installed; found without importing it."""
    for name in NEEDED:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            from errands.install import extra_hint

            raise ConfigError(
                f"OTEL_EXPORTER_OTLP_ENDPOINT is set, but OpenTelemetry is not installed "
                f"({name}): {extra_hint('otel')}"
            )


def start(store: Store, config: OtelConfig) -> Telemetry:
    """Follow *store*'s commits on this event loop and export what they say."""
    try:
        from errands.observe.otel import Telemetry
    except ImportError as exc:
        from errands.install import extra_hint

        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set, but OpenTelemetry is not installed "
            f"({exc.name}): {extra_hint('otel')}"
        ) from None
    return Telemetry(store, config)
