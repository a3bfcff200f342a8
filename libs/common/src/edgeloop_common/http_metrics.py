"""HTTP request metrics, the same in every service: ``instrument_http(app, registry)`` after the routes are in.

* ``edgeloop_http_requests_total{method, route, status}``: answers given;
* ``edgeloop_http_request_seconds{method, route}``: how long each took, to the end of the answer's headers.

``route`` is the route's template (``/v1/samples/{sample_id}``), not the path asked for, so the number of series
stays that of the routes; a path no route matches counts as ``unmatched``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Counter, Histogram

from edgeloop_common import otel

UNMATCHED = "unmatched"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def instrument_http(app: FastAPI, registry: CollectorRegistry) -> None:
    service = app.title  # what the spans say served the request
    requests = Counter(
        "edgeloop_http_requests_total",
        "HTTP requests answered, by method, route template and status.",
        ["method", "route", "status"],
        registry=registry,
    )
    seconds = Histogram(
        "edgeloop_http_request_seconds",
        "Time to answer an HTTP request, by method and route template.",
        ["method", "route"],
        buckets=_BUCKETS,
        registry=registry,
    )

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises past every handler
        # A server span per request, continuing the caller's trace (a ``traceparent`` header); named once the
        # route is known. A no-op while tracing is off (docs/observability.md).
        span, _ = otel.started_span(
            f"{request.method}", request.headers.get(otel.TRACEPARENT), service=service, kind=SpanKind.SERVER
        )
        try:
            with trace.use_span(span, end_on_exit=False):
                response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            requests.labels(request.method, template, str(status)).inc()
            seconds.labels(request.method, template).observe(time.perf_counter() - started)
            if span.is_recording():
                span.update_name(f"{request.method} {template}")
                span.set_attribute("http.request.method", request.method)
                span.set_attribute("http.route", template)
                span.set_attribute("http.response.status_code", status)
            span.end()
