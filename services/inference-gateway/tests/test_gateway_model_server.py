"""The gateway against the real lite model server (``edgeloop model-server``) serving a really trained model.

Everything here goes through TF Serving's REST and gRPC APIs, so it would hold
against the official ``tensorflow/serving`` as well. The clients themselves
(``edgeloop_common.serving``) against the same server: libs/common/tests/test_serving_model_server.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_inference_gateway.app import create_app
from edgeloop_inference_gateway.settings import Settings
from edgeloop_model_server.embedded import RunningServer, serve_in_thread
from gateway_fakes import FakeResults

from tests.model_fixtures import lite_server_settings

pytestmark = [pytest.mark.tf, pytest.mark.slow]


def start_server(model_base: Path, model_name: str, **overrides: Any) -> Any:
    settings = lite_server_settings(model_base, model_name, poll_interval_s=0.3, **overrides)
    return serve_in_thread(settings)


@pytest.fixture(scope="module")
def model_server(trained_model_base: Path, trained_model_name: str) -> Iterator[RunningServer]:
    with start_server(trained_model_base, trained_model_name) as server:
        yield server


@pytest.fixture(scope="module")
def captures(catdog_captures_dir: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted(catdog_captures_dir.glob("*.jpg"))]


def gateway_settings(server: RunningServer, model_name: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_server_rest_url": server.rest_url,
        "model_server_grpc_target": server.grpc_target,
        "model_name": model_name,
        "mqtt_results": False,
        "max_wait_ms": 5.0,
        "metadata_refresh_s": 0.5,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
async def test_classify_and_passthrough_over_http(
    model_server: RunningServer, trained_model_name: str, captures: list[bytes], protocol: str
) -> None:
    settings = gateway_settings(model_server, trained_model_name, model_server_protocol=protocol)
    bus = InProcessBus(source="inference-gateway")
    app = create_app(settings, bus=bus, results=FakeResults())
    async with app.router.lifespan_context(app):
        await bus.start()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=60) as http:
            answers = await asyncio.gather(
                *(http.post("/v1/classify", content=image, params={"site": "site-a"}) for image in captures)
            )
            passthrough = await http.post(
                f"/v1/models/{trained_model_name}:predict",
                json={"instances": [{"b64": base64.b64encode(captures[0]).decode()}]},
            )
            ready = await http.get("/readyz")
            metrics = (await http.get("/metrics")).text
        await bus.stop()

    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    for answer in answers:
        result = answer.json()
        assert result["model_version"] == 1 and set(result["scores"]) == {"cat", "dog"}
        assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert result["top_label"] == max(result["scores"], key=result["scores"].__getitem__)
    assert passthrough.status_code == 200, passthrough.text
    [prediction] = passthrough.json()["predictions"]
    assert prediction["scores"] == pytest.approx(
        [answers[0].json()["scores"][c] for c in prediction["classes"]], abs=1e-5
    )
    assert ready.status_code == 200, ready.text
    # eight concurrent requests took fewer than eight model calls
    assert "edgeloop_inference_batch_size_count" in metrics
    batches = float(metrics.split("edgeloop_inference_batch_size_count ")[1].split()[0])
    assert 1 <= batches < 8


async def test_a_new_version_is_picked_up_with_no_failed_request(
    trained_model_base: Path, trained_model_name: str, tmp_path: Path, captures: list[bytes]
) -> None:
    model_base = tmp_path / "models"
    shutil.copytree(trained_model_base, model_base)
    with start_server(model_base, trained_model_name) as server:
        settings = gateway_settings(server, trained_model_name)
        bus = InProcessBus(source="inference-gateway")
        app = create_app(settings, bus=bus, results=FakeResults())
        versions: list[int] = []
        failures: list[str] = []
        async with app.router.lifespan_context(app):
            await bus.start()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=60) as http:

                async def keep_classifying(stop: asyncio.Event) -> None:
                    index = 0
                    while not stop.is_set():
                        answer = await http.post("/v1/classify", content=captures[index % len(captures)])
                        index += 1
                        if answer.status_code != 200:
                            failures.append(answer.text)
                        else:
                            versions.append(answer.json()["model_version"])
                            if versions[-1] == 2:
                                switched.set()

                stop, switched = asyncio.Event(), asyncio.Event()
                workers = [asyncio.create_task(keep_classifying(stop)) for _ in range(3)]
                await asyncio.sleep(0.5)
                staging = model_base / trained_model_name / f".incoming-{uuid.uuid4().hex[:6]}"
                await asyncio.to_thread(shutil.copytree, model_base / trained_model_name / "1", staging)
                os.rename(staging, model_base / trained_model_name / "2")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(switched.wait(), timeout=60)
                await asyncio.sleep(0.5)  # and it stays on version 2
                stop.set()
                await asyncio.gather(*workers)
            await bus.stop()
    assert failures == []
    assert versions[0] == 1 and versions[-1] == 2
    # once on version 2, only requests already in flight (one per worker) may still answer from version 1
    assert versions[versions.index(2) :].count(1) <= 3
