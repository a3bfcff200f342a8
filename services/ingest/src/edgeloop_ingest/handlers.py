"""Thin: a device message in (MQTT or HTTP) -> the bridge -> acknowledgement out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from edgeloop_common.events import Ingress

from edgeloop_ingest.adapters.mqtt import ReceivedMessage
from edgeloop_ingest.bridge import Bridge
from edgeloop_ingest.service import DeviceMessage, MessageKind, Outcome

_KINDS: dict[str, MessageKind] = {"image": "image", "telemetry": "telemetry"}


def device_message_from_mqtt(topic: str, payload: bytes, *, dup: bool, received_at: datetime) -> DeviceMessage:
    """``dt/edgeloop/{site}/{device}/{image|telemetry}``; the ids are checked by the service (bad ids: a reason)."""
    levels = topic.split("/")
    shaped = len(levels) == 5 and levels[:2] == ["dt", "edgeloop"] and levels[4] in _KINDS
    return DeviceMessage(
        kind=_KINDS[levels[4]] if shaped else "unknown",
        payload=payload,
        ingress="mqtt",
        received_at=received_at,
        device_id=levels[3] if shaped else None,
        site_id=levels[2] if shaped else None,
        mqtt_topic=topic,
        redelivered=dup,
    )


def mqtt_message_handler(bridge: Bridge) -> Callable[[ReceivedMessage], None]:
    """The subscriber's callback: hand the message to the bridge, PUBACK once its outcome is durable."""

    def on_message(received: ReceivedMessage) -> None:
        message = device_message_from_mqtt(
            received.topic, received.payload, dup=received.dup, received_at=datetime.now(UTC)
        )
        ack = received.ack
        bridge.submit(message, lambda _outcome: ack())

    return on_message


async def handle_upload(
    bridge: Bridge, *, payload: bytes, device_id: str | None, site_id: str | None, ingress: Ingress = "http"
) -> Outcome:
    message = DeviceMessage(
        kind="image",
        payload=payload,
        ingress=ingress,
        received_at=datetime.now(UTC),
        device_id=device_id,
        site_id=site_id,
    )
    return await bridge.handle(message)
