"""Our Kafka records are CloudEvents in binary mode, as the official SDK's Kafka binding reads them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.v1 import kafka as ce_kafka_v1
from common_samples import SAMPLE_EVENTS, image_received
from edgeloop_common import topics
from edgeloop_common.bus.base import EventContext
from edgeloop_common.bus.codec import encode
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.events import Event, ImageReceived

from tests.helpers import eventually, read_topic_records

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("event", list(SAMPLE_EVENTS.values()), ids=lambda event: type(event).__name__)
def test_the_sdk_reads_every_event_from_our_headers(event: Event) -> None:
    time = datetime(2025, 11, 22, 9, 15, 0, 250000, tzinfo=UTC)
    record = encode(event, source="ingest", event_id="evt-7", time=time)

    parsed = ce_kafka.from_binary_event(
        ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
    )

    assert parsed.get_id() == "evt-7"
    assert parsed.get_type() == event.event_type
    assert parsed.get_source() == "ingest"
    assert parsed.get_specversion() == "1.0"
    assert parsed.get_time() == time
    assert parsed.get_datacontenttype() == "application/json"
    assert parsed.get_data() == json.loads(event.model_dump_json())
    assert type(event).model_validate(parsed.get_data()) == event
    if record.key is not None:
        assert parsed.get_extension("partitionkey") == record.key.decode()


def test_the_legacy_sdk_api_reads_them_too() -> None:
    record = encode(image_received("cam-4"), source="ingest", event_id="evt-8")
    message = ce_kafka_v1.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)

    parsed = ce_kafka_v1.from_binary(message)

    assert (parsed["id"], parsed["type"], parsed["source"]) == ("evt-8", ImageReceived.event_type, "ingest")
    assert parsed.data["device_id"] == "cam-4"


@pytest.mark.kafka
async def test_records_on_the_broker_parse_with_the_sdk(kafka_bootstrap: str, kafka_topics: str) -> None:
    bus = KafkaBus(bootstrap_servers=kafka_bootstrap, source="ingest", topic_prefix=kafka_topics)
    handled: list[EventContext] = []

    async def handle(event: ImageReceived, context: EventContext) -> None:
        handled.append(context)

    bus.subscribe(ImageReceived, handle, group="contract")
    await bus.start()
    try:
        image = image_received("cam-8")
        event_id = await bus.publish(image, traceparent=TRACEPARENT)
        await eventually(lambda: len(handled) == 1, what="the event handled")
    finally:
        await bus.stop()

    [record] = await read_topic_records(kafka_bootstrap, f"{kafka_topics}{topics.IMAGES_RECEIVED}", count=1)
    parsed = ce_kafka.from_binary_event(
        ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
    )
    assert parsed.get_id() == event_id
    assert parsed.get_type() == "io.edgeloop.images.received.v1"
    assert parsed.get_source() == "ingest"
    assert parsed.get_time() == handled[0].time
    assert parsed.get_extension("partitionkey") == "cam-8"
    assert ImageReceived.model_validate(parsed.get_data()) == image
    assert dict(record.headers)["traceparent"] == TRACEPARENT.encode()
