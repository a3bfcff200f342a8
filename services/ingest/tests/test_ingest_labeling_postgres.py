"""Labeling in distributed mode: PostgreSQL (a fresh schema per test) and Kafka (a fresh topic prefix per test).

What an operator observes: a gateway's InferenceCompleted marks a sample hard, the sample waits in the
labeling queue, a label over HTTP takes it out and puts a SampleLabeled on Kafka; and a database of the
previous schema is upgraded in place, by replicas starting together, with its data kept.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from edgeloop_common import topics
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.events import BlobRef, InferenceCompleted
from edgeloop_common.settings import CommonSettings
from edgeloop_ingest.adapters.dead_letters import dead_letters
from edgeloop_ingest.adapters.samples import SqlSampleRepository, create_sql_engine, metadata
from edgeloop_ingest.adapters.schema import MIGRATIONS
from edgeloop_ingest.adapters.uplink_records import uplink_records
from edgeloop_ingest.app import create_app
from edgeloop_ingest.settings import Settings
from ingest_testing import (
    OLD_ROW,
    catdog_photos,
    create_previous_schema,
    tagged_jpeg,
)
from sqlalchemy import Engine, inspect

from tests.helpers import delete_topics, eventually, read_topic_records, start_replicas_together

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]


@pytest.fixture
def engine(fresh_postgres_url: str) -> Iterator[Engine]:
    engine = create_sql_engine(fresh_postgres_url)
    yield engine
    engine.dispose()


@dataclass
class Running:
    http: httpx.AsyncClient
    gateway: KafkaBus  # plays the inference gateway: publishes InferenceCompleted
    prefix: str


@asynccontextmanager
async def running_ingest(
    tmp_path: Path, database_url: str, kafka_bootstrap: str, prefix: str
) -> AsyncIterator[Running]:
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
    app = create_app(settings)  # owns its KafkaBus: consumes InferenceCompleted in group ingest-predictions
    gateway = KafkaBus(bootstrap_servers=kafka_bootstrap, source="inference-gateway", topic_prefix=prefix)
    await gateway.start()
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as http:
                yield Running(http=http, gateway=gateway, prefix=prefix)
    finally:
        await gateway.stop()
        await delete_topics(kafka_bootstrap, prefix)


async def upload(http: httpx.AsyncClient, photo: bytes, *, device: str, site: str) -> dict[str, Any]:
    response = await http.post("/v1/samples", params={"device_id": device, "site_id": site}, content=photo)
    assert response.status_code == 201, response.text
    return dict(response.json())


def inference(sample: dict[str, Any], scores: dict[str, float], *, reason: str | None = None) -> InferenceCompleted:
    top = max(scores, key=scores.__getitem__)
    return InferenceCompleted(
        sample_id=sample["sample_id"],
        device_id=sample["device_id"],
        site_id=sample["site_id"],
        image=BlobRef(
            sha256=sample["sha256"],
            uri=sample["blob_uri"],
            content_type=sample["content_type"],
            size_bytes=sample["size_bytes"],
        ),
        model_name="edgeloop-classifier",
        model_version=5,
        scores=scores,
        top_label=top,
        confidence=scores[top],
        latency_ms=20.0,
        hard_example=reason is not None,
        hard_example_reason=reason,
        completed_at=datetime.now(UTC),
    )


async def test_hard_example_to_queue_to_label_to_kafka(
    tmp_path: Path, fresh_postgres_url: str, kafka_bootstrap: str, topic_prefix: str, catdog_train_dir: Path
) -> None:
    site = f"site-{uuid.uuid4().hex[:8]}"
    photos = catdog_photos(catdog_train_dir)
    async with running_ingest(tmp_path, fresh_postgres_url, kafka_bootstrap, topic_prefix) as ingest:
        http = ingest.http
        hard = await upload(http, tagged_jpeg(photos[0], "pg-hard"), device="cam-1", site=site)
        easy = await upload(http, tagged_jpeg(photos[3], "pg-easy"), device="cam-2", site=site)
        await ingest.gateway.publish(inference(hard, {"cat": 0.58, "dog": 0.42}, reason="confidence 0.58 < 0.80"))
        await ingest.gateway.publish(inference(easy, {"cat": 0.04, "dog": 0.96}))

        async def predicted() -> bool:
            listed = (await http.get("/v1/samples", params={"site_id": site, "min_confidence": 0.0})).json()
            return len(listed["samples"]) == 2

        await eventually(predicted, what="both predictions stored from Kafka", timeout_s=30, interval_s=0.2)
        queue = (await http.get("/v1/labeling/queue", params={"site_id": site})).json()
        assert [s["sample_id"] for s in queue["samples"]] == [hard["sample_id"]]
        [queued] = queue["samples"]
        assert (queued["hard_example_reason"], queued["predicted_label"], queued["model_version"]) == (
            "confidence 0.58 < 0.80",
            "cat",
            5,
        )
        assert queued["scores"] == pytest.approx({"cat": 0.58, "dog": 0.42})

        # filters on PostgreSQL (boolean, float and time comparisons, the cursor)
        def ids(body: dict[str, Any]) -> list[str]:
            return [s["sample_id"] for s in body["samples"]]

        assert ids((await http.get("/v1/samples", params={"site_id": site, "hard_example": "false"})).json()) == [
            easy["sample_id"]
        ]
        assert ids((await http.get("/v1/samples", params={"site_id": site, "predicted_label": "dog"})).json()) == [
            easy["sample_id"]
        ]
        assert ids((await http.get("/v1/samples", params={"site_id": site, "max_confidence": 0.6})).json()) == [
            hard["sample_id"]
        ]
        assert ids((await http.get("/v1/samples", params={"site_id": site, "since": easy["received_at"]})).json()) == [
            easy["sample_id"]
        ]
        first = (await http.get("/v1/samples", params={"site_id": site, "limit": 1})).json()
        second = (await http.get("/v1/samples", params={"site_id": site, "limit": 1, "after": first["next"]})).json()
        assert ids(first) + ids(second) == [hard["sample_id"], easy["sample_id"]] and second["next"] is None

        labeled = await http.put(f"/v1/samples/{hard['sample_id']}/label", json={"label": "dog", "labeled_by": "ann"})
        assert labeled.status_code == 200, labeled.text
        assert labeled.json()["label"] == "dog"
        assert (await http.get("/v1/labeling/queue", params={"site_id": site})).json()["samples"] == []

        batch = await http.post(
            "/v1/labels",
            json={
                "labeled_by": "ann",
                "labels": [
                    {"sample_id": easy["sample_id"], "label": "dog"},
                    {"sample_id": str(uuid.uuid4()), "label": "cat"},
                    {"sample_id": hard["sample_id"], "label": "a cat"},
                ],
            },
        )
        assert batch.status_code == 200, batch.text
        assert batch.json()["labeled"] == 1 and len(batch.json()["errors"]) == 2

        records = await read_topic_records(
            kafka_bootstrap, f"{topic_prefix}{topics.SAMPLES_LABELED}", count=2, timeout_s=30
        )
    by_sample = {json.loads(record.value)["sample_id"]: record for record in records}  # partitions: by device
    assert set(by_sample) == {hard["sample_id"], easy["sample_id"]}
    announced = json.loads(by_sample[hard["sample_id"]].value)
    assert (announced["label"], announced["predicted_label"], announced["labeled_by"]) == ("dog", "cat", "ann")
    assert announced["image"]["sha256"] == hard["sha256"] and announced["site_id"] == site
    assert json.loads(by_sample[easy["sample_id"]].value)["predicted_label"] == "dog"
    headers = {key: value.decode() for key, value in by_sample[hard["sample_id"]].headers}
    assert headers["ce_type"] == "io.edgeloop.samples.labeled.v1" and headers["ce_source"] == "ingest"
    assert by_sample[hard["sample_id"]].key.decode() == "cam-1"  # keyed by device, as every device event


def test_replicas_starting_together_upgrade_a_previous_schema_database_once(
    engine: Engine, fresh_postgres_url: str
) -> None:
    create_previous_schema(engine)
    assert MIGRATIONS.current_revision(engine) is None
    start_replicas_together(fresh_postgres_url, MIGRATIONS.upgrade, create_sql_engine=create_sql_engine)
    assert MIGRATIONS.current_revision(engine) == MIGRATIONS.head_revision() == "0005"

    columns = {column["name"] for column in inspect(engine).get_columns("ingest_samples")}
    assert {"label", "labeled_by", "labeled_at", "predicted_label", "hard_example", "scores"} <= columns
    assert {"ingest_uplink_records", "ingest_dead_letters"} <= set(inspect(engine).get_table_names())
    tables = {"ingest_samples", uplink_records.name, dead_letters.name}
    assert MIGRATIONS.schema_differences(engine, metadata, tables=tables) == []

    kept = SqlSampleRepository(engine).get_sample(str(OLD_ROW["sample_id"]))
    assert kept is not None
    assert (kept.record.device_id, kept.record.received_at, kept.label, kept.prediction) == (
        "cam-old",
        OLD_ROW["received_at"],
        None,
        None,
    )
