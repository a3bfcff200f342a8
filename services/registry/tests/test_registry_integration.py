"""The registry in distributed mode: PostgreSQL (a fresh schema) and Kafka (a fresh topic prefix). Its events are
read back by a plain aiokafka consumer and parsed by the CloudEvents SDK, clients that are not EdgeLoop's."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cloudevents.v1.kafka import KafkaMessage, from_binary
from edgeloop_common import topics
from edgeloop_common.settings import CommonSettings
from edgeloop_registry.app import create_app
from edgeloop_registry.settings import Settings
from registry_testing import fresh_postgres_url, version_body

from tests.helpers import delete_topics, read_topic_records

__all__ = ["fresh_postgres_url"]  # a fixture, imported for pytest

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]


@pytest.fixture
async def registry(
    fresh_postgres_url: str, kafka_bootstrap: str, topic_prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        outbox_poll_interval_s=0.2,
        common=CommonSettings(
            mode="distributed",
            kafka_bootstrap_servers=kafka_bootstrap,
            database_url=fresh_postgres_url,
            topic_prefix=topic_prefix,
        ),
    )
    app = create_app(settings)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry") as http,
        ):
            yield http
    finally:
        await delete_topics(kafka_bootstrap, topic_prefix)


def cloud_events(records: list[Any]) -> list[Any]:
    return [
        from_binary(KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value))
        for record in records
    ]


async def test_register_promote_refuse_and_roll_back_seen_on_kafka(
    registry: httpx.AsyncClient, kafka_bootstrap: str, topic_prefix: str
) -> None:
    assert (await registry.get("/readyz")).json() == {"ready": True, "checks": {"database": "ok", "bus": "ok"}}
    created = await registry.post("/v1/models", json={"name": "catdog", "description": "cats and dogs"})
    assert created.status_code == 201, created.text

    body = version_body(0.70, model="catdog")
    assert (await registry.post("/v1/models/catdog/versions", json=body)).json()["version"] == 1
    body = version_body(0.80, model="catdog", baseline={"version": 1, "accuracy": 0.70})
    assert (await registry.post("/v1/models/catdog/versions", json=body)).json()["version"] == 2

    promote = {"reason": "evaluated", "actor": "trainer"}
    first = (await registry.post("/v1/models/catdog/promotions", json={"version": 1, **promote})).json()
    second = (await registry.post("/v1/models/catdog/promotions", json={"version": 2, **promote})).json()
    assert first["promoted"] and second["promoted"] and second["previous_version"] == 1

    worse_body = version_body(0.65, model="catdog", baseline={"version": 2, "accuracy": 0.80})
    assert (await registry.post("/v1/models/catdog/versions", json=worse_body)).json()["version"] == 3
    worse = (await registry.post("/v1/models/catdog/promotions", json={"version": 3, **promote})).json()
    assert not worse["promoted"]
    assert "0.6500" in worse["decision"] and "0.8000" in worse["decision"]

    rollback = {"reason": "night images misclassified", "actor": "operator"}
    rolled = await registry.post("/v1/models/catdog/rollback", json=rollback)
    assert rolled.status_code == 200 and (rolled.json()["version"], rolled.json()["previous_version"]) == (1, 2)
    assert (await registry.get("/v1/models/catdog")).json()["production_version"] == 1

    registered = await read_topic_records(kafka_bootstrap, f"{topic_prefix}{topics.MODELS_REGISTERED}", count=3)
    promoted = await read_topic_records(kafka_bootstrap, f"{topic_prefix}{topics.MODELS_PROMOTED}", count=3)

    registered_events = cloud_events(registered)
    assert [event["type"] for event in registered_events] == ["io.edgeloop.models.registered.v1"] * 3
    assert {event["source"] for event in registered_events} == {"registry"}
    assert [event.get_data()["version"] for event in registered_events] == [1, 2, 3]
    assert registered_events[1].get_data()["metrics"]["baseline"] == {"version": 1, "accuracy": 0.70}
    assert registered_events[0].get_data()["dataset_snapshot_id"] == "snap-0123456789abcdef"

    promoted_events = cloud_events(promoted)
    assert [event["type"] for event in promoted_events] == ["io.edgeloop.models.promoted.v1"] * 3
    # In order; the refused candidate (version 3) announced nothing.
    assert [(e.get_data()["version"], e.get_data()["previous_version"]) for e in promoted_events] == [
        (1, None),
        (2, 1),
        (1, 2),
    ]
    last = promoted_events[2].get_data()
    assert (last["reason"], last["promoted_by"], last["alias"]) == (rollback["reason"], "operator", "production")
    assert all(record.key == b"catdog" for record in promoted)
    event_ids = [event["id"] for event in registered_events + promoted_events]
    assert len(set(event_ids)) == 6

    history = (await registry.get("/v1/models/catdog/aliases/production/history")).json()
    assert [(m["kind"], m["from_version"], m["to_version"]) for m in history] == [
        ("rollback", 2, 1),
        ("promotion", 1, 2),
        ("promotion", None, 1),
    ]
    assert json.loads(promoted[0].value)["model_name"] == "catdog"
