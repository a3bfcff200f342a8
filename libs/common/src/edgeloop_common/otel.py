"""OpenTelemetry spans of a device's message through EdgeLoop, exported over OTLP (docs/observability.md).

One trace follows a picture from the device to its result: the device (or the edge agent) puts a W3C
``traceparent`` in the MQTT 5 message's user properties; ingest continues it in a span and carries it to Kafka
in the CloudEvents ``traceparent`` header (``edgeloop_common.bus.codec``); every consumer continues it in a span
of its own (``edgeloop_common.subscriptions``) and whatever it publishes carries that span on; the gateway's
result goes back to the device with the trace's ``traceparent`` in its user properties.

Tracing is off until an OTLP endpoint is set: ``EDGELOOP_OTLP_ENDPOINT`` (e.g. ``http://collector:4318``) or
OpenTelemetry's own ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``. Off, the spans
below cost next to nothing (OpenTelemetry's no-op tracer) and the ``traceparent``s still travel, as before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from edgeloop_common.tracing import child_traceparent

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACER_NAME = "edgeloop"
# Taken once: ``trace.get_tracer`` looks the provider up (and reads the environment) on every call, a noticeable
# cost per telemetry reading. Taken before ``configure_tracing`` it is OpenTelemetry's proxy tracer, which
# starts using the real provider as soon as one is set.
_TRACER = trace.get_tracer(_TRACER_NAME)
_configured_for: str | None = None


def otlp_endpoint(configured: str = "") -> str:
    """The OTLP/HTTP endpoint spans go to: the setting, else OpenTelemetry's variables; empty: tracing off."""
    return (
        configured
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    )


def configure_tracing(service_name: str, endpoint: str = "") -> bool:
    """Export this process's spans over OTLP/HTTP when an endpoint is set; True when tracing is on.

    Once per process (OpenTelemetry's tracer provider is global): standalone mode runs every service in one
    process, so the first caller names it (``service.name``); each span also says its service
    (``edgeloop.service``).
    """
    global _configured_for
    endpoint = otlp_endpoint(endpoint)
    if not endpoint:
        return False
    if _configured_for is not None:
        return True
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    traces_url = endpoint if endpoint.rstrip("/").endswith("/v1/traces") else endpoint.rstrip("/") + "/v1/traces"
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url), schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    _configured_for = service_name
    log.info("tracing: spans of %s exported to %s", service_name, traces_url)
    return True


def shutdown_tracing() -> None:
    """Flush and stop the exporter (at a process's end: spans still in its buffer are sent)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()


@contextmanager
def continued_span(
    name: str,
    traceparent: str | None,
    *,
    service: str,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[Span]:
    """A span continuing the trace of ``traceparent`` (a new trace when it is absent or malformed), current
    inside the block."""
    parent = _PROPAGATOR.extract({TRACEPARENT: traceparent}) if traceparent else otel_context.Context()
    with _TRACER.start_as_current_span(
        name, context=parent, kind=kind, attributes={"edgeloop.service": service, **(attributes or {})}
    ) as span:
        yield span


def started_span(
    name: str,
    traceparent: str | None,
    *,
    service: str,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> tuple[Span, str]:
    """A span continuing ``traceparent``'s trace that the caller ends (``span.end()``) when the work is done, maybe
    in another callback, and the ``traceparent`` to hand on for it. Not made current."""
    parent = _PROPAGATOR.extract({TRACEPARENT: traceparent}) if traceparent else otel_context.Context()
    span = _TRACER.start_span(
        name, context=parent, kind=kind, attributes={"edgeloop.service": service, **(attributes or {})}
    )
    if not span.is_recording():
        return span, child_traceparent(traceparent)
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return span, carrier.get(TRACEPARENT) or child_traceparent(traceparent)


def current_traceparent(fallback_parent: str | None = None) -> str:
    """The ``traceparent`` naming the current span, to hand on; with tracing off (no recording span), a fresh
    span id in ``fallback_parent``'s trace, as EdgeLoop did before spans were exported."""
    span = trace.get_current_span()
    if span.is_recording():
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        if TRACEPARENT in carrier:
            return carrier[TRACEPARENT]
    return child_traceparent(fallback_parent)


def traceparent_property(properties: Mapping[str, str] | None) -> str | None:
    """The ``traceparent`` among an MQTT 5 message's user properties, if any."""
    return (properties or {}).get(TRACEPARENT)
