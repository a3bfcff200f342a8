"""The hostile-input corpus (``hostile_corpus.py``), sent the way a device or a client sends it, to every service
that takes pictures or readings from outside: ingest over MQTT (Kafka, PostgreSQL) and over HTTP (uploads and the
edge uplink), the edge agent over MQTT, the gateway's ``POST /v1/classify``.

Each payload is refused with a reason (a dead letter, a 4xx with its ``detail``, the edge's ``GET /v1/rejected``),
the service still answers a good picture afterwards, and nothing is half-stored: no blob file and no sample row
for a refused payload. A replayed uplink record is one sample. docs/hostile-input.md lists what each payload gets.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from edgeloop_common import topics
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.mqtt_asyncio import AsyncMqttClient
from edgeloop_common.settings import CommonSettings
from hostile_corpus import (
    BAD_ID_TOPICS,
    WRONG_DEPTH_TOPICS,
    Hostile,
    image_corpus,
    photo_jpeg,
    telemetry_corpus,
)
from sqlalchemy import create_engine, text

from tests.helpers import eventually, read_topic_records


@pytest.fixture(scope="module")
def photos(catdog_train_dir: Path) -> list[Path]:
    return sorted((catdog_train_dir / "cat").glob("*.jpg"))[:2] + sorted((catdog_train_dir / "dog").glob("*.jpg"))[:2]


@pytest.fixture(scope="module")
def corpus(photos: list[Path]) -> list[Hostile]:
    return image_corpus(photos[0])


@pytest.fixture
def site() -> str:
    return f"hostile-{uuid.uuid4().hex[:8]}"


def blob_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file() and not path.name.startswith(".")]


def says(reason: str, words: str) -> bool:
    return words.lower() in reason.lower()


async def publish_all(broker: tuple[str, int], messages: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 in order; returns once the broker acknowledged each."""
    client = AsyncMqttClient(*broker, client_id=f"hostile-device-{uuid.uuid4().hex[:8]}")
    await client.connect()
    try:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)
    finally:
        await client.close()


# -- ingest over MQTT: dead letters in Kafka, samples in PostgreSQL --------------------------------------------------


@pytest.mark.kafka
@pytest.mark.mqtt
@pytest.mark.postgres
async def test_ingest_dead_letters_every_hostile_device_message_and_stores_only_the_good_picture(
    tmp_path: Path,
    mqtt_broker: tuple[str, int],
    kafka_bootstrap: str,
    kafka_topics: str,
    fresh_postgres_url: str,
    site: str,
    corpus: list[Hostile],
    photos: list[Path],
) -> None:
    from edgeloop_ingest.app import IngestRuntime, create_app
    from edgeloop_ingest.settings import Settings

    settings = Settings(
        mqtt_client_id=f"ingest-hostile-{uuid.uuid4().hex[:8]}",
        mqtt_session_expiry_s=60,
        sites=site,
        common=CommonSettings(
            mode="distributed",
            topic_prefix=kafka_topics,
            mqtt_host=mqtt_broker[0],
            mqtt_port=mqtt_broker[1],
            data_dir=tmp_path,
            database_url=fresh_postgres_url,
        ),
    )
    good = photo_jpeg(photos[1], tag=f"{site}-1")
    image_topic = f"dt/edgeloop/{site}/cam-1/image"
    refused: list[tuple[str, bytes, str]] = [(image_topic, h.payload, h.reason) for h in corpus]
    refused += [(f"dt/edgeloop/{site}/cam-1/telemetry", h.payload, h.reason) for h in telemetry_corpus()]
    # Site "..": not this ingest's site, so not even received; every other bad id is this site's.
    bad_ids = [topic.format(site=site) for topic in BAD_ID_TOPICS if "{site}" in topic]
    refused += [(topic, good, "not a valid id") for topic in bad_ids]
    unheard = [(topic.format(site=site), good) for topic in WRONG_DEPTH_TOPICS]

    bus = KafkaBus(bootstrap_servers=kafka_bootstrap, source="ingest", topic_prefix=kafka_topics)
    await bus.start()
    app = create_app(settings, bus=bus)
    try:
        async with app.router.lifespan_context(app):
            runtime: IngestRuntime = app.state.runtime
            assert runtime.subscriber is not None and await runtime.subscriber.wait_connected(15)
            await publish_all(mqtt_broker, [(t, p) for t, p, _ in refused] + unheard + [(image_topic, good)])

            letters = await read_topic_records(
                kafka_bootstrap, bus.topic_name(topics.DEAD_LETTER), count=len(refused), timeout_s=60
            )
            [image] = await read_topic_records(kafka_bootstrap, bus.topic_name(topics.IMAGES_RECEIVED), count=1)
            assert json.loads(image.value)["image"]["sha256"] == hashlib.sha256(good).hexdigest()
            await eventually(lambda: runtime.bridge.in_flight == 0, what="every message acknowledged")
    finally:
        await bus.stop()

    got = {}
    for record in letters:
        letter = json.loads(record.value)
        got[(letter["mqtt_topic"], base64.b64decode(letter["original_value_b64"]))] = letter["reason"]
    assert len(letters) == len(refused)
    for topic, payload, words in refused:
        reason = got[(topic, payload[: settings.dead_letter_max_payload_bytes])]
        assert says(reason, words), f"{topic}: {reason!r} does not say {words!r}"
    engine = create_engine(fresh_postgres_url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT sha256 FROM ingest_samples")).scalars().all()
    engine.dispose()
    assert rows == [hashlib.sha256(good).hexdigest()]  # the good picture only: nothing half-stored
    assert [path.name for path in blob_files(settings.resolved_blob_dir())] == rows


# -- ingest over HTTP: uploads and the edge uplink ----------------------------------------------------------------

MAX_IMAGE_BYTES = 256 * 1024  # small, so that "oversize" costs little


@pytest.fixture
async def ingest_client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    """Ingest in standalone mode (SQLite, in-process bus, no MQTT), reached over HTTP; and its blob folder."""
    from edgeloop_ingest.app import create_app
    from edgeloop_ingest.settings import Settings

    settings = Settings(
        mqtt_enabled=False,
        max_image_bytes=MAX_IMAGE_BYTES,
        common=CommonSettings(mode="standalone", data_dir=tmp_path),
    )
    bus = InProcessBus(source="ingest")
    app = create_app(settings, bus=bus)
    await bus.start()
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as http,
    ):
        yield http, settings.resolved_blob_dir()
    await bus.stop()


async def sample_count(http: httpx.AsyncClient) -> int:
    response = await http.get("/v1/samples", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return len(response.json()["samples"])


async def test_ingest_uploads_refuse_every_hostile_payload_with_a_reason_and_store_nothing(
    ingest_client: tuple[httpx.AsyncClient, Path], corpus: list[Hostile], photos: list[Path], site: str
) -> None:
    http, blobs = ingest_client
    good = photo_jpeg(photos[1], tag=f"{site}-2")
    ids = {"device_id": "cam-1", "site_id": site}
    hostile = [*corpus, Hostile("oversize", b"\xff\xd8\xff" + b"\x00" * MAX_IMAGE_BYTES, "limit")]
    for item in hostile:
        raw = await http.post("/v1/samples", params=ids, content=item.payload)
        form = await http.post("/v1/samples", data=ids, files={"file": ("photo.jpg", item.payload, "image/jpeg")})
        for response in (raw, form):
            assert 400 <= response.status_code < 500, f"{item.name}: {response.status_code} {response.text}"
            body = response.json()
            assert says(body["detail"], item.reason), f"{item.name}: {body}"
            assert body["code"], item.name
    for bad in ["..", "a/b", "+", "#", "../../etc", "c" * 65, "cam 1", ""]:
        response = await http.post("/v1/samples", params={"device_id": bad or None, "site_id": site}, content=good)
        assert response.status_code == 422, f"{bad!r}: {response.status_code} {response.text}"
        assert "device id" in response.json()["detail"]
    assert await sample_count(http) == 0 and blob_files(blobs) == []

    stored = await http.post("/v1/samples", params=ids, content=good)  # still up: the good picture goes in
    assert stored.status_code == 201, stored.text
    assert await sample_count(http) == 1 and len(blob_files(blobs)) == 1


def uplink_record(picture: bytes, *, site: str, width: int = 160, height: int = 120, **changes: Any) -> dict[str, Any]:
    """An edge agent's uplink record of ``picture`` (edgeloop_common.uplink.UplinkRecord)."""
    scores = {"cat": 0.9, "dog": 0.1}
    record = {
        "record_id": str(uuid.uuid4()),
        "site_id": site,
        "device_id": "cam-1",
        "sequence": 1,
        "received_at": (datetime.now(UTC) - timedelta(seconds=5)).isoformat(),
        "mqtt_topic": f"dt/edgeloop/{site}/cam-1/image",
        "image_sha256": hashlib.sha256(picture).hexdigest(),
        "image_size_bytes": len(picture),
        "image_format": "jpeg",
        "width": width,
        "height": height,
        "image_included": True,
        "inference": {
            "model_name": "edgeloop-classifier",
            "model_version": 1,
            "scores": scores,
            "top_label": "cat",
            "confidence": 0.9,
            "latency_ms": 12.0,
            "served_by": "edge",
            "hard_example": False,
            "hard_example_reason": None,
            "image_stats": {"brightness": 0.4},
            "quality": "ok",
            "joint": None,
            "completed_at": datetime.now(UTC).isoformat(),
        },
    }
    return {**record, **changes}


async def post_uplink(http: httpx.AsyncClient, record: dict[str, Any] | bytes, picture: bytes | None) -> httpx.Response:
    document = record if isinstance(record, bytes) else json.dumps(record).encode()
    files: dict[str, Any] = {"record": ("record.json", document, "application/json")}
    if picture is not None:
        files["image"] = ("picture", picture, "application/octet-stream")
    return await http.post("/v1/uplink", files=files)


async def test_ingest_uplink_refuses_hostile_records_and_pictures_and_a_replay_is_one_sample(
    ingest_client: tuple[httpx.AsyncClient, Path], corpus: list[Hostile], photos: list[Path], site: str
) -> None:
    http, blobs = ingest_client
    good = photo_jpeg(photos[2], tag=f"{site}-3")
    hostile_records: list[tuple[str, dict[str, Any] | bytes, bytes | None]] = [
        ("deeply nested", b'{"record_id": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", good),
        ("not UTF-8", json.dumps(uplink_record(good, site=site)).encode().replace(b"cam-1", b"cam-\xff"), good),
        ("not JSON", b"{record", good),
        ("record id not a UUID", uplink_record(good, site=site, record_id="../../etc/passwd"), good),
        ("site id with '/'", uplink_record(good, site="a/b"), good),
        ("site id '..'", uplink_record(good, site=".."), good),
        ("device id '+'", uplink_record(good, site=site, device_id="+"), good),
        ("device id '#'", uplink_record(good, site=site, device_id="#"), good),
        ("sha256 not the picture's", uplink_record(good, site=site, image_sha256="0" * 64), good),
        ("picture missing", uplink_record(good, site=site), None),
        ("size not the picture's", uplink_record(good, site=site, image_size_bytes=len(good) + 1), good),
    ]
    hostile_records += [
        (f"picture {h.name}", uplink_record(h.payload, site=site), h.payload) for h in corpus if h.payload
    ]
    for name, record, picture in hostile_records:
        response = await post_uplink(http, record, picture)
        assert 400 <= response.status_code < 500, f"{name}: {response.status_code} {response.text}"
        assert isinstance(response.json()["detail"], str | list) and response.json()["detail"], name
    assert await sample_count(http) == 0 and blob_files(blobs) == []

    record = uplink_record(good, site=site)
    first = await post_uplink(http, record, good)
    assert first.status_code == 200 and first.json()["status"] == "stored", first.text
    for _ in range(2):  # the agent resends: its answer was lost
        again = await post_uplink(http, record, good)
        assert again.status_code == 200 and again.json()["status"] == "duplicate", again.text
    other = photo_jpeg(photos[3], tag=f"{site}-4")
    replayed = uplink_record(other, site=site, sequence=2)
    answers = await asyncio.gather(*(post_uplink(http, replayed, other) for _ in range(5)))  # replayed at once
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    assert sorted(answer.json()["status"] for answer in answers).count("stored") <= 1
    assert await sample_count(http) == 2 and len(blob_files(blobs)) == 2


# -- the gateway's POST /v1/classify ------------------------------------------------------------------------------


async def test_gateway_classify_refuses_every_hostile_picture_with_a_reason(
    tmp_path: Path, corpus: list[Hostile], photos: list[Path]
) -> None:
    from edgeloop_inference_gateway.app import create_app
    from edgeloop_inference_gateway.settings import Settings
    from openapi_services import HashScoringModel, NoResults

    settings = Settings(
        mqtt_results=False, max_image_bytes=MAX_IMAGE_BYTES, common=CommonSettings(mode="standalone", data_dir=tmp_path)
    )
    bus = InProcessBus(source="inference-gateway")
    app = create_app(settings, bus=bus, model_client=HashScoringModel(), results=NoResults())
    await bus.start()
    hostile = [*corpus, Hostile("oversize", b"\xff\xd8\xff" + b"\x00" * MAX_IMAGE_BYTES, "limit")]
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http,
    ):
        for item in hostile:
            words = "no image" if not item.payload else item.reason
            raw = await http.post("/v1/classify", content=item.payload)
            form = await http.post("/v1/classify", files={"image": ("photo.jpg", item.payload, "image/jpeg")})
            for response in (raw, form):
                assert response.status_code in (400, 413), f"{item.name}: {response.status_code} {response.text}"
                assert says(response.json()["detail"], words), f"{item.name}: {response.text}"
        for bad in ["..", "a/b", "+", "#"]:
            response = await http.post(
                "/v1/classify", params={"site": bad}, content=photo_jpeg(photos[0], tag="site-check")
            )
            assert response.status_code == 422, f"{bad!r}: {response.text}"
        answered = await http.post("/v1/classify", content=photo_jpeg(photos[1], tag="the-good-one"))
        assert answered.status_code == 200 and answered.json()["top_label"] in ("cat", "dog"), answered.text
    await bus.stop()


# -- the edge agent over MQTT ---------------------------------------------------------------------------------------


@pytest.mark.mqtt
@pytest.mark.tf
async def test_edge_agent_rejects_every_hostile_picture_with_a_reason_and_answers_the_good_one(
    tmp_path: Path,
    mqtt_broker: tuple[str, int],
    trained_model_base: Path,
    trained_model_name: str,
    site: str,
    corpus: list[Hostile],
    photos: list[Path],
) -> None:
    from edgeloop_edge.app import create_app
    from edgeloop_edge.settings import Settings
    from edgeloop_model_server.embedded import serve_in_thread

    from tests.model_fixtures import lite_server_settings

    good = photo_jpeg(photos[1], tag=f"{site}-5")
    image_topic = f"dt/edgeloop/{site}/cam-1/image"
    bad_ids = [topic.format(site=site) for topic in BAD_ID_TOPICS if "{site}" in topic]
    refused = [(image_topic, h.payload, h.reason) for h in corpus]
    refused += [(topic, good, "not an image topic") for topic in bad_ids]
    results: list[dict[str, Any]] = []
    listener = AsyncMqttClient(*mqtt_broker, on_message=lambda _topic, payload: results.append(json.loads(payload)))
    with serve_in_thread(lite_server_settings(trained_model_base, trained_model_name)) as server:
        settings = Settings(
            site=site,
            mqtt_client_id=f"edge-{site}",
            mqtt_session_expiry_s=60,
            model_name=trained_model_name,
            model_server_url=server.rest_url,
            common=CommonSettings(
                mode="standalone", mqtt_host=mqtt_broker[0], mqtt_port=mqtt_broker[1], data_dir=tmp_path / "data"
            ),
        )
        app = create_app(settings)
        await listener.connect()
        await listener.subscribe(f"dt/edgeloop/{site}/+/result")
        try:
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as http,
            ):
                await publish_all(mqtt_broker, [(t, p) for t, p, _ in refused] + [(image_topic, good)])

                async def all_rejected() -> bool:
                    return len((await http.get("/v1/rejected", params={"limit": 1000})).json()) >= len(refused)

                await eventually(all_rejected, what="every hostile message rejected", timeout_s=30)
                await eventually(lambda: len(results) == 1, what="the good picture's answer", timeout_s=30)
                rejected = (await http.get("/v1/rejected", params={"limit": 1000})).json()
                status = (await http.get("/v1/status")).json()
        finally:
            await listener.close()
    assert len(rejected) == len(refused)
    by_topic: dict[str, list[str]] = {}
    for row in rejected:
        by_topic.setdefault(row["mqtt_topic"], []).append(row["reason"])
    image_reasons = by_topic.pop(image_topic)
    assert len(image_reasons) == len(corpus)
    for item in corpus:  # the agent keeps the reason, not the bytes: each payload's words are in one reason
        assert any(says(reason, item.reason) for reason in image_reasons), f"{item.name}: {image_reasons}"
    assert sorted(by_topic) == sorted(bad_ids)
    assert results[0]["served_by"] == "edge"
    assert status["uplink"]["queued_records"] == 1  # only the good picture is kept: nothing half-stored
