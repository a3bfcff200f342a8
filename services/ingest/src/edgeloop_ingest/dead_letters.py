"""The system's dead letters as the people who run it see them: what could not be handled, where, and why.

Every service's bus publishes a :class:`~edgeloop_common.events.DeadLetter` for a message it gives up on (a device's
bad picture, an event no handler can take). Ingest keeps the newest :data:`KEPT` of them (without the original
bytes: the Kafka topic keeps those for a replay) so the console and ``GET /v1/dead-letters`` can show them per
site. Nothing here knows about HTTP or SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from edgeloop_common.events import DeadLetter

KEPT = 10_000  # the newest dead letters kept; older ones are deleted as new ones come (the topic keeps all)


@dataclass(frozen=True)
class KeptDeadLetter:
    event_id: str
    service: str
    reason: str
    error_type: str
    original_topic: str
    site_id: str | None
    device_id: str | None
    mqtt_topic: str | None
    attempts: int
    size_bytes: int
    failed_at: datetime

    @classmethod
    def of(cls, letter: DeadLetter, event_id: str) -> KeptDeadLetter:
        return cls(
            event_id=event_id,
            service=letter.service,
            reason=letter.reason,
            error_type=letter.error_type,
            original_topic=letter.original_topic,
            site_id=letter.site_id,
            device_id=letter.device_id,
            mqtt_topic=letter.mqtt_topic,
            attempts=letter.attempts,
            size_bytes=letter.original_size_bytes,
            failed_at=letter.failed_at,
        )


class DeadLetterRepository(Protocol):
    def add(self, letter: KeptDeadLetter) -> bool:
        """Keep ``letter`` unless its event id is kept already (a redelivery); True when this call kept it."""
        ...

    def newest(self, *, site_id: str | None, limit: int) -> list[KeptDeadLetter]: ...

    def count(self, *, site_id: str | None) -> int: ...
