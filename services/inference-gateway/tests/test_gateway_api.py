"""The HTTP API with a fake model client: classify, errors, routes, health, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_inference_gateway.app import create_app
from edgeloop_inference_gateway.settings import Settings
from fastapi import FastAPI
from gateway_fakes import FakeModelClient, FakeResults, jpeg_bytes, model_server_down, png_bytes


@dataclass
class Gateway:
    app: FastAPI
    http: httpx.AsyncClient
    model: FakeModelClient
    bus: InProcessBus


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    model = FakeModelClient(version=5)
    bus = InProcessBus(source="inference-gateway")
    settings = Settings(
        model_name="edgeloop-classifier",
        site_routes="site-b=edgeloop-classifier:3",
        max_wait_ms=1.0,
        model_server_rest_url="http://127.0.0.1:9",  # passthrough target: nothing listens there
        connect_timeout_s=0.5,
        model_retries=0,
    )
    app = create_app(settings, bus=bus, model_client=model, results=FakeResults())
    async with app.router.lifespan_context(app):
        await bus.start()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield Gateway(app, http, model, bus)
        await bus.stop()


async def test_classify_raw_bytes(gateway: Gateway) -> None:
    image = jpeg_bytes()
    response = await gateway.http.post(
        "/v1/classify", content=image, headers={"content-type": "image/jpeg"}, params={"site": "site-a", "device": "d1"}
    )
    assert response.status_code == 200, response.text
    result = response.json()
    expected = gateway.model.scores_for(image)
    assert result["scores"] == pytest.approx(expected)
    assert result["top_label"] == max(expected, key=expected.__getitem__)
    assert result["confidence"] == pytest.approx(max(expected.values()))
    assert (result["model_name"], result["model_version"]) == ("edgeloop-classifier", 5)
    assert (result["site_id"], result["device_id"], result["served_by"]) == ("site-a", "d1", "cloud")
    assert len(result["image_sha256"]) == 64 and result["latency_ms"] > 0
    assert result["quality"] == "ok"


async def test_classify_says_when_a_picture_is_too_dark(gateway: Gateway, catdog_dir: Path) -> None:
    night = sorted((catdog_dir / "black-frames").glob("*.jpg"))[0].read_bytes()
    response = await gateway.http.post("/v1/classify", content=night, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["quality"] == "too_dark"
    assert result["scores"] == pytest.approx(gateway.model.scores_for(night))  # the model still answers


async def test_classify_multipart_uses_the_sites_route(gateway: Gateway) -> None:
    response = await gateway.http.post(
        "/v1/classify", files={"image": ("x.png", png_bytes(), "image/png")}, data={"site": "site-b"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == 3
    assert response.json()["site_id"] == "site-b"


async def test_classify_refuses_what_is_not_an_image(gateway: Gateway) -> None:
    garbage = await gateway.http.post("/v1/classify", content=b"hello, not an image")
    assert garbage.status_code == 400
    assert "JPEG or PNG" in garbage.json()["detail"]
    empty = await gateway.http.post("/v1/classify", content=b"")
    assert empty.status_code == 400 and "no image" in empty.json()["detail"]
    bad_site = await gateway.http.post("/v1/classify", content=jpeg_bytes(), params={"site": "no/slash"})
    assert bad_site.status_code == 422
    assert gateway.model.calls == []


async def test_model_server_down_answers_503_and_not_ready(gateway: Gateway) -> None:
    ready = await gateway.http.get("/readyz")
    assert ready.status_code == 200, ready.text
    gateway.model.fail_with = model_server_down()
    response = await gateway.http.post("/v1/classify", content=jpeg_bytes())
    assert response.status_code == 503
    assert "unreachable" in response.json()["detail"]
    ready = await gateway.http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["model_server"] == "not ready"
    assert ready.json()["checks"]["bus"] == "ok"


async def test_not_ready_when_the_model_is_not_available(gateway: Gateway) -> None:
    gateway.model.is_available = False
    ready = await gateway.http.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["model_server"] == "not ready"


async def test_not_ready_when_the_bus_is_not(gateway: Gateway) -> None:
    await gateway.bus.stop()
    ready = await gateway.http.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["bus"] == "not ready"


async def test_metrics_count_inferences_and_batches(gateway: Gateway) -> None:
    await gateway.http.post("/v1/classify", content=jpeg_bytes())
    await gateway.http.post("/v1/classify", content=b"junk")
    text = (await gateway.http.get("/metrics")).text
    assert 'edgeloop_inferences_total{outcome="ok"} 1.0' in text
    assert 'edgeloop_inferences_total{outcome="invalid_input"} 1.0' in text
    assert "edgeloop_inference_batch_size_count 1.0" in text
    assert "edgeloop_inference_duration_seconds_count 1.0" in text


async def test_routes_can_be_read_and_changed(gateway: Gateway) -> None:
    routes = (await gateway.http.get("/v1/routes")).json()
    assert routes == {"default": "edgeloop-classifier", "sites": {"site-b": "edgeloop-classifier:3"}, "caught_up": True}
    changed = await gateway.http.put("/v1/routes/site-b", json={"model": "edgeloop-classifier:9"})
    assert changed.status_code == 200 and changed.json()["route"] == "edgeloop-classifier:9"
    result = (await gateway.http.post("/v1/classify", content=jpeg_bytes(), params={"site": "site-b"})).json()
    assert result["model_version"] == 9
    bad = await gateway.http.put("/v1/routes/site-b", json={"model": "no good name"})
    assert bad.status_code == 422
    await gateway.http.delete("/v1/routes/site-b")
    assert (await gateway.http.get("/v1/routes")).json()["sites"] == {}


async def test_passthrough_reports_an_unreachable_model_server(gateway: Gateway) -> None:
    response = await gateway.http.post("/v1/models/edgeloop-classifier:predict", json={"instances": []})
    assert response.status_code == 503
    assert "unreachable" in response.json()["detail"]


def test_a_bad_route_setting_stops_start_up_with_the_reason() -> None:
    with pytest.raises(ValueError, match="site-a"):
        create_app(Settings(site_routes="site-a"), bus=InProcessBus(), model_client=FakeModelClient())


async def test_images_over_the_limit_are_refused_with_413(gateway: Gateway) -> None:
    gateway.app.state.gateway.service.max_image_bytes = 1000
    image = jpeg_bytes(size=(200, 200))
    assert len(image) > 1000
    over = await gateway.http.post("/v1/classify", content=image)
    assert over.status_code == 413 and "limit of 1000" in over.json()["detail"]
    huge = await gateway.http.post("/v1/classify", content=b"\xff" * 200_000)
    assert huge.status_code == 413 and "over the limit" in huge.json()["detail"]
    assert gateway.model.calls == []


async def test_an_unreachable_mqtt_broker_is_reported_not_fatal() -> None:
    from edgeloop_common.settings import CommonSettings

    model = FakeModelClient()
    bus = InProcessBus(source="inference-gateway")
    settings = Settings(common=CommonSettings(mqtt_host="127.0.0.1", mqtt_port=1), mqtt_ack_timeout_s=0.2)
    app = create_app(settings, bus=bus, model_client=model)
    async with app.router.lifespan_context(app):
        await bus.start()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
            ready = await http.get("/readyz")
            classified = await http.post("/v1/classify", content=jpeg_bytes())
        publisher = app.state.results
        await asyncio.wait_for(publisher.send("site-a", "cam-1", b"{}"), timeout=2)  # queued, not waited for
        await bus.stop()
    assert ready.status_code == 503 and ready.json()["checks"]["mqtt"] == "not ready"
    assert classified.status_code == 200
    unacknowledged = app.state.metrics.registry.get_sample_value(
        "edgeloop_device_results_total", {"outcome": "unacknowledged"}
    )
    assert unacknowledged == 1.0


@pytest.mark.parametrize("model", ["%08", "cat%20dog", "%1F%7F"])
async def test_a_passthrough_path_with_control_characters_or_spaces_is_forwarded_not_a_500(
    gateway: Gateway, model: str
) -> None:
    """Found by the schemathesis sweep (tests/hostile): ``GET /v1/models/%08`` raised httpx.InvalidURL (a 500) while
    the gateway forwarded the decoded path; it is quoted again now, and the model server's absence is the answer."""
    for method, path in [("GET", f"/v1/models/{model}"), ("POST", f"/v1/models/{model}:predict")]:
        response = await gateway.http.request(method, path, json={"instances": []} if method == "POST" else None)
        assert response.status_code == 503, response.text
        assert "unreachable" in response.json()["detail"]
