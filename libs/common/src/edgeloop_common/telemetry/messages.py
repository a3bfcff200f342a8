"""A sensor's telemetry message, checked: the one set of rules ingest (``edgeloop_ingest.validation``) and the
edge agent (whose image installs only ``edgeloop-common``) both apply (docs/telemetry.md, docs/ingest.md).

A message is one sample -- ``{"readings": {name: number|string|bool}, "measured_at": ISO time?,
"machine_event": "failure"|"maintenance"?}``, or a flat object of readings -- or a batch of samples a device
collected before sending: ``{"samples": [{"measured_at": ISO time, "readings": {...}, "machine_event": ...?},
...]}`` (1 to ``MAX_SAMPLES``, oldest first, each with its time). A batch saves the device and the whole pipeline
the per-message cost (an MQTT message, its acknowledgement); it is taken or refused whole: one bad sample refuses
the message, with the sample's index in the reason. A message that breaks the rules raises
:class:`InvalidTelemetryError` with ingest's rejection code and the reason in words.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast, get_args

from edgeloop_common.events import JsonScalar, MachineEvent

MAX_READINGS = 256
MAX_SAMPLES = 1000
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


def parse_telemetry_samples(payload: bytes, *, max_bytes: int = MAX_TELEMETRY_BYTES) -> list[TelemetryMessage]:
    """The message's samples, oldest first: one, or a batch's."""
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
    if "samples" in document:
        return _batch(document)
    return [_sample(document)]


def _batch(document: dict[str, Any]) -> list[TelemetryMessage]:
    extra = sorted(set(document) - {"samples"})
    if extra:
        raise _bad(f"unexpected field(s) beside 'samples': {extra}")
    samples = document["samples"]
    if not isinstance(samples, list) or not samples:
        raise _bad("'samples' must be a non-empty JSON array of samples")
    if len(samples) > MAX_SAMPLES:
        raise _bad(f"the batch has {len(samples)} samples; the limit is {MAX_SAMPLES}")
    parsed = []
    for index, sample in enumerate(samples):
        try:
            if not isinstance(sample, dict) or "readings" not in sample or "measured_at" not in sample:
                raise _bad("a sample must be a JSON object with 'measured_at' and 'readings'")
            parsed.append(_sample(sample))
        except InvalidTelemetryError as exc:
            raise _bad(f"samples[{index}]: {exc.reason}") from exc
    return parsed


def _sample(document: dict[str, Any]) -> TelemetryMessage:
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
