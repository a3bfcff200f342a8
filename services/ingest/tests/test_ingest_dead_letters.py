"""The system's dead letters kept by ingest for the people who run it (``GET /v1/dead-letters``): a device's bad
message dead-lettered by ingest itself, and one from another service, on SQLite with the in-process bus and on
the real Kafka and PostgreSQL."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import DeadLetter
from edgeloop_common.settings import CommonSettings
from edgeloop_ingest.adapters.dead_letters import SqlDeadLetterRepository
from edgeloop_ingest.adapters.samples import SqlSampleRepository, create_sql_engine
from edgeloop_ingest.app import create_app
from edgeloop_ingest.dead_letters import KeptDeadLetter
from edgeloop_ingest.settings import Settings
from fastapi.testclient import TestClient

from tests.helpers import eventually


def letter(reason: str, *, site: str | None = "site-a", service: str = "inference-gateway") -> DeadLetter:
    return DeadLetter(
        reason=reason,
        error_type="PermanentError",
        service=service,
        attempts=3,
        original_topic="edgeloop.images.received.v1",
        original_value_b64=base64.b64encode(b"{}").decode(),
        original_size_bytes=2,
        site_id=site,
        device_id="cam-1" if site else None,
    )


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, InProcessBus]]:
    bus = InProcessBus(source="test")
    settings = Settings(
        mqtt_enabled=False,
        common=CommonSettings(mode="standalone", data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'i.db'}"),
    )
    with TestClient(create_app(settings, bus=bus)) as test_client:
        test_client.portal.call(bus.start)  # type: ignore[union-attr]
        yield test_client, bus
        test_client.portal.call(bus.stop)  # type: ignore[union-attr]


def test_a_bad_upload_and_another_services_dead_letter_are_listed_newest_first_per_site(
    client: tuple[TestClient, InProcessBus],
) -> None:
    test_client, bus = client
    refused = test_client.post("/v1/samples", params={"site_id": "site-a", "device_id": "cam-1"}, content=b"junk")
    assert refused.status_code == 415  # an HTTP client hears why; nothing is dead-lettered for it
    test_client.portal.call(bus.publish, letter("the model refused it"))  # type: ignore[union-attr]
    test_client.portal.call(bus.publish, letter("no site to it", site=None, service="drift"))  # type: ignore[union-attr]
    test_client.portal.call(bus.drain)  # type: ignore[union-attr]

    everything = test_client.get("/v1/dead-letters").json()
    at_site = test_client.get("/v1/dead-letters", params={"site_id": "site-a"}).json()
    assert everything["count"] == 2 and [d["reason"] for d in everything["dead_letters"]] == [
        "no site to it",
        "the model refused it",
    ]
    assert at_site["count"] == 1 and at_site["dead_letters"][0]["service"] == "inference-gateway"
    assert test_client.get("/v1/dead-letters", params={"limit": 0}).status_code == 422


def test_only_the_newest_are_kept_and_a_redelivery_is_kept_once(tmp_path: Path) -> None:
    engine = create_sql_engine(f"sqlite:///{tmp_path / 'i.db'}")
    SqlSampleRepository(engine)  # the schema
    repository = SqlDeadLetterRepository(engine, kept=3)
    for n in range(5):
        assert repository.add(KeptDeadLetter.of(letter(f"reason {n}"), event_id=f"event-{n}"))
    assert not repository.add(KeptDeadLetter.of(letter("reason 4"), event_id="event-4"))
    assert repository.count(site_id=None) == 3
    assert [d.reason for d in repository.newest(site_id="site-a", limit=10)] == ["reason 4", "reason 3", "reason 2"]


@pytest.mark.kafka
@pytest.mark.mqtt
@pytest.mark.postgres
async def test_a_device_message_ingest_dead_letters_is_listed_on_kafka_and_postgresql(
    tmp_path: Path,
    kafka_bootstrap: str,
    mqtt_broker: tuple[str, int],
    postgres_url: str,
    topic_prefix: str,
) -> None:
    from edgeloop_common.mqtt_asyncio import AsyncMqttClient

    from tests.e2e.loop_harness import FreshSchemas

    site = f"site-{uuid.uuid4().hex[:6]}"
    schemas = FreshSchemas(postgres_url, ["ingest"])
    with schemas.created():
        settings = Settings(
            mqtt_client_id=f"ingest-{uuid.uuid4().hex[:8]}",
            mqtt_session_expiry_s=30,
            common=CommonSettings(
                mode="distributed",
                kafka_bootstrap_servers=kafka_bootstrap,
                mqtt_host=mqtt_broker[0],
                mqtt_port=mqtt_broker[1],
                database_url=schemas.url("ingest"),
                data_dir=tmp_path,
                topic_prefix=topic_prefix,
            ),
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest")
            device = AsyncMqttClient(*mqtt_broker)
            await device.connect()
            await device.publish(f"dt/edgeloop/{site}/cam-7/image", b"GIF89a not a picture we take", qos=1)
            await device.close()

            async def listed() -> bool:
                body = (await http.get("/v1/dead-letters", params={"site_id": site})).json()
                return bool(body["count"] == 1)

            await eventually(listed, what="the dead letter listed", timeout_s=30)
            kept = (await http.get("/v1/dead-letters", params={"site_id": site})).json()["dead_letters"][0]
            await http.aclose()
    topic = f"dt/edgeloop/{site}/cam-7/image"
    assert (kept["service"], kept["device_id"], kept["mqtt_topic"]) == ("ingest", "cam-7", topic)
    assert kept["reason"]
