"""Commands to devices: ``cmd/edgeloop/{site}/{device}/capture`` ("take a picture now"), published on the bridge's
MQTT connection, so that the one service that talks MQTT to devices stays the one that does.

A device answers a capture command by publishing its next picture on its image topic, which arrives through the
bridge like any other picture (docs/ingest.md, "Device commands").
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from edgeloop_common import topics
from edgeloop_common.events import utc_now

CAPTURE_ACK_TIMEOUT_S = 5.0
_ID = re.compile(rf"^{topics.ID_PATTERN}$")


class DeviceCommandError(Exception):
    """Base of the device commands' errors."""


class InvalidDeviceIdError(DeviceCommandError):
    """A site or device id that cannot stand in a topic level."""


class CommandsUnavailableError(DeviceCommandError):
    """No MQTT connection to publish on (MQTT is off, or the broker did not acknowledge in time)."""


class CommandPublisher(Protocol):
    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1) -> Awaitable[None]: ...


@dataclass(frozen=True)
class CaptureRequested:
    site_id: str
    device_id: str
    topic: str
    requested_at: datetime
    requested_by: str


async def request_capture(
    publisher: CommandPublisher | None,
    site_id: str,
    device_id: str,
    *,
    requested_by: str,
    timeout_s: float = CAPTURE_ACK_TIMEOUT_S,
) -> CaptureRequested:
    """Publish a capture command (QoS 1) and return once the broker acknowledged it."""
    for what, value in (("site", site_id), ("device", device_id)):
        if not _ID.match(value):
            raise InvalidDeviceIdError(f"{what} id {value!r} is not an id (letters, digits, '_', '.', '-'; 1-64)")
    if publisher is None:
        raise CommandsUnavailableError("MQTT is off in this ingest (EDGELOOP_INGEST_MQTT_ENABLED=false)")
    topic = topics.mqtt_topic(topics.MQTT_CAPTURE, site=site_id, device=device_id)
    requested_at = utc_now()
    payload = json.dumps({"requested_at": requested_at.isoformat(), "requested_by": requested_by})
    try:
        async with asyncio.timeout(timeout_s):
            await publisher.publish(topic, payload, qos=1)
    except TimeoutError as exc:
        raise CommandsUnavailableError(f"the MQTT broker did not acknowledge {topic} within {timeout_s:g}s") from exc
    except Exception as exc:  # the driver's MqttUnavailableError: refused by paho
        raise CommandsUnavailableError(f"{topic} could not be published: {exc}") from exc
    return CaptureRequested(site_id, device_id, topic, requested_at, requested_by)
