"""``/healthz``, ``/readyz`` and ``/metrics``: the same three endpoints on every service.

``/healthz`` says the process is alive. ``/readyz`` runs the service's
readiness checks (broker, bus, store, model server ...) and answers 503 with
the failing ones while any fails. ``/metrics`` is the Prometheus exposition.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
)

ReadinessCheck = Callable[[], Awaitable[bool]]


class _ProcessMetrics:
    """The process's own figures (``process_*``: memory, CPU, open files; ``python_*``: GC, version), the same in
    every service's ``/metrics`` whatever registry holds the service's metrics (the default one has them already)."""

    def collect(self) -> Any:
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            yield from collector.collect()


_PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)
_PROCESS_REGISTRY.register(_ProcessMetrics())

# The OpenAPI document says what these answer (the schemathesis sweep of tests/hostile holds every service to it).
_READINESS_BODY = {
    "type": "object",
    "properties": {
        "ready": {"type": "boolean"},
        "checks": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["ready", "checks"],
}
_READINESS: dict[int | str, dict[str, object]] = {
    200: {"description": "Every check passes.", "content": {"application/json": {"schema": _READINESS_BODY}}},
    503: {
        "description": "Some check fails (named in checks).",
        "content": {"application/json": {"schema": _READINESS_BODY}},
    },
}
_EXPOSITION: dict[int | str, dict[str, object]] = {
    200: {"description": "The Prometheus text exposition.", "content": {"text/plain": {"schema": {"type": "string"}}}}
}


def health_router(
    checks: Mapping[str, ReadinessCheck] | Callable[[], Mapping[str, ReadinessCheck]],
    *,
    registry: CollectorRegistry = REGISTRY,
    check_timeout_s: float = 2.0,
) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", responses=_READINESS)
    async def readyz() -> JSONResponse:
        current = checks() if callable(checks) else checks
        results: dict[str, str] = {}
        for name, check in current.items():
            try:
                async with asyncio.timeout(check_timeout_s):
                    ok = await check()
                results[name] = "ok" if ok else "not ready"
            except Exception as exc:  # noqa: BLE001 - a failing check is reported, not raised
                results[name] = f"error: {exc or type(exc).__name__}"
        ready = all(value == "ok" for value in results.values())
        return JSONResponse({"ready": ready, "checks": results}, status_code=200 if ready else 503)

    @router.get("/metrics", response_class=PlainTextResponse, responses=_EXPOSITION)
    async def metrics() -> Response:
        body = generate_latest(registry)
        if registry is not REGISTRY:
            body += generate_latest(_PROCESS_REGISTRY)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
