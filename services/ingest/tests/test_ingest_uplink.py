"""The uplink from edge agents, ``POST /v1/uplink``: what an agent and the cloud's consumers observe.

Standalone mode (SQLite, in-process bus) for the API's behaviour; at the end one test on the real Kafka and
PostgreSQL showing that a record resent after a lost answer is one event id on each topic.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from edgeloop_common import topics
from edgeloop_common.events import ImageReceived, InferenceCompleted
from edgeloop_common.settings import CommonSettings
from edgeloop_common.uplink import UplinkRecord, uplink_event_id
from edgeloop_ingest.adapters.uplink_records import SqlUplinkArrivalRepository
from edgeloop_ingest.app import create_app
from edgeloop_ingest.settings import Settings
from edgeloop_ingest.uplink import RecordedArrival, UplinkArrival
from fastapi.testclient import TestClient
from ingest_testing import SwitchableBus, catdog_photos, gif_bytes, tagged_jpeg
from PIL import Image
from sqlalchemy.exc import OperationalError

from tests.helpers import delete_topics, eventually, read_topic_records

MAX_IMAGE_BYTES = 16 * 1024
SITE = "site-edge"


@pytest.fixture(scope="module")
def photos(catdog_train_dir: Path) -> list[Path]:
    return catdog_photos(catdog_train_dir)


@pytest.fixture
def bus() -> SwitchableBus:
    return SwitchableBus()


@pytest.fixture
def client(tmp_path: Path, bus: SwitchableBus) -> Iterator[TestClient]:
    settings = Settings(
        mqtt_enabled=False,
        max_image_bytes=MAX_IMAGE_BYTES,
        common=CommonSettings(
            mode="standalone", data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'ingest.sqlite3'}"
        ),
    )
    with TestClient(create_app(settings, bus=bus)) as test_client:
        test_client.portal.call(bus.start)  # type: ignore[union-attr]
        yield test_client
        test_client.portal.call(bus.stop)  # type: ignore[union-attr]


class EdgeAgent:
    """Builds uplink records from real photos and posts them as an edge agent's forwarder does."""

    def __init__(self, client: TestClient, photos: list[Path]) -> None:
        self.client, self.photos, self.count = client, photos, 0

    def picture(self) -> bytes:
        self.count += 1
        return tagged_jpeg(self.photos[self.count % len(self.photos)], f"uplink-{uuid.uuid4()}")

    def record(self, picture: bytes, **options: Any) -> dict[str, Any]:
        return uplink_record(picture, **options)

    def post(self, record: dict[str, Any] | str, picture: bytes | None) -> httpx.Response:
        document = record if isinstance(record, str) else json.dumps(record)
        files: dict[str, Any] = {"record": (None, document, "application/json")}
        if picture is not None:
            files["image"] = ("picture.jpg", picture, "application/octet-stream")
        return self.client.post("/v1/uplink", files=files)


def uplink_record(
    picture: bytes,
    *,
    included: bool = True,
    device: str = "cam-1",
    sequence: int = 1,
    hard: bool = False,
    **changes: Any,
) -> dict[str, Any]:
    """An uplink record (JSON) of ``picture`` as an edge agent forwards it; ``changes`` override its fields."""
    with Image.open(io.BytesIO(picture)) as image:
        width, height = image.size
        image_format = "jpeg" if image.format == "JPEG" else "png"
    scores = {"cat": 0.57, "dog": 0.43} if hard else {"cat": 0.96, "dog": 0.04}
    record = {
        "record_id": str(uuid.uuid4()),
        "site_id": SITE,
        "device_id": device,
        "sequence": sequence,
        "received_at": (datetime.now(UTC) - timedelta(seconds=30)).isoformat(),
        "mqtt_topic": f"dt/edgeloop/{SITE}/{device}/image",
        "image_sha256": hashlib.sha256(picture).hexdigest(),
        "image_size_bytes": len(picture),
        "image_format": image_format,
        "width": width,
        "height": height,
        "image_included": included,
        "inference": {
            "model_name": "edgeloop-classifier",
            "model_version": 4,
            "scores": scores,
            "top_label": "cat",
            "confidence": scores["cat"],
            "latency_ms": 31.5,
            "served_by": "edge",
            "hard_example": hard,
            "hard_example_reason": "confidence 0.57 < 0.80" if hard else None,
            "image_stats": {"brightness": 0.42, "contrast": 0.18},
            "quality": "ok",
            "joint": {
                "edge_model_name": "edgeloop-classifier",
                "edge_model_version": 4,
                "edge_scores": scores,
                "edge_latency_ms": 31.5,
                "outcome": "timeout",
                "detail": "no answer within 300 ms",
            }
            if hard
            else None,
            "completed_at": datetime.now(UTC).isoformat(),
        },
    }
    UplinkRecord.model_validate(record)  # what the test sends is a record of the contract
    return {**record, **changes}


@pytest.fixture
def agent(client: TestClient, photos: list[Path]) -> EdgeAgent:
    return EdgeAgent(client, photos)


def published(bus: SwitchableBus, event_cls: type[Any]) -> list[tuple[Any, str]]:
    """(event, event id) of each ``event_cls`` the bus took, in order."""
    return [(event, context.event_id) for event, context in bus.published if isinstance(event, event_cls)]


def metric(client: TestClient, name: str, labels: dict[str, str] | None = None) -> float:
    registry = client.app.state.metrics.registry  # type: ignore[attr-defined]
    return float(registry.get_sample_value(name, labels or {}) or 0.0)


def site_samples(client: TestClient) -> list[dict[str, Any]]:
    response = client.get("/v1/samples", params={"site_id": SITE})
    assert response.status_code == 200, response.text
    return list(response.json()["samples"])


def drain(client: TestClient, bus: SwitchableBus) -> None:
    client.portal.call(bus.drain)  # type: ignore[union-attr]


# -- stored ---------------------------------------------------------------------------------------------------------


def test_a_record_with_its_picture_becomes_a_sample_and_both_events(
    client: TestClient, bus: SwitchableBus, agent: EdgeAgent
) -> None:
    picture = agent.picture()
    record = agent.record(picture, sequence=7)
    record_id = record["record_id"]

    response = agent.post(record, picture)
    assert response.status_code == 200, response.text
    assert response.json() == {"record_id": record_id, "status": "stored", "sample_id": record_id}

    sample = client.get(f"/v1/samples/{record_id}").json()
    assert (sample["ingress"], sample["site_id"], sample["device_id"]) == ("edge", SITE, "cam-1")
    assert datetime.fromisoformat(sample["received_at"]) == datetime.fromisoformat(record["received_at"])
    assert (sample["sha256"], sample["size_bytes"], sample["format"]) == (record["image_sha256"], len(picture), "jpeg")
    assert (sample["width"], sample["height"], sample["mqtt_topic"]) == (96, 80, record["mqtt_topic"])
    assert sample["blob_uri"].startswith("file://")
    assert client.get(f"/v1/samples/{record_id}/image").content == picture

    [(received, received_id)] = published(bus, ImageReceived)
    assert received_id == uplink_event_id(record_id, "images.received")
    assert (received.sample_id, received.ingress, received.site_id, received.device_id) == (
        record_id,
        "edge",
        SITE,
        "cam-1",
    )
    assert received.image.uri == sample["blob_uri"] and received.image.sha256 == record["image_sha256"]

    [(completed, completed_id)] = published(bus, InferenceCompleted)
    assert completed_id == uplink_event_id(record_id, "inferences.completed")
    inference = record["inference"]
    assert (completed.sample_id, completed.served_by, completed.model_name, completed.model_version) == (
        record_id,
        "edge",
        "edgeloop-classifier",
        4,
    )
    assert completed.scores == inference["scores"] and completed.image_stats == inference["image_stats"]
    assert completed.image == received.image
    assert completed.completed_at == datetime.fromisoformat(inference["completed_at"])
    # events keyed by device, ImageReceived before InferenceCompleted
    assert [context.key for _, context in bus.published] == ["cam-1", "cam-1"]
    assert [type(event) for event, _ in bus.published] == [ImageReceived, InferenceCompleted]

    arrival = client.get(f"/v1/uplink/{record_id}")
    assert arrival.status_code == 200, arrival.text
    body = arrival.json()
    assert (body["record_id"], body["site_id"], body["device_id"], body["sequence"]) == (record_id, SITE, "cam-1", 7)
    assert (body["image_included"], body["sample_id"]) == (True, record_id)
    assert datetime.fromisoformat(body["stored_at"]) > datetime.fromisoformat(record["received_at"])
    assert metric(client, "edgeloop_ingest_uplink_records_total", {"outcome": "stored"}) == 1

    drain(client, bus)  # ingest's own consumer stored the edge's prediction on the sample
    stored = client.get(f"/v1/samples/{record_id}").json()
    assert (stored["predicted_label"], stored["model_version"], stored["hard_example"]) == ("cat", 4, False)
    assert stored["served_by"] == "edge"  # who answered the device, from the record's inference


def test_the_record_may_come_as_a_file_part_and_the_picture_as_a_png(agent: EdgeAgent) -> None:
    out = io.BytesIO()
    with Image.open(io.BytesIO(agent.picture())) as small:
        small.save(out, "PNG")
    picture = out.getvalue()
    record = agent.record(picture)
    response = agent.client.post(
        "/v1/uplink",
        files={
            "record": ("record.json", json.dumps(record).encode(), "application/json"),
            "image": ("picture.png", picture, "image/png"),
        },
    )
    assert response.status_code == 200, response.text
    assert agent.client.get(f"/v1/samples/{record['record_id']}").json()["format"] == "png"


def test_a_resend_is_a_duplicate_one_sample_and_one_event_of_each_kind(
    client: TestClient, bus: SwitchableBus, agent: EdgeAgent
) -> None:
    picture = agent.picture()
    record = agent.record(picture)
    first, again = agent.post(record, picture), agent.post(record, picture)
    assert first.status_code == again.status_code == 200, again.text
    assert [first.json()["status"], again.json()["status"]] == ["stored", "duplicate"]
    assert again.json()["sample_id"] == record["record_id"]

    assert [sample["sample_id"] for sample in site_samples(client)] == [record["record_id"]]
    assert len(published(bus, ImageReceived)) == len(published(bus, InferenceCompleted)) == 1
    assert metric(client, "edgeloop_ingest_uplink_records_total", {"outcome": "duplicate"}) == 1


class FailingOnce:
    """The arrivals' table, failing once as a database that went away would (a crash before the arrival)."""

    def __init__(self, repository: SqlUplinkArrivalRepository) -> None:
        self.repository, self.failed = repository, False

    def get(self, record_id: str) -> UplinkArrival | None:
        return self.repository.get(record_id)

    def add_if_absent(self, arrival: UplinkArrival) -> RecordedArrival:
        if not self.failed:
            self.failed = True
            raise OperationalError("INSERT INTO ingest_uplink_records", {}, Exception("the database went away"))
        return self.repository.add_if_absent(arrival)


def fail_the_next_arrival(client: TestClient) -> None:
    uplink = client.app.state.uplink  # type: ignore[attr-defined]
    uplink.arrivals = FailingOnce(uplink.arrivals)


def test_a_resend_after_a_failure_before_the_arrival_republishes_the_same_event_ids(
    client: TestClient, bus: SwitchableBus, agent: EdgeAgent
) -> None:
    picture = agent.picture()
    record = agent.record(picture)
    fail_the_next_arrival(client)

    failed = agent.post(record, picture)
    assert failed.status_code == 503, failed.text
    assert "the database went away" in failed.json()["detail"]
    assert client.get(f"/v1/uplink/{record['record_id']}").status_code == 404

    stored = agent.post(record, picture)
    assert stored.status_code == 200, stored.text
    assert stored.json()["status"] == "stored"
    assert agent.post(record, picture).json()["status"] == "duplicate"

    assert len(site_samples(client)) == 1
    for event_cls, kind in ((ImageReceived, "images.received"), (InferenceCompleted, "inferences.completed")):
        ids = [event_id for _, event_id in published(bus, event_cls)]
        assert ids == [uplink_event_id(record["record_id"], kind)] * 2  # the same id twice: consumers drop one
    assert metric(client, "edgeloop_ingest_uplink_records_total", {"outcome": "unavailable"}) == 1


def test_a_resend_without_the_picture_an_earlier_attempt_brought_keeps_its_sample(
    client: TestClient, bus: SwitchableBus, agent: EdgeAgent
) -> None:
    picture = agent.picture()
    record = agent.record(picture)
    fail_the_next_arrival(client)
    assert agent.post(record, picture).status_code == 503
    # the agent, short of room, dropped the picture and forwards the record alone
    response = agent.post({**record, "image_included": False}, None)
    assert response.status_code == 200, response.text
    assert response.json() == {"record_id": record["record_id"], "status": "stored", "sample_id": record["record_id"]}
    [first, resent] = [event for event, _ in published(bus, InferenceCompleted)]
    assert resent == first and resent.image.uri.startswith("file://")  # the same event as the first attempt's
    assert client.get(f"/v1/uplink/{record['record_id']}").json()["image_included"] is True


def test_while_the_bus_is_away_the_agent_is_told_to_retry(
    client: TestClient, bus: SwitchableBus, agent: EdgeAgent
) -> None:
    picture = agent.picture()
    record = agent.record(picture)
    bus.down = True
    response = agent.post(record, picture)
    assert response.status_code == 503, response.text
    assert "event bus" in response.json()["detail"]
    assert client.get(f"/v1/uplink/{record['record_id']}").status_code == 404

    bus.down = False
    assert agent.post(record, picture).json()["status"] == "stored"
    [(_, event_id)] = published(bus, ImageReceived)
    assert event_id == uplink_event_id(record["record_id"], "images.received")


# -- refused --------------------------------------------------------------------------------------------------------


def _refusals() -> list[Any]:
    def sha_mismatch(agent: EdgeAgent, picture: bytes) -> tuple[Any, bytes | None]:
        return agent.record(picture, image_sha256="0" * 64), picture

    def size_mismatch(agent: EdgeAgent, picture: bytes) -> tuple[Any, bytes | None]:
        return agent.record(picture, image_size_bytes=len(picture) + 1), picture

    def missing_image(agent: EdgeAgent, picture: bytes) -> tuple[Any, bytes | None]:
        return agent.record(picture), None

    def image_not_announced(agent: EdgeAgent, picture: bytes) -> tuple[Any, bytes | None]:
        return agent.record(picture, included=False), picture

    def bad_json(agent: EdgeAgent, picture: bytes) -> tuple[Any, bytes | None]:
        return json.dumps(agent.record(picture))[:-7], picture

    def not_a_record(agent: EdgeAgent, picture: bytes) -> tuple[Any, bytes | None]:
        record = agent.record(picture)
        del record["sequence"]
        return record, picture

    def not_a_uuid(agent: EdgeAgent, picture: bytes) -> tuple[Any, bytes | None]:
        return agent.record(picture, record_id="cam-1-0001"), picture

    def undecodable(agent: EdgeAgent, picture: bytes) -> tuple[Any, bytes | None]:
        cut = picture[: len(picture) * 2 // 3]  # a truncated JPEG whose hash and size the record states right
        return agent.record(picture, image_sha256=hashlib.sha256(cut).hexdigest(), image_size_bytes=len(cut)), cut

    def not_jpeg_or_png(agent: EdgeAgent, picture: bytes) -> tuple[Any, bytes | None]:
        gif = gif_bytes()
        record = agent.record(picture, image_sha256=hashlib.sha256(gif).hexdigest(), image_size_bytes=len(gif))
        return record, gif

    def other_format(agent: EdgeAgent, picture: bytes) -> tuple[Any, bytes | None]:
        return agent.record(picture, image_format="png"), picture

    return [
        pytest.param(sha_mismatch, 400, "the picture's sha256 is", id="sha-mismatch"),
        pytest.param(size_mismatch, 400, "cut short or damaged", id="size-mismatch"),
        pytest.param(missing_image, 400, "says image_included, but the request has no part 'image'", id="no-image"),
        pytest.param(image_not_announced, 400, "not included, but the request has a part 'image'", id="extra-image"),
        pytest.param(bad_json, 400, "part 'record' is not JSON", id="bad-json"),
        pytest.param(not_a_record, 422, "sequence: Field required", id="not-a-record"),
        pytest.param(not_a_uuid, 422, "is not a UUID", id="record-id-not-uuid"),
        pytest.param(undecodable, 422, "truncated or corrupt JPEG", id="undecodable"),
        pytest.param(not_jpeg_or_png, 415, "the bytes are a GIF image", id="gif"),
        pytest.param(other_format, 400, "the picture is a JPEG; record", id="format-mismatch"),
    ]


@pytest.mark.parametrize(("build", "status", "reason"), _refusals())
def test_a_record_that_can_never_be_taken_is_refused_with_the_reason_and_nothing_stored(
    client: TestClient, bus: SwitchableBus, agent: EdgeAgent, build: Any, status: int, reason: str
) -> None:
    record, picture = build(agent, agent.picture())
    response = agent.post(record, picture)
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]
    assert site_samples(client) == [] and bus.published == []
    if isinstance(record, dict):
        assert client.get(f"/v1/uplink/{record['record_id']}").status_code == 404
    assert metric(client, "edgeloop_ingest_uplink_records_total", {"outcome": "refused"}) == 1


def test_a_picture_over_the_size_limit_is_413(client: TestClient, agent: EdgeAgent, photos: list[Path]) -> None:
    picture = tagged_jpeg(photos[0], "large", size=(640, 480))
    assert len(picture) > MAX_IMAGE_BYTES
    response = agent.post(agent.record(picture), picture)
    assert response.status_code == 413, response.text
    assert response.json() == {
        "detail": f"the picture is larger than the limit of {MAX_IMAGE_BYTES} bytes",
        "code": "too_large",
    }
    assert site_samples(client) == []
    labels = {"ingress": "edge", "kind": "image", "reason": "too_large"}
    assert metric(client, "edgeloop_ingest_rejections_total", labels) == 1


def test_a_request_that_is_not_multipart_is_415(client: TestClient, agent: EdgeAgent) -> None:
    response = client.post("/v1/uplink", json=agent.record(agent.picture()))
    assert response.status_code == 415, response.text
    assert "multipart/form-data" in response.json()["detail"]


def test_an_unknown_record_id_is_404(client: TestClient) -> None:
    response = client.get(f"/v1/uplink/{uuid.uuid4()}")
    assert response.status_code == 404
    assert "no uplink record with id" in response.json()["detail"]


# -- without the picture, order, the labeling queue ----------------------------------------------------------------


def test_a_record_without_its_picture_announces_only_the_inference(
    client: TestClient, bus: SwitchableBus, agent: EdgeAgent
) -> None:
    picture = agent.picture()
    record = agent.record(picture, included=False)
    response = agent.post(record, None)
    assert response.status_code == 200, response.text
    assert response.json() == {"record_id": record["record_id"], "status": "stored", "sample_id": None}

    assert published(bus, ImageReceived) == []
    [(completed, event_id)] = published(bus, InferenceCompleted)
    assert event_id == uplink_event_id(record["record_id"], "inferences.completed")
    sha = record["image_sha256"]
    assert completed.image.uri == f"edge://{SITE}/sha256/{sha}"
    assert (completed.image.sha256, completed.image.content_type, completed.image.size_bytes) == (
        sha,
        "image/jpeg",
        len(picture),
    )
    assert site_samples(client) == []
    assert client.get(f"/v1/uplink/{record['record_id']}").json()["sample_id"] is None

    drain(client, bus)  # ingest's consumer has no sample for it, and does not dead-letter it either
    assert bus.dead_letters == []
    assert metric(client, "edgeloop_ingest_predictions_total", {"outcome": "picture_at_edge"}) == 1


def test_records_out_of_order_are_stored_and_counted(client: TestClient, agent: EdgeAgent) -> None:
    for device, sequence in (("cam-1", 2), ("cam-1", 3), ("cam-1", 1), ("cam-2", 1)):
        picture = agent.picture()
        response = agent.post(agent.record(picture, device=device, sequence=sequence), picture)
        assert response.json()["status"] == "stored", response.text
    assert metric(client, "edgeloop_ingest_uplink_out_of_order_total") == 1
    assert len(site_samples(client)) == 4


def test_a_hard_example_reaches_the_labeling_queue_like_a_cloud_one(
    client: TestClient, bus: SwitchableBus, agent: EdgeAgent, caplog: pytest.LogCaptureFixture
) -> None:
    hard_picture, easy_picture, away_picture = agent.picture(), agent.picture(), agent.picture()
    hard = agent.record(hard_picture, hard=True)
    easy = agent.record(easy_picture, device="cam-2")
    away = agent.record(away_picture, device="cam-3", hard=True, included=False)  # not by the policies, but possible
    with caplog.at_level(logging.WARNING, logger="edgeloop_ingest.handlers"):
        for record, picture in ((hard, hard_picture), (easy, easy_picture), (away, None)):
            assert agent.post(record, picture).json()["status"] == "stored"
        drain(client, bus)

    queue = client.get("/v1/labeling/queue", params={"site_id": SITE}).json()["samples"]
    assert [sample["sample_id"] for sample in queue] == [hard["record_id"]]
    [queued] = queue
    assert (queued["predicted_label"], queued["hard_example_reason"], queued["ingress"]) == (
        "cat",
        "confidence 0.57 < 0.80",
        "edge",
    )
    assert queued["scores"] == pytest.approx(hard["inference"]["scores"])
    assert bus.dead_letters == []
    assert f"hard example {away['record_id']}" in caplog.text and "not queued for labeling" in caplog.text

    labeled = client.put(f"/v1/samples/{hard['record_id']}/label", json={"label": "cat", "labeled_by": "ann"})
    assert labeled.status_code == 200, labeled.text
    assert client.get("/v1/labeling/queue", params={"site_id": SITE}).json()["samples"] == []


# -- real Kafka and PostgreSQL --------------------------------------------------------------------------------------


@asynccontextmanager
async def ingest_on_kafka(
    tmp_path: Path, database_url: str, kafka_bootstrap: str, prefix: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    settings = Settings(
        mqtt_enabled=False,
        common=CommonSettings(
            mode="distributed",
            kafka_bootstrap_servers=kafka_bootstrap,
            data_dir=tmp_path,
            database_url=database_url,
            topic_prefix=prefix,
        ),
    )
    app = create_app(settings)  # owns its KafkaBus: publishes, and consumes InferenceCompleted
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as http:
                yield http, app
    finally:
        await delete_topics(kafka_bootstrap, prefix)


@pytest.mark.postgres
@pytest.mark.kafka
async def test_a_resent_record_is_one_event_id_on_each_kafka_topic(
    tmp_path: Path, fresh_postgres_url: str, kafka_bootstrap: str, topic_prefix: str, photos: list[Path]
) -> None:
    picture = tagged_jpeg(photos[1], f"kafka-{uuid.uuid4()}")
    record = uplink_record(picture, hard=True)
    record_id = record["record_id"]
    files = {"record": (None, json.dumps(record), "application/json"), "image": ("p.jpg", picture, "image/jpeg")}
    async with ingest_on_kafka(tmp_path, fresh_postgres_url, kafka_bootstrap, topic_prefix) as (http, app):
        uplink = app.state.uplink
        uplink.arrivals = FailingOnce(uplink.arrivals)  # the answer is lost after the events went to Kafka
        answers = [await http.post("/v1/uplink", files=files) for _ in range(3)]
        assert [answer.status_code for answer in answers] == [503, 200, 200], answers[-1].text
        assert [answer.json().get("status") for answer in answers[1:]] == ["stored", "duplicate"]

        async def queued() -> bool:
            queue = (await http.get("/v1/labeling/queue", params={"site_id": SITE})).json()["samples"]
            return [sample["sample_id"] for sample in queue] == [record_id]

        await eventually(
            queued, what="the hard example in the labeling queue, from Kafka", timeout_s=30, interval_s=0.2
        )
        arrival = (await http.get(f"/v1/uplink/{record_id}")).json()
        assert (arrival["sequence"], arrival["sample_id"]) == (1, record_id)
        assert len((await http.get("/v1/samples", params={"site_id": SITE})).json()["samples"]) == 1

        for topic, kind in (
            (topics.IMAGES_RECEIVED, "images.received"),
            (topics.INFERENCES_COMPLETED, "inferences.completed"),
        ):
            records = await read_topic_records(
                kafka_bootstrap, f"{topic_prefix}{topic}", count=3, timeout_s=5, allow_fewer=True
            )
            assert len(records) == 2, f"{topic}: the first attempt and the resend, nothing for the duplicate"
            assert {dict(r.headers)["ce_id"].decode() for r in records} == {uplink_event_id(record_id, kind)}
            assert {r.key.decode() for r in records} == {"cam-1"}
