"""Every service's ``/metrics`` carries the process's own figures besides the service's, whatever registry holds
the service's metrics."""

from __future__ import annotations

import httpx
from edgeloop_common.health import health_router
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter


async def test_a_services_metrics_come_with_the_process_and_python_figures() -> None:
    registry = CollectorRegistry()
    Counter("edgeloop_things_total", "Things.", registry=registry).inc(3)
    app = FastAPI()
    app.include_router(health_router({}, registry=registry))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
        text = (await client.get("/metrics")).text
    names = {line.split("{")[0].split()[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert "edgeloop_things_total 3.0" in text
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "python_info"} <= names
    assert text.count("# TYPE process_resident_memory_bytes") == 1
