"""A sensor's telemetry message, checked: what the edge agent takes from its site's devices (docs/telemetry.md).

The rules are ingest's (``edgeloop_ingest.validation.parse_telemetry``, docs/ingest.md), kept here where the edge
agent can reach them (its image installs only ``edgeloop-common``): ``{"readings": {name: number|string|bool},
"measured_at": ISO time?, "machine_event": "failure"|"maintenance"?}``, or a flat object of readings. A message
that breaks them raises :class:`InvalidTelemetryError` with ingest's rejection code and the reason in words.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast, get_args

from edgeloop_common.events import JsonScalar, MachineEvent

MAX_READINGS = 256
MAX_TELEMETRY_BYTES = 64 * 1024
MACHINE_EVENTS: tuple[str, ...] = get_args(MachineEvent)


class InvalidTelemetryError(ValueError):
    """Telemetry that can never be taken; ``code`` is ingest's rejection code (empty, too_large, bad_telemetry)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class TelemetryMessage:
    readings: dict[str, JsonScalar]
    measured_at: datetime | None
    machine_event: MachineEvent | None = None


def parse_telemetry_message(payload: bytes, *, max_bytes: int = MAX_TELEMETRY_BYTES) -> TelemetryMessage:
    if not payload:
        raise InvalidTelemetryError("empty", "empty payload: expected a JSON object of readings")
    if len(payload) > max_bytes:
        raise InvalidTelemetryError("too_large", f"telemetry is {len(payload)} bytes; the limit is {max_bytes} bytes")
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"telemetry is not JSON: {exc}") from exc
    except RecursionError as exc:  # '[[[[...' under the size limit: the parser gives up
        raise _bad("telemetry is JSON nested too deeply (readings are a flat object)") from exc
    if not isinstance(document, dict):
        raise _bad(f"telemetry must be a JSON object, got {type(document).__name__}")
    measured_at = _parse_time(document.get("measured_at"))
    machine_event = _parse_machine_event(document.get("machine_event"))
    if "readings" in document:
        extra = sorted(set(document) - {"readings", "measured_at", "machine_event"})
        if extra:
            raise _bad(f"unexpected field(s) beside 'readings': {extra}")
        raw = document["readings"]
        if not isinstance(raw, dict):
            raise _bad("'readings' must be a JSON object of name: value")
    else:
        raw = {name: value for name, value in document.items() if name not in {"measured_at", "machine_event"}}
    return TelemetryMessage(_check_readings(raw), measured_at, machine_event)


def _bad(reason: str) -> InvalidTelemetryError:
    return InvalidTelemetryError("bad_telemetry", reason)


def _parse_machine_event(value: Any) -> MachineEvent | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in MACHINE_EVENTS:
        allowed = ", ".join(map(repr, MACHINE_EVENTS))
        raise _bad(f"'machine_event' must be one of {allowed}, got {json.dumps(value)[:60]}")
    return cast(MachineEvent, value)


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"'measured_at' must be an ISO 8601 string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise _bad(f"'measured_at' {value!r} is not an ISO 8601 time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _check_readings(readings: dict[str, Any]) -> dict[str, JsonScalar]:
    if not readings:
        raise _bad("telemetry has no readings")
    if len(readings) > MAX_READINGS:
        raise _bad(f"telemetry has {len(readings)} readings; the limit is {MAX_READINGS}")
    for name, value in readings.items():
        if not name or len(name) > 128:
            raise _bad(f"reading name {name!r} must be 1-128 characters")
        if isinstance(value, float) and not math.isfinite(value):
            raise _bad(f"reading {name!r} is {value}, not a finite number")
        if not isinstance(value, str | int | float | bool):
            raise _bad(f"reading {name!r} must be a number, string or boolean, got {json.dumps(value)[:60]}")
    return dict(readings)
