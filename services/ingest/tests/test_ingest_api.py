"""The HTTP API: uploads (raw and multipart), sample records and images, errors with reasons, health."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import ImageReceived
from edgeloop_common.settings import CommonSettings
from edgeloop_ingest.app import create_app
from edgeloop_ingest.settings import Settings
from fastapi.testclient import TestClient
from ingest_testing import as_png, catdog_photos, gif_bytes, png_declaring


@pytest.fixture(scope="module")
def photos(catdog_train_dir: Path) -> list[Path]:
    return catdog_photos(catdog_train_dir)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        mqtt_enabled=False,
        max_image_bytes=2 * 1024 * 1024,
        common=CommonSettings(
            mode="standalone", data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'ingest.sqlite3'}"
        ),
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def bus(client: TestClient) -> InProcessBus:
    """The app's own in-process bus (standalone mode), started in the app's event loop."""
    bus = client.app.state.runtime.bus  # type: ignore[attr-defined]
    assert isinstance(bus, InProcessBus)
    return bus


def test_raw_upload_then_read_the_record_and_the_image(
    client: TestClient, bus: InProcessBus, photos: list[Path]
) -> None:
    photo = photos[0].read_bytes()
    response = client.post(
        "/v1/samples",
        params={"device_id": "cam-9", "site_id": "site-x"},
        content=photo,
        headers={"content-type": "image/jpeg"},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["sha256"] == hashlib.sha256(photo).hexdigest()
    assert (created["device_id"], created["site_id"], created["ingress"]) == ("cam-9", "site-x", "http")
    assert response.headers["location"] == f"/v1/samples/{created['sample_id']}"

    record = client.get(f"/v1/samples/{created['sample_id']}")
    assert record.status_code == 200
    assert record.json() == created

    image = client.get(f"/v1/samples/{created['sample_id']}/image")
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/jpeg"
    assert image.content == photo

    [event] = bus.events_of(ImageReceived)
    assert isinstance(event, ImageReceived)
    assert event.sample_id == created["sample_id"] and event.ingress == "http"


def test_multipart_upload_of_a_png(client: TestClient, photos: list[Path]) -> None:
    png = as_png(photos[1])
    response = client.post(
        "/v1/samples",
        files={"file": ("photo.png", png, "application/octet-stream")},
        data={"device_id": "cam-2", "site_id": "site-y"},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["format"] == "png" and created["content_type"] == "image/png"
    image = client.get(created["image_url"])
    assert image.headers["content-type"] == "image/png" and image.content == png


@pytest.mark.parametrize(
    ("payload_name", "status", "words"),
    [
        ("empty", 400, "empty"),
        ("text", 415, "not a JPEG or PNG"),
        ("gif", 415, "GIF"),
        ("truncated", 422, "truncated"),
        ("bomb", 422, "pixels"),
        ("too_large", 413, "limit"),
    ],
)
def test_bad_uploads_get_a_status_and_a_reason(
    client: TestClient, bus: InProcessBus, photos: list[Path], payload_name: str, status: int, words: str
) -> None:
    photo = photos[2].read_bytes()
    payloads = {
        "empty": b"",
        "text": b"just some text",
        "gif": gif_bytes(),
        "truncated": photo[: len(photo) // 3],
        "bomb": png_declaring(50_000, 50_000),
        "too_large": b"\xff\xd8\xff" + b"\x00" * (2 * 1024 * 1024),
    }
    response = client.post(
        "/v1/samples", params={"device_id": "cam-1", "site_id": "site-a"}, content=payloads[payload_name]
    )
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    assert bus.events_of(ImageReceived) == []
    assert bus.dead_letters == []  # the client got the reason; no dead letter for HTTP


def test_bad_device_id_is_refused(client: TestClient, photos: list[Path]) -> None:
    response = client.post(
        "/v1/samples", params={"device_id": "../etc", "site_id": "site-a"}, content=photos[0].read_bytes()
    )
    assert response.status_code == 422
    assert "device id" in response.json()["detail"]


def test_missing_device_id_is_refused(client: TestClient, photos: list[Path]) -> None:
    response = client.post("/v1/samples", params={"site_id": "site-a"}, content=photos[0].read_bytes())
    assert response.status_code == 422
    assert "device id" in response.json()["detail"]


def test_multipart_without_a_file(client: TestClient) -> None:
    response = client.post("/v1/samples", data={"device_id": "cam-1", "site_id": "site-a"}, files={"x": ("a", b"1")})
    assert response.status_code == 400
    assert "'file'" in response.json()["detail"]


def test_unknown_sample_is_404(client: TestClient) -> None:
    assert client.get("/v1/samples/no-such-id").status_code == 404
    assert client.get("/v1/samples/no-such-id/image").status_code == 404


def test_health_ready_and_metrics(client: TestClient, photos: list[Path]) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"bus": "ok", "store": "ok"}
    client.post("/v1/samples", params={"device_id": "cam-1", "site_id": "site-a"}, content=b"")
    metrics = client.get("/metrics").text
    assert 'edgeloop_ingest_rejections_total{ingress="http",kind="image",reason="empty"}' in metrics
    assert "edgeloop_bridge_buffered_messages" in metrics
    assert "edgeloop_ingest_publish_duration_seconds_bucket" in metrics


def test_not_ready_while_the_bus_is_not(client: TestClient, bus: InProcessBus) -> None:
    client.portal.call(bus.stop)  # type: ignore[union-attr]
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["bus"] == "not ready"
