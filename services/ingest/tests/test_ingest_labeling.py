"""Predictions, labels and the labeling queue through the HTTP API (standalone mode: SQLite, in-process bus)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import BlobRef, InferenceCompleted, SampleLabeled
from edgeloop_common.settings import CommonSettings
from edgeloop_ingest.adapters.blobstore import LocalBlobStore
from edgeloop_ingest.adapters.disk_buffer import DiskBuffer
from edgeloop_ingest.adapters.samples import SqlSampleRepository, create_sql_engine
from edgeloop_ingest.app import create_app
from edgeloop_ingest.bridge import Bridge, BridgeConfig
from edgeloop_ingest.handlers import handle_upload, label_sample
from edgeloop_ingest.labeling import LabelingService
from edgeloop_ingest.service import Accepted, IngestService
from edgeloop_ingest.settings import Settings
from edgeloop_ingest.validation import ImageLimits
from fastapi.testclient import TestClient
from ingest_testing import SwitchableBus, catdog_photos, tagged_jpeg, wait_for


@pytest.fixture(scope="module")
def photos(catdog_train_dir: Path) -> list[Path]:
    return catdog_photos(catdog_train_dir)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        mqtt_enabled=False,
        common=CommonSettings(
            mode="standalone", data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'ingest.sqlite3'}"
        ),
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def bus(client: TestClient) -> InProcessBus:
    bus = client.app.state.runtime.bus  # type: ignore[attr-defined]
    assert isinstance(bus, InProcessBus)
    return bus


class Devices:
    """Uploads photos as devices would, and plays the gateway by publishing InferenceCompleted."""

    def __init__(self, client: TestClient, bus: InProcessBus, photos: list[Path]) -> None:
        self.client, self.bus, self.photos, self.count = client, bus, photos, 0

    def upload(self, *, device: str = "cam-1", site: str = "site-a") -> dict[str, Any]:
        self.count += 1
        photo = tagged_jpeg(self.photos[self.count % len(self.photos)], f"labeling-{self.count}")
        response = self.client.post("/v1/samples", params={"device_id": device, "site_id": site}, content=photo)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def predict(
        self,
        sample: dict[str, Any],
        scores: dict[str, float],
        *,
        hard: bool = False,
        reason: str | None = None,
        version: int = 1,
        at: datetime | None = None,
    ) -> None:
        top = max(scores, key=scores.__getitem__)
        event = InferenceCompleted(
            sample_id=sample["sample_id"],
            device_id=sample["device_id"],
            site_id=sample["site_id"],
            image=blob_ref(sample),
            model_name="edgeloop-classifier",
            model_version=version,
            scores=scores,
            top_label=top,
            confidence=scores[top],
            latency_ms=12.5,
            hard_example=hard,
            hard_example_reason=reason,
            completed_at=at or datetime.now(UTC),
        )
        self.client.portal.call(self.bus.publish, event)  # type: ignore[union-attr]
        self.client.portal.call(self.bus.drain)  # type: ignore[union-attr]

    def labeled_events(self) -> list[SampleLabeled]:
        return [event for event in self.bus.events_of(SampleLabeled) if isinstance(event, SampleLabeled)]


def blob_ref(sample: dict[str, Any]) -> BlobRef:
    return BlobRef(
        sha256=sample["sha256"],
        uri=sample["blob_uri"],
        content_type=sample["content_type"],
        size_bytes=sample["size_bytes"],
    )


@pytest.fixture
def devices(client: TestClient, bus: InProcessBus, photos: list[Path]) -> Devices:
    return Devices(client, bus, photos)


def queue_ids(client: TestClient, **params: Any) -> list[str]:
    response = client.get("/v1/labeling/queue", params=params)
    assert response.status_code == 200, response.text
    return [sample["sample_id"] for sample in response.json()["samples"]]


# -- predictions ----------------------------------------------------------------------------------------------------


def test_a_prediction_is_stored_on_the_sample(client: TestClient, devices: Devices) -> None:
    sample = devices.upload()
    fresh = client.get(f"/v1/samples/{sample['sample_id']}").json()
    assert (fresh["predicted_label"], fresh["hard_example"], fresh["label"]) == (None, False, None)

    devices.predict(sample, {"cat": 0.58, "dog": 0.42}, hard=True, reason="confidence 0.58 < 0.80", version=3)
    stored = client.get(f"/v1/samples/{sample['sample_id']}").json()
    assert stored["predicted_label"] == "cat"
    assert stored["confidence"] == pytest.approx(0.58)
    assert stored["scores"] == pytest.approx({"cat": 0.58, "dog": 0.42})
    assert (stored["model_name"], stored["model_version"]) == ("edgeloop-classifier", 3)
    assert (stored["hard_example"], stored["hard_example_reason"]) == (True, "confidence 0.58 < 0.80")
    assert stored["predicted_at"] is not None
    assert stored["sha256"] == sample["sha256"] and stored["image_url"] == sample["image_url"]


def test_the_newest_prediction_wins_and_a_redelivery_changes_nothing(client: TestClient, devices: Devices) -> None:
    sample = devices.upload()
    now = datetime.now(UTC)
    devices.predict(sample, {"cat": 0.3, "dog": 0.7}, version=2, at=now)
    devices.predict(sample, {"cat": 0.9, "dog": 0.1}, version=1, at=now - timedelta(minutes=5))  # late, older
    devices.predict(sample, {"cat": 0.3, "dog": 0.7}, version=2, at=now)  # the same one again
    stored = client.get(f"/v1/samples/{sample['sample_id']}").json()
    assert (stored["predicted_label"], stored["model_version"]) == ("dog", 2)
    devices.predict(sample, {"cat": 0.6, "dog": 0.4}, version=3, at=now + timedelta(seconds=1))
    assert client.get(f"/v1/samples/{sample['sample_id']}").json()["model_version"] == 3


def test_a_prediction_for_an_unknown_sample_is_dead_lettered_with_the_reason(
    devices: Devices, bus: InProcessBus
) -> None:
    sample = devices.upload()
    devices.predict({**sample, "sample_id": "no-such-sample"}, {"cat": 0.5, "dog": 0.5})
    [dead] = [d for d in bus.dead_letters if d.original_topic.endswith("inferences.completed.v1")]
    assert "'no-such-sample', which this ingest does not hold" in dead.reason


# -- the labeling flow ----------------------------------------------------------------------------------------------


def test_hard_example_waits_in_the_queue_until_labeled(client: TestClient, devices: Devices) -> None:
    easy, hard = devices.upload(), devices.upload()
    devices.predict(easy, {"cat": 0.97, "dog": 0.03})
    devices.predict(hard, {"cat": 0.55, "dog": 0.45}, hard=True, reason="confidence 0.55 < 0.80")
    assert queue_ids(client) == [hard["sample_id"]]

    registry = client.app.state.metrics.registry  # type: ignore[attr-defined]
    labels_before = registry.get_sample_value("edgeloop_ingest_labels_total", {"request": "single"}) or 0.0
    response = client.put(f"/v1/samples/{hard['sample_id']}/label", json={"label": "dog", "labeled_by": "alice"})
    assert response.status_code == 200, response.text
    assert registry.get_sample_value("edgeloop_ingest_labels_total", {"request": "single"}) == labels_before + 1
    body = response.json()
    assert (body["label"], body["labeled_by"], body["predicted_label"]) == ("dog", "alice", "cat")
    assert body["labeled_at"] is not None

    [event] = devices.labeled_events()
    assert (event.sample_id, event.label, event.labeled_by, event.predicted_label) == (
        hard["sample_id"],
        "dog",
        "alice",
        "cat",
    )
    assert (event.device_id, event.site_id) == ("cam-1", "site-a")
    assert event.image == blob_ref(hard)
    assert queue_ids(client) == []
    assert client.get(f"/v1/samples/{hard['sample_id']}").json()["label"] == "dog"


def test_relabeling_is_allowed_and_announced_again(client: TestClient, devices: Devices) -> None:
    sample = devices.upload()
    for label in ("cat", "dog"):
        response = client.put(f"/v1/samples/{sample['sample_id']}/label", json={"label": label, "labeled_by": "bob"})
        assert response.status_code == 200, response.text
    assert [event.label for event in devices.labeled_events()] == ["cat", "dog"]
    assert client.get(f"/v1/samples/{sample['sample_id']}").json()["label"] == "dog"
    assert devices.labeled_events()[0].predicted_label is None  # labeled before any prediction


def test_labeling_an_unknown_sample_is_404(client: TestClient, devices: Devices) -> None:
    response = client.put("/v1/samples/no-such-id/label", json={"label": "cat", "labeled_by": "alice"})
    assert response.status_code == 404
    assert "no sample with id 'no-such-id'" in response.json()["detail"]
    assert devices.labeled_events() == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"label": "big cat", "labeled_by": "alice"}, "label 'big cat' is not a valid class name"),
        ({"label": "-cat", "labeled_by": "alice"}, "starting with a letter or digit"),
        ({"label": "c" * 65, "labeled_by": "alice"}, "1-64 characters"),
        ({"label": "", "labeled_by": "alice"}, "label '' is not a valid class name"),
        ({"label": "cat", "labeled_by": "  "}, "labeled_by '  ' must say who labeled"),
    ],
)
def test_a_bad_label_is_422_with_the_reason(
    client: TestClient, devices: Devices, body: dict[str, str], words: str
) -> None:
    sample = devices.upload()
    response = client.put(f"/v1/samples/{sample['sample_id']}/label", json=body)
    assert response.status_code == 422
    assert words in response.json()["detail"]
    assert client.get(f"/v1/samples/{sample['sample_id']}").json()["label"] is None
    assert devices.labeled_events() == []


def test_a_label_without_labeled_by_is_422(client: TestClient, devices: Devices) -> None:
    sample = devices.upload()
    response = client.put(f"/v1/samples/{sample['sample_id']}/label", json={"label": "cat"})
    assert response.status_code == 422
    assert "labeled_by" in response.text


def test_batch_labels_the_good_and_explains_the_rest(client: TestClient, devices: Devices) -> None:
    first, second, third = devices.upload(), devices.upload(), devices.upload()
    response = client.post(
        "/v1/labels",
        json={
            "labeled_by": "labeler-7",
            "labels": [
                {"sample_id": first["sample_id"], "label": "cat"},
                {"sample_id": "missing-sample", "label": "dog"},
                {"sample_id": second["sample_id"], "label": "not ok!"},
                {"sample_id": third["sample_id"], "label": "dog"},
                {"sample_id": third["sample_id"], "label": "cat"},
            ],
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["labeled"] == 1
    reasons = {error["sample_id"]: error["reason"] for error in body["errors"]}
    assert set(reasons) == {"missing-sample", second["sample_id"], third["sample_id"]}
    assert "no sample with id 'missing-sample'" in reasons["missing-sample"]
    assert "not a valid class name" in reasons[second["sample_id"]]
    assert "more than once" in reasons[third["sample_id"]]
    assert [(event.sample_id, event.label) for event in devices.labeled_events()] == [(first["sample_id"], "cat")]
    assert [event.labeled_by for event in devices.labeled_events()] == ["labeler-7"]
    labels = {s["sample_id"]: s["label"] for s in client.get("/v1/samples", params={"labeled": True}).json()["samples"]}
    assert labels == {first["sample_id"]: "cat"}


def test_batch_with_a_bad_labeled_by_labels_nothing(client: TestClient, devices: Devices) -> None:
    sample = devices.upload()
    response = client.post(
        "/v1/labels", json={"labeled_by": "", "labels": [{"sample_id": sample["sample_id"], "label": "cat"}]}
    )
    assert response.status_code == 422
    assert "labeled_by" in response.json()["detail"]
    assert devices.labeled_events() == []


def test_batch_of_more_than_1000_is_refused(client: TestClient) -> None:
    labels = [{"sample_id": f"s-{i}", "label": "cat"} for i in range(1001)]
    response = client.post("/v1/labels", json={"labeled_by": "alice", "labels": labels})
    assert response.status_code == 422
    assert "1000" in response.text


# -- listing, filters and pages ---------------------------------------------------------------------------------------


def listed(client: TestClient, **params: Any) -> list[str]:
    response = client.get("/v1/samples", params=params)
    assert response.status_code == 200, response.text
    return [sample["sample_id"] for sample in response.json()["samples"]]


def test_filters(client: TestClient, devices: Devices) -> None:
    a1 = devices.upload(device="cam-1", site="site-a")
    a2 = devices.upload(device="cam-2", site="site-a")
    b1 = devices.upload(device="cam-3", site="site-b")
    devices.predict(a1, {"cat": 0.95, "dog": 0.05})
    devices.predict(a2, {"cat": 0.40, "dog": 0.60}, hard=True, reason="confidence 0.60 < 0.80")
    devices.predict(b1, {"cat": 0.70, "dog": 0.30}, hard=True, reason="confidence 0.70 < 0.80")
    client.put(f"/v1/samples/{a1['sample_id']}/label", json={"label": "cat", "labeled_by": "alice"})

    ids = [a1["sample_id"], a2["sample_id"], b1["sample_id"]]
    assert listed(client) == ids  # oldest first
    assert listed(client, device_id="cam-2") == [a2["sample_id"]]
    assert listed(client, site_id="site-a") == ids[:2]
    assert listed(client, label="cat") == [a1["sample_id"]]
    assert listed(client, labeled=True) == [a1["sample_id"]]
    assert listed(client, labeled=False) == ids[1:]
    assert listed(client, predicted_label="cat") == [a1["sample_id"], b1["sample_id"]]
    assert listed(client, min_confidence=0.65) == [a1["sample_id"], b1["sample_id"]]
    assert listed(client, max_confidence=0.7) == ids[1:]
    assert listed(client, min_confidence=0.65, max_confidence=0.7) == [b1["sample_id"]]
    assert listed(client, hard_example=True) == ids[1:]
    assert listed(client, hard_example=False) == [a1["sample_id"]]
    assert listed(client, hard_example=True, site_id="site-b") == [b1["sample_id"]]
    assert queue_ids(client, site_id="site-a") == [a2["sample_id"]]
    assert queue_ids(client) == ids[1:]


def test_time_filters(client: TestClient, devices: Devices) -> None:
    first = devices.upload()
    middle = devices.upload()
    last = devices.upload()
    at = datetime.fromisoformat(middle["received_at"])
    assert listed(client, since=at.isoformat()) == [middle["sample_id"], last["sample_id"]]  # inclusive
    assert listed(client, until=at.isoformat()) == [first["sample_id"]]  # exclusive
    naive_utc = at.astimezone(UTC).replace(tzinfo=None).isoformat()  # no offset: taken as UTC
    assert listed(client, since=naive_utc, until=last["received_at"]) == [middle["sample_id"]]
    plus_two = at.astimezone(UTC).astimezone(timezone_plus_two()).isoformat()  # the same moment elsewhere
    assert listed(client, since=plus_two) == [middle["sample_id"], last["sample_id"]]


def timezone_plus_two() -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=2))


def test_pages_follow_the_cursor_to_the_end(client: TestClient, devices: Devices) -> None:
    uploaded = [devices.upload(device=f"cam-{i % 2}")["sample_id"] for i in range(7)]
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, **({"after": after} if after else {})}
        body = client.get("/v1/samples", params=params).json()
        seen += [sample["sample_id"] for sample in body["samples"]]
        pages += 1
        after = body["next"]
        if after is None:
            break
    assert seen == uploaded and pages == 3
    # a filtered listing pages the same way
    cam1 = [sid for i, sid in enumerate(uploaded) if i % 2 == 1]
    first = client.get("/v1/samples", params={"device_id": "cam-1", "limit": 2}).json()
    rest = client.get("/v1/samples", params={"device_id": "cam-1", "limit": 2, "after": first["next"]}).json()
    assert [s["sample_id"] for s in first["samples"] + rest["samples"]] == cam1
    assert rest["next"] is None


def test_a_page_exactly_full_has_no_next(client: TestClient, devices: Devices) -> None:
    for _ in range(2):
        devices.upload()
    assert client.get("/v1/samples", params={"limit": 2}).json()["next"] is None


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"after": "not-a-cursor"}, "cursor 'not-a-cursor' is not one this API gave out"),
        # JSON nested past the parser's recursion limit: a RecursionError and a 500 before (tests/hostile).
        ({"after": base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode()}, "is not one this API gave out"),
        ({"min_confidence": 0.9, "max_confidence": 0.2}, "min_confidence 0.9 is above max_confidence 0.2"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "is not before until"),
    ],
)
def test_bad_listing_queries_are_422_with_the_reason(client: TestClient, params: dict[str, Any], words: str) -> None:
    response = client.get("/v1/samples", params=params)
    assert response.status_code == 422
    assert words in response.json()["detail"]


@pytest.mark.parametrize("params", [{"limit": 1001}, {"limit": 0}, {"min_confidence": 1.5}, {"since": "yesterday"}])
def test_out_of_range_parameters_are_422(client: TestClient, params: dict[str, Any]) -> None:
    assert client.get("/v1/samples", params=params).status_code == 422
    assert client.get("/v1/labeling/queue", params={"limit": 5000}).status_code == 422


# -- durability of SampleLabeled ------------------------------------------------------------------------------------


async def test_a_label_while_kafka_is_down_is_buffered_on_disk_and_published_later(
    tmp_path: Path, photos: list[Path]
) -> None:
    bus = SwitchableBus()
    await bus.start()
    repository = SqlSampleRepository(create_sql_engine(f"sqlite:///{tmp_path / 'ingest.sqlite3'}"))
    service = IngestService(
        blobs=LocalBlobStore(tmp_path / "blobs"),
        samples=repository,
        limits=ImageLimits(max_bytes=10 * 1024 * 1024, max_pixels=40_000_000),
    )
    bridge = Bridge(service, bus, DiskBuffer(tmp_path / "buffer.sqlite3"), BridgeConfig(drain_retry_s=0.05))
    await bridge.start()
    try:
        outcome = await handle_upload(
            bridge, payload=tagged_jpeg(photos[0], "durable"), device_id="cam-1", site_id="site-a"
        )
        assert isinstance(outcome, Accepted) and outcome.sample is not None
        bus.down = True
        labeled = await label_sample(bridge, LabelingService(repository), outcome.sample.sample_id, "cat", "alice")
        assert labeled.label is not None and labeled.label.label == "cat"
        assert bridge.buffered_count == 1 and bus.events_of(SampleLabeled) == []  # durable on disk, not yet in Kafka
        bus.down = False
        await wait_for(lambda: bus.events_of(SampleLabeled), what="the buffered SampleLabeled to be drained")
        [event] = bus.events_of(SampleLabeled)
        assert isinstance(event, SampleLabeled)
        assert (event.sample_id, event.label, event.labeled_by) == (outcome.sample.sample_id, "cat", "alice")
        await wait_for(lambda: bridge.buffered_count == 0 and not bridge.buffering, what="the buffer to empty")
    finally:
        await bridge.stop()
        await bus.stop()
