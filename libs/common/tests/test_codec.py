"""The CloudEvents binary-mode codec: every event round-trips; what is not an event is a PermanentError."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from common_samples import SAMPLE_EVENTS, image_received
from edgeloop_common.bus.base import PermanentError
from edgeloop_common.bus.codec import Headers, decode, encode
from edgeloop_common.events import Event, ImageReceived
from edgeloop_common.tracing import new_traceparent


def _headers(record_headers: Headers) -> dict[str, bytes]:
    return dict(record_headers)


@pytest.mark.parametrize("event", list(SAMPLE_EVENTS.values()), ids=lambda event: type(event).__name__)
def test_every_event_round_trips_through_a_record(event: Event) -> None:
    time = datetime(2025, 11, 22, 10, 0, 0, 500000, tzinfo=UTC)
    traceparent = new_traceparent()
    record = encode(event, source="ingest", event_id="evt-1", time=time, traceparent=traceparent)

    decoded, context = decode(
        topic=record.topic, key=record.key, value=record.value, headers=record.headers, partition=2, offset=41
    )

    assert decoded == event
    assert type(decoded) is type(event)
    assert record.topic == event.topic
    assert (context.event_id, context.event_type, context.source) == ("evt-1", event.event_type, "ingest")
    assert context.time == time
    assert context.traceparent == traceparent
    assert (context.topic, context.partition, context.offset) == (event.topic, 2, 41)
    assert context.key == (event.partition_key() or None)


def test_record_has_binary_mode_headers_and_device_key() -> None:
    record = encode(image_received("cam-7"), source="ingest")
    headers = _headers(record.headers)

    assert record.key == b"cam-7"
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_type"] == b"io.edgeloop.images.received.v1"
    assert headers["ce_source"] == b"ingest"
    assert headers["content-type"] == b"application/json"
    assert headers["ce_time"].endswith(b"Z")
    assert headers["traceparent"].startswith(b"00-")
    assert json.loads(record.value)["device_id"] == "cam-7"


def test_explicit_key_overrides_partition_key() -> None:
    record = encode(image_received("cam-7"), source="ingest", key="site-a")
    assert record.key == b"site-a"


@pytest.mark.parametrize("missing", ["ce_id", "ce_type", "ce_source", "ce_specversion"])
def test_a_record_missing_a_required_header_is_rejected(missing: str) -> None:
    record = encode(image_received(), source="ingest")
    headers = [(name, value) for name, value in record.headers if name != missing]
    with pytest.raises(PermanentError, match=f"missing header.*{missing}"):
        decode(topic=record.topic, key=record.key, value=record.value, headers=headers)


def test_a_record_without_headers_is_rejected() -> None:
    with pytest.raises(PermanentError, match="not a CloudEvents binary-mode record"):
        decode(topic="edgeloop.images.received.v1", key=None, value=b"\x00\xff garbage", headers=None)


def test_an_unknown_event_type_is_rejected() -> None:
    record = encode(image_received(), source="ingest")
    headers = [(n, b"io.example.unknown.v9" if n == "ce_type" else v) for n, v in record.headers]
    with pytest.raises(PermanentError, match=r"unknown event type 'io\.example\.unknown\.v9'"):
        decode(topic=record.topic, key=record.key, value=record.value, headers=headers)


def test_an_unsupported_specversion_is_rejected() -> None:
    record = encode(image_received(), source="ingest")
    headers = [(n, b"0.3" if n == "ce_specversion" else v) for n, v in record.headers]
    with pytest.raises(PermanentError, match=r"specversion '0\.3'"):
        decode(topic=record.topic, key=record.key, value=record.value, headers=headers)


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe\x00", b""])
def test_a_body_that_is_not_json_is_rejected(body: bytes) -> None:
    record = encode(image_received(), source="ingest")
    with pytest.raises(PermanentError, match="body is not JSON"):
        decode(topic=record.topic, key=record.key, value=body, headers=record.headers)


def test_a_body_that_does_not_match_the_schema_names_the_field() -> None:
    record = encode(image_received(), source="ingest")
    body = json.loads(record.value)
    body["width"] = -3
    with pytest.raises(PermanentError, match=r"does not match ImageReceived.*width"):
        decode(topic=record.topic, key=record.key, value=json.dumps(body).encode(), headers=record.headers)


def test_a_record_without_value_is_rejected() -> None:
    record = encode(image_received(), source="ingest")
    with pytest.raises(PermanentError, match="no value"):
        decode(topic=record.topic, key=record.key, value=None, headers=record.headers)


def test_a_bad_time_header_is_rejected() -> None:
    record = encode(image_received(), source="ingest")
    headers = [(n, b"yesterday" if n == "ce_time" else v) for n, v in record.headers]
    with pytest.raises(PermanentError, match="bad ce_time"):
        decode(topic=record.topic, key=record.key, value=record.value, headers=headers)


def test_events_are_frozen_and_strict() -> None:
    event = image_received()
    with pytest.raises(ValueError, match="frozen"):
        event.width = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="extra"):
        ImageReceived.model_validate({**event.model_dump(), "colour": "red"})
