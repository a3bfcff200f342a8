"""What the console reads from ingest, on SQLite and on PostgreSQL: who answered each picture (``served_by``, kept
from InferenceCompleted, a filter of the listing), the exact count of the labeling queue (COUNT in SQL), and the
activity per site and time bucket (pictures, labels, answers that were right; COUNT/GROUP BY in SQL)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import InferenceCompleted
from edgeloop_common.settings import CommonSettings
from edgeloop_ingest.adapters.samples import SqlSampleRepository, create_sql_engine, samples
from edgeloop_ingest.app import create_app
from edgeloop_ingest.labeling import ActivityQuery, LabelingService, Prediction
from edgeloop_ingest.service import SampleRecord
from edgeloop_ingest.settings import Settings
from fastapi.testclient import TestClient
from ingest_testing import catdog_photos, tagged_jpeg
from sqlalchemy import Engine

HOUR = timedelta(hours=1)
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)  # on the hour


@pytest.fixture
def engine(sqlite_or_postgres_url: str) -> Iterator[Engine]:
    engine = create_sql_engine(sqlite_or_postgres_url)
    yield engine
    engine.dispose()


def record(site: str, at: datetime, *, device: str = "cam-1") -> SampleRecord:
    return SampleRecord(
        sample_id=str(uuid.uuid4()),
        device_id=device,
        site_id=site,
        received_at=at,
        sha256="a" * 64,
        size_bytes=100,
        format="jpeg",
        width=4,
        height=4,
        ingress="mqtt",
        mqtt_topic=None,
        blob_uri="file:///nowhere",
    )


def prediction(top: str, *, hard: bool = False, served_by: str = "cloud", version: int = 3) -> Prediction:
    other = "dog" if top == "cat" else "cat"
    return Prediction(
        predicted_label=top,
        confidence=0.6,
        scores={top: 0.6, other: 0.4},
        model_name="m",
        model_version=version,
        hard_example=hard,
        hard_example_reason="uncertain" if hard else None,
        predicted_at=T0 + 10 * HOUR,
        served_by=served_by,  # type: ignore[arg-type]
    )


def test_activity_counts_per_site_and_bucket_and_the_queue_count(engine: Engine) -> None:
    repository = SqlSampleRepository(engine)
    labeling = LabelingService(repository)
    # site-a: 3 pictures in the 10:00 bucket (2 labeled: 1 right), 1 at 12:59:59; site-b: 2 at 11:00 (1 labeled, right)
    a = [record("site-a", T0 + timedelta(minutes=m)) for m in (0, 20, 59)] + [
        record("site-a", T0 + 3 * HOUR - timedelta(seconds=1))
    ]
    b = [record("site-b", T0 + HOUR), record("site-b", T0 + HOUR + timedelta(minutes=30))]
    outside = [record("site-a", T0 - timedelta(seconds=1)), record("site-a", T0 + 4 * HOUR)]
    repository.add_many([*a, *b, *outside])
    for sample, top, hard in ((a[0], "cat", True), (a[1], "cat", True), (a[2], "dog", True), (b[0], "dog", False)):
        repository.record_prediction(sample.sample_id, prediction(top, hard=hard))
    repository.set_labels(
        {a[0].sample_id: "cat", a[1].sample_id: "dog", b[0].sample_id: "dog"}, labeled_by="t", labeled_at=T0
    )
    repository.set_labels({b[1].sample_id: "cat"}, labeled_by="t", labeled_at=T0)  # labeled, never answered

    sites = labeling.activity(ActivityQuery(since=T0, until=T0 + 4 * HOUR, bucket_s=3600))
    assert [site.site_id for site in sites] == ["site-a", "site-b"]
    for site in sites:
        assert [bucket.start for bucket in site.buckets] == [T0 + i * HOUR for i in range(4)]
    figures = {site.site_id: [(b.samples, b.labeled, b.correct) for b in site.buckets] for site in sites}
    assert figures == {
        "site-a": [(3, 2, 1), (0, 0, 0), (1, 0, 0), (0, 0, 0)],
        "site-b": [(0, 0, 0), (2, 1, 1), (0, 0, 0), (0, 0, 0)],
    }
    assert sites[0].buckets[0].accuracy == 0.5 and sites[0].buckets[1].accuracy is None
    only_b = labeling.activity(ActivityQuery(since=T0, until=T0 + 2 * HOUR, bucket_s=1800, site_id="site-b"))
    assert [[b.samples for b in site.buckets] for site in only_b] == [[0, 0, 1, 1]]

    # the queue: hard and unlabeled -- a[2] only; counted, not read
    assert labeling.queue_count() == 1
    assert labeling.queue_count(site_id="site-a") == 1 and labeling.queue_count(site_id="site-b") == 0
    repository.record_prediction(outside[0].sample_id, prediction("cat", hard=True))
    assert labeling.queue_count(site_id="site-a") == 2


def test_served_by_is_kept_and_filters_the_listing(engine: Engine) -> None:
    repository = SqlSampleRepository(engine)
    labeling = LabelingService(repository)
    edge, cloud, unanswered = (record("site-s", T0 + i * HOUR) for i in range(3))
    repository.add_many([edge, cloud, unanswered])
    repository.record_prediction(edge.sample_id, prediction("cat", served_by="edge", version=7))
    repository.record_prediction(cloud.sample_id, prediction("dog", served_by="cloud", version=8))
    stored = labeling.get(edge.sample_id)
    assert stored.prediction is not None
    assert (stored.prediction.served_by, stored.prediction.model_version) == ("edge", 7)
    with engine.connect() as connection:
        kept = dict(
            connection.execute(samples.select().with_only_columns(samples.c.sample_id, samples.c.served_by)).all()
        )
    assert kept == {edge.sample_id: "edge", cloud.sample_id: "cloud", unanswered.sample_id: None}


@pytest.fixture
def client(tmp_path: Path, sqlite_or_postgres_url: str) -> Iterator[tuple[TestClient, InProcessBus]]:
    bus = InProcessBus(source="ingest-test")
    settings = Settings(
        mqtt_enabled=False,
        common=CommonSettings(mode="distributed", data_dir=tmp_path, database_url=sqlite_or_postgres_url),
    )
    with TestClient(create_app(settings, bus=bus)) as test_client:
        test_client.portal.call(bus.start)  # type: ignore[union-attr]
        yield test_client, bus
        test_client.portal.call(bus.stop)  # type: ignore[union-attr]


def test_the_http_api_shows_served_by_counts_the_queue_and_the_activity(
    client: tuple[TestClient, InProcessBus], catdog_train_dir: Path
) -> None:
    http, bus = client
    site = f"s-{uuid.uuid4().hex[:6]}"
    uploaded: list[dict[str, Any]] = []
    for i, photo in enumerate(catdog_photos(catdog_train_dir, count=3)):
        response = http.post(
            "/v1/samples", params={"site_id": site, "device_id": "cam-1"}, content=tagged_jpeg(photo, f"reads-{i}")
        )
        assert response.status_code == 201, response.text
        uploaded.append(response.json())
    for sample, served_by in zip(uploaded, ("edge", "cloud", "cloud"), strict=True):
        event = InferenceCompleted(
            sample_id=sample["sample_id"],
            device_id="cam-1",
            site_id=site,
            image={
                "sha256": sample["sha256"],
                "uri": sample["blob_uri"],
                "content_type": "image/jpeg",
                "size_bytes": 1,
            },
            model_name="m",
            model_version=5,
            scores={"cat": 0.55, "dog": 0.45},
            top_label="cat",
            confidence=0.55,
            latency_ms=2.0,
            served_by=served_by,
            hard_example=True,
        )
        http.portal.call(bus.publish, event)  # type: ignore[union-attr]

    deadline = time.monotonic() + 10
    while any(s["served_by"] is None for s in http.get("/v1/samples", params={"site_id": site}).json()["samples"]):
        assert time.monotonic() < deadline, "the predictions were not stored in 10 s"
        time.sleep(0.02)
    first = http.get(f"/v1/samples/{uploaded[0]['sample_id']}").json()
    assert (first["served_by"], first["model_version"]) == ("edge", 5)
    by_edge = http.get("/v1/samples", params={"site_id": site, "served_by": "edge"}).json()["samples"]
    assert [s["sample_id"] for s in by_edge] == [uploaded[0]["sample_id"]]
    by_cloud = http.get("/v1/samples", params={"site_id": site, "served_by": "cloud"}).json()["samples"]
    assert [s["sample_id"] for s in by_cloud] == [s["sample_id"] for s in uploaded[1:]]
    assert http.get("/v1/samples", params={"served_by": "moon"}).status_code == 422

    assert http.get("/v1/labeling/queue/count", params={"site_id": site}).json() == {"site_id": site, "waiting": 3}
    labeled = http.put(f"/v1/samples/{uploaded[1]['sample_id']}/label", json={"label": "cat", "labeled_by": "t"})
    assert labeled.status_code == 200, labeled.text
    assert http.get("/v1/labeling/queue/count", params={"site_id": site}).json()["waiting"] == 2

    activity = http.get("/v1/stats/activity", params={"site_id": site, "bucket_s": 3600})
    assert activity.status_code == 200, activity.text
    body = activity.json()
    assert body["bucket_s"] == 3600 and len(body["sites"]) == 1
    buckets = body["sites"][0]["buckets"]
    assert 24 <= len(buckets) <= 25  # the last 24 hours, in whole hours
    assert sum(b["samples"] for b in buckets) == 3
    assert [(b["labeled"], b["correct"], b["accuracy"]) for b in buckets if b["labeled"]] == [(1, 1, 1.0)]
    too_many = http.get("/v1/stats/activity", params={"bucket_s": 60, "since": "2026-01-01T00:00:00Z"})
    assert too_many.status_code == 422 and "the limit is 500" in too_many.json()["detail"]
    # a window of twenty centuries in one-minute buckets: refused from the count, at once (never listed)
    started = time.perf_counter()
    centuries = http.get("/v1/stats/activity", params={"bucket_s": 60, "since": "0001-01-02T00:00:00Z"})
    assert centuries.status_code == 422 and "the limit is 500" in centuries.json()["detail"]
    assert time.perf_counter() - started < 2.0
    no_room = http.get("/v1/stats/activity", params={"until": "0001-01-01T00:00:00Z"})
    assert no_room.status_code == 422 and "give since" in no_room.json()["detail"]
