"""CloudEvents binary-mode encoding of events on Kafka records.

A record's value is the event's JSON body; its attributes travel as headers
(``ce_id``, ``ce_type``, ``ce_source``, ``ce_specversion``, ``ce_time``,
``content-type``) as the CloudEvents Kafka protocol binding defines, and W3C
``traceparent`` travels beside them. The key is the event's partition key
(the device id where there is one).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from edgeloop_common.bus.base import EventContext, Outgoing, PermanentError
from edgeloop_common.events import EVENTS_BY_TYPE, Event
from edgeloop_common.ids import random_uuid_str
from edgeloop_common.tracing import new_traceparent

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class EncodedRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers
    event_id: str


def encode(
    event: Event,
    *,
    source: str,
    key: str | None = None,
    event_id: str | None = None,
    time: datetime | None = None,
    traceparent: str | None = None,
) -> EncodedRecord:
    return _encode(event, source, key, event_id, encode_time(time), traceparent)


def encode_many(outgoing: Sequence[Outgoing], *, source: str) -> list[EncodedRecord]:
    """``encode`` of events published together (``EventBus.enqueue_many``): one ``ce_time`` for them all."""
    time = encode_time()
    return [_encode(item.event, source, item.key, item.event_id, time, item.traceparent) for item in outgoing]


def _encode(
    event: Event, source: str, key: str | None, event_id: str | None, time: bytes, traceparent: str | None
) -> EncodedRecord:
    event_id = event_id or random_uuid_str()
    record_key = key if key is not None else event.partition_key()
    headers: Headers = [
        ("ce_id", event_id.encode()),
        ("ce_type", _ascii(event.event_type)),
        ("ce_source", _ascii(source)),
        ("ce_specversion", _SPEC_VERSION),
        ("ce_time", time),
        ("content-type", _CONTENT_TYPE),
        ("traceparent", (traceparent or new_traceparent()).encode()),
    ]
    if record_key:
        headers.append(("ce_subject", record_key.encode()))
    return EncodedRecord(
        topic=event.topic,
        key=record_key.encode() if record_key else None,
        value=event.model_dump_json().encode(),
        headers=headers,
        event_id=event_id,
    )


def encode_time(time: datetime | None = None) -> bytes:
    """``ce_time`` of ``time`` (now when None): RFC 3339 in UTC with ``Z``. Encoding many records, give them one."""
    return (time or datetime.now(UTC)).isoformat().replace("+00:00", "Z").encode()


_SPEC_VERSION = SPEC_VERSION.encode()
_CONTENT_TYPE = CONTENT_TYPE.encode()


@functools.lru_cache(maxsize=256)
def _ascii(text: str) -> bytes:
    """The few event types and sources, encoded once."""
    return text.encode()


def headers_dict(headers: Headers | None) -> dict[str, str]:
    return {name: _header_text(value) for name, value in headers or []}


def _header_text(value: bytes) -> str:
    # Most headers repeat record after record (type, source, spec version, content type; a batch's time): decoded
    # once each. An id or a traceparent is new every time: decoded, not remembered.
    return _repeated_header_text(value) if len(value) < 36 else value.decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=1024)
def _repeated_header_text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def decode(
    *,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: Headers | None,
    partition: int | None = None,
    offset: int | None = None,
) -> tuple[Event, EventContext]:
    """Parse a Kafka record into its event and context; :class:`PermanentError` if it is not one."""
    attributes = headers_dict(headers)
    missing = [name for name in ("ce_id", "ce_type", "ce_source", "ce_specversion") if name not in attributes]
    if missing:
        raise PermanentError(f"not a CloudEvents binary-mode record: missing header(s) {', '.join(missing)}")
    if attributes["ce_specversion"] != SPEC_VERSION:
        raise PermanentError(f"unsupported CloudEvents specversion {attributes['ce_specversion']!r}")
    event_cls = EVENTS_BY_TYPE.get(attributes["ce_type"])
    if event_cls is None:
        raise PermanentError(f"unknown event type {attributes['ce_type']!r}")
    if value is None:
        raise PermanentError("record has no value")
    try:
        event = event_cls.model_validate_json(value)  # pydantic's own parser: a fraction of json.loads + validate
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(error["type"] == "json_invalid" for error in errors):
            raise PermanentError(f"body is not JSON: {errors[0]['msg']}") from exc
        raise PermanentError(f"body does not match {event_cls.__name__}: {errors}") from exc
    try:
        time = datetime.fromisoformat(attributes["ce_time"]) if "ce_time" in attributes else datetime.now(UTC)
    except ValueError as exc:
        raise PermanentError(f"bad ce_time {attributes['ce_time']!r}") from exc
    context = EventContext(
        event_id=attributes["ce_id"],
        event_type=attributes["ce_type"],
        source=attributes["ce_source"],
        time=time,
        topic=topic,
        key=key.decode("utf-8", errors="replace") if key is not None else None,
        traceparent=attributes.get("traceparent"),
        partition=partition,
        offset=offset,
    )
    return event, context
