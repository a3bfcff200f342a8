"""Service to service with ``EDGELOOP_API_AUTH=required``: the real ingest and inference gateway served over HTTP
(uvicorn on free ports), called by the edge agent's own clients built as its app builds them (with
``service_auth(settings.common)``): the uplink goes through with a service token, is held (not set aside) while the
agent's token is refused, and flows again once the token is fixed; joint inference is answered with the edge's
token and refused without one."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from edgeloop.system import EmbeddedServer
from edgeloop_common.api_auth import add_token, remove_token, service_auth
from edgeloop_common.settings import CommonSettings
from edgeloop_common.uplink import EdgeInference
from edgeloop_edge.joint import CloudClassifier
from edgeloop_edge.metrics import EdgeMetrics
from edgeloop_edge.store import EdgeStore
from edgeloop_edge.uplink import UplinkForwarder
from PIL import Image

from tests.helpers import eventually, free_port
from tests.hostile import openapi_services as builders


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 90, 40)).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
def store_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "tokens.json"
    monkeypatch.setenv("EDGELOOP_API_AUTH", "required")
    monkeypatch.setenv("EDGELOOP_API_TOKENS_FILE", str(path))
    return path


@pytest.fixture
async def ingest_url(store_file: Path, tmp_path: Path) -> AsyncIterator[str]:
    server = EmbeddedServer("ingest", builders.ingest(tmp_path / "ingest"), "127.0.0.1", free_port())
    await server.start()
    yield server.url
    await server.stop()


def _answered_picture(store: EdgeStore, image: bytes) -> str:
    picture = store.accept(
        device_id="cam-1",
        mqtt_topic="dt/edgeloop/site-auth/cam-1/image",
        image=image,
        sha256=hashlib.sha256(image).hexdigest(),
        image_format="jpeg",
        width=32,
        height=32,
        redelivered=False,
    )
    assert picture is not None
    inference = EdgeInference(
        model_name="m",
        model_version=1,
        scores={"cat": 0.9, "dog": 0.1},
        top_label="cat",
        confidence=0.9,
        latency_ms=3.0,
        served_by="edge",
        completed_at=picture.received_at,
    )
    store.answer(picture.record_id, inference, keep_image=True)
    return picture.record_id


async def test_the_edge_uplink_reaches_ingest_with_its_service_token_and_waits_while_refused(
    store_file: Path, ingest_url: str, tmp_path: Path
) -> None:
    stored_viewer, viewer = add_token(store_file, "someone", "viewer")
    _, edge_token = add_token(store_file, "edge site-auth", "service")
    store = EdgeStore(tmp_path / "edge.sqlite3", max_records=100, max_bytes=10_000_000)
    record_id = _answered_picture(store, _jpeg())

    async def forward_with(token: str) -> UplinkForwarder:
        common = CommonSettings(api_token=token)  # what the edge app passes: service_auth(settings.common)
        forwarder = UplinkForwarder(
            store, ingest_url=ingest_url, site_id="site-auth", metrics=EdgeMetrics(), auth=service_auth(common)
        )
        forwarder.start()
        return forwarder

    # A viewer's token may not send uplink records: refused, and the record waits in the store (not set aside).
    refused = await forward_with(viewer)
    await eventually(lambda: "403" in refused.last_error, timeout_s=10)
    await refused.stop()
    assert [p.record_id for p in store.next_to_forward(10)] == [record_id]
    assert store.set_aside_records() == []

    forwarder = await forward_with(edge_token)
    await eventually(lambda: store.next_to_forward(10) == [], timeout_s=10)
    await forwarder.stop()
    async with httpx.AsyncClient(base_url=ingest_url, headers={"Authorization": f"Bearer {edge_token}"}) as ingest:
        arrived = await ingest.get(f"/v1/uplink/{record_id}")
        assert arrived.status_code == 200, arrived.text
        assert (await ingest.get(f"/v1/uplink/{record_id}", headers={"Authorization": ""})).status_code == 401
    assert remove_token(store_file, stored_viewer.id)
    store.close()


async def test_joint_inference_carries_the_edge_token(store_file: Path, tmp_path: Path) -> None:
    stored, edge_token = add_token(store_file, "edge site-auth", "service")
    gateway = EmbeddedServer("gateway", builders.gateway(tmp_path / "gateway"), "127.0.0.1", free_port())
    await gateway.start()
    try:
        common = CommonSettings(api_token=edge_token)
        cloud = CloudClassifier(gateway.url, budget_s=5.0, link_retry_s=0.01, auth=service_auth(common))
        answer = await cloud.classify(_jpeg(), site_id="site-auth", device_id="cam-1")
        assert answer.outcome == "cloud" and answer.scores, answer.detail
        # The token removed: the next call is refused at once (no restart), and says why.
        remove_token(store_file, stored.id)
        refused = await cloud.classify(_jpeg(), site_id="site-auth", device_id="cam-1")
        assert refused.outcome == "cloud_error" and "401" in refused.detail
        await cloud.close()
    finally:
        await gateway.stop()
