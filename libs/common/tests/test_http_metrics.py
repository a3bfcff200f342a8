"""HTTP request metrics by route template: every answer counted with its status, unmatched paths in one series."""

from __future__ import annotations

import httpx
from edgeloop_common.health import health_router
from edgeloop_common.http_metrics import instrument_http
from fastapi import FastAPI, HTTPException
from prometheus_client import CollectorRegistry


async def test_answers_are_counted_by_route_template_and_status() -> None:
    registry = CollectorRegistry()
    app = FastAPI()

    @app.get("/v1/items/{name}")
    async def item(name: str) -> dict[str, str]:
        if name == "missing":
            raise HTTPException(404, "no such item")
        return {"name": name}

    app.include_router(health_router({}, registry=registry))
    instrument_http(app, registry)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
        for name in ("a", "b", "missing"):
            await client.get(f"/v1/items/{name}")
        await client.get("/no/such/path")
        text = (await client.get("/metrics")).text

    assert 'edgeloop_http_requests_total{method="GET",route="/v1/items/{name}",status="200"} 2.0' in text
    assert 'edgeloop_http_requests_total{method="GET",route="/v1/items/{name}",status="404"} 1.0' in text
    assert 'edgeloop_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'edgeloop_http_request_seconds_count{method="GET",route="/v1/items/{name}"} 3.0' in text
