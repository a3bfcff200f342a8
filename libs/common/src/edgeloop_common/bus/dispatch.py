"""Running one handler on one delivered event: idempotency, retries, dead letters.

Both bus implementations call :func:`deliver`, so the delivery rules are the
same in standalone mode and over Kafka.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from edgeloop_common.bus.base import (
    BusStats,
    BusUnavailableError,
    EventContext,
    PermanentError,
    RetryPolicy,
    Subscription,
)
from edgeloop_common.events import DeadLetter, Event
from edgeloop_common.idempotency import ProcessedEventStore

log = logging.getLogger(__name__)

Outcome = Literal["handled", "duplicate", "dead_lettered"]


def dead_letter_for(
    *,
    reason: str,
    error: BaseException | None,
    service: str,
    attempts: int,
    topic: str,
    key: str | None,
    value: bytes,
    headers: dict[str, str],
    device_id: str | None = None,
    site_id: str | None = None,
    mqtt_topic: str | None = None,
) -> DeadLetter:
    return DeadLetter(
        reason=reason,
        error_type=type(error).__name__ if error is not None else "Rejected",
        service=service,
        attempts=attempts,
        original_topic=topic,
        original_key=key,
        original_value_b64=base64.b64encode(value).decode(),
        original_headers=headers,
        original_size_bytes=len(value),
        device_id=device_id,
        site_id=site_id,
        mqtt_topic=mqtt_topic,
    )


def infrastructure_away(error: BaseException) -> bool:
    """Whether ``error`` says the bus's or the service's own infrastructure is unreachable (Kafka, the database's
    connection), not that the event cannot be handled. Other services being away (a model server) still ends in
    a dead letter after the retries."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(error, BusUnavailableError | OperationalError | InterfaceError)


async def deliver(
    subscription: Subscription,
    event: Event,
    context: EventContext,
    *,
    retry: RetryPolicy,
    processed: ProcessedEventStore,
    stats: BusStats,
    service: str,
    raw_value: bytes,
    raw_headers: dict[str, str],
    publish_dead_letter: Callable[[DeadLetter], Awaitable[object]],
) -> Outcome:
    """Run the handler until it succeeds, its error is permanent, or attempts run out."""
    if await processed.seen(subscription.group, context.event_id):
        stats.duplicates_skipped += 1
        return "duplicate"
    attempt = 1
    while True:
        try:
            await subscription.handler(event, dataclasses.replace(context, attempt=attempt))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure is retried, dead-lettered or (the bus away) raised: never swallowed
            permanent = isinstance(exc, PermanentError)
            if not permanent and attempt < retry.max_attempts:
                stats.retried += 1
                log.warning(
                    "handler %s failed on %s (attempt %d/%d), retrying: %s",
                    subscription.group,
                    context.event_id,
                    attempt,
                    retry.max_attempts,
                    exc,
                )
                await asyncio.sleep(retry.backoff_s(attempt))
                attempt += 1
                continue
            if infrastructure_away(exc):
                # Kafka or the database away, not the event: a dead letter would lose an event that only an outage
                # failed (tests/chaos). The consumer reads the record again after a backoff, as when it cannot
                # finish one.
                raise
            reason = str(exc) or type(exc).__name__
            if isinstance(event, DeadLetter):
                # A dead letter of a dead letter would come straight back to this handler: no loop, say it loudly.
                log.error(
                    "handler %s failed on dead letter %s; not dead-lettered again: %s",
                    subscription.group,
                    context.event_id,
                    reason,
                )
                stats.dead_lettered += 1
                await processed.mark(subscription.group, context.event_id)
                return "dead_lettered"
            log.error(
                "dead-lettering %s from %s after %d attempt(s): %s", context.event_id, context.topic, attempt, reason
            )
            await publish_dead_letter(
                dead_letter_for(
                    reason=f"{subscription.group}: {reason}",
                    error=_named_error(exc),
                    service=service,
                    attempts=attempt,
                    topic=context.topic,
                    key=context.key,
                    value=raw_value,
                    headers=raw_headers,
                    device_id=getattr(event, "device_id", None),
                    site_id=getattr(event, "site_id", None),
                    mqtt_topic=getattr(event, "mqtt_topic", None),
                )
            )
            stats.dead_lettered += 1
            await processed.mark(subscription.group, context.event_id)
            return "dead_lettered"
        stats.handled += 1
        await processed.mark(subscription.group, context.event_id)
        return "handled"


def _named_error(exc: Exception) -> BaseException:
    """The error a dead letter names: a handler maps a domain error to the bus with ``raise PermanentError(...)
    from error``, and the dead letter names that domain error (``BlobIntegrityError``), not ``PermanentError``."""
    if isinstance(exc, PermanentError) and exc.__cause__ is not None:
        return exc.__cause__
    return exc
