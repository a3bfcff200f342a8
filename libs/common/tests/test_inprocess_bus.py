"""The in-process bus keeps the delivery rules of the Kafka bus: order, retries, dead letters, idempotency."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import pytest
from common_samples import image_received, telemetry_received
from edgeloop_common.bus.base import EventContext, PermanentError, RetryPolicy
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import DeadLetter, ImageReceived, TelemetryReceived

FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.01)


@pytest.fixture
async def bus() -> AsyncIterator[InProcessBus]:
    bus = InProcessBus(source="test", retry=FAST_RETRY)
    yield bus
    await bus.stop()


async def test_handlers_see_events_in_publication_order(bus: InProcessBus) -> None:
    seen: list[int] = []

    async def handle(event: TelemetryReceived, context: EventContext) -> None:
        seen.append(int(event.readings["seq"] or 0))

    bus.subscribe(TelemetryReceived, handle, group="order")
    await bus.start()
    for seq in range(50):
        await bus.publish(telemetry_received(seq=seq))
    await bus.drain()

    assert seen == list(range(50))


async def test_each_group_gets_every_event(bus: InProcessBus) -> None:
    seen: dict[str, list[str]] = {"a": [], "b": []}

    async def handle_a(event: ImageReceived, context: EventContext) -> None:
        seen["a"].append(event.sample_id)

    async def handle_b(event: ImageReceived, context: EventContext) -> None:
        seen["b"].append(event.sample_id)

    bus.subscribe(ImageReceived, handle_a, group="a")
    bus.subscribe(ImageReceived, handle_b, group="b")
    await bus.start()
    await bus.publish(image_received(sample_id="s-1"))
    await bus.drain()

    assert seen == {"a": ["s-1"], "b": ["s-1"]}


async def test_a_failing_handler_is_retried_then_succeeds_once(bus: InProcessBus) -> None:
    attempts: list[int] = []
    effects: list[str] = []

    async def flaky(event: ImageReceived, context: EventContext) -> None:
        attempts.append(context.attempt)
        if context.attempt < 3:
            raise RuntimeError("model server not ready")
        effects.append(event.sample_id)

    bus.subscribe(ImageReceived, flaky, group="flaky")
    await bus.start()
    await bus.publish(image_received())
    await bus.drain()

    assert attempts == [1, 2, 3]
    assert effects == ["s-0001"]
    assert bus.dead_letters == []
    assert bus.stats.retried == 2


async def test_retries_run_out_then_a_dead_letter_and_the_next_event_is_handled(bus: InProcessBus) -> None:
    handled: list[str] = []

    async def broken_for_one(event: ImageReceived, context: EventContext) -> None:
        if event.sample_id == "s-bad":
            raise RuntimeError("disk full")
        handled.append(event.sample_id)

    bus.subscribe(ImageReceived, broken_for_one, group="thumbnails")
    await bus.start()
    bad_id = await bus.publish(image_received(sample_id="s-bad"))
    await bus.publish(image_received(sample_id="s-good"))
    await bus.drain()

    assert handled == ["s-good"]
    [dead] = bus.dead_letters
    assert dead.reason == "thumbnails: disk full"
    assert dead.error_type == "RuntimeError"
    assert dead.attempts == 3
    assert dead.service == "test"
    assert dead.original_topic == ImageReceived.topic
    assert dead.original_headers["ce_id"] == bad_id
    assert (dead.device_id, dead.site_id, dead.mqtt_topic) == ("cam-1", "site-a", "dt/edgeloop/site-a/cam-1/image")
    assert json.loads(base64.b64decode(dead.original_value_b64))["sample_id"] == "s-bad"


async def test_a_permanent_error_is_dead_lettered_at_once(bus: InProcessBus) -> None:
    attempts: list[int] = []

    async def reject(event: ImageReceived, context: EventContext) -> None:
        attempts.append(context.attempt)
        raise PermanentError("width 640 is not a multiple of 7")

    bus.subscribe(ImageReceived, reject, group="strict")
    await bus.start()
    await bus.publish(image_received())
    await bus.drain()

    assert attempts == [1]
    [dead] = bus.dead_letters
    assert (dead.attempts, dead.error_type) == (1, "PermanentError")
    assert dead.reason == "strict: width 640 is not a multiple of 7"


async def test_the_same_event_id_twice_has_one_effect(bus: InProcessBus) -> None:
    effects: list[str] = []

    async def handle(event: ImageReceived, context: EventContext) -> None:
        effects.append(context.event_id)

    bus.subscribe(ImageReceived, handle, group="once")
    await bus.start()
    await bus.publish(image_received(), event_id="evt-42")
    await bus.publish(image_received(), event_id="evt-42")
    await bus.drain()

    assert effects == ["evt-42"]
    assert bus.stats.duplicates_skipped == 1


async def test_a_failing_dead_letter_handler_does_not_loop(bus: InProcessBus) -> None:
    calls: list[str] = []

    async def alert(event: DeadLetter, context: EventContext) -> None:
        calls.append(event.reason)
        raise RuntimeError("pager down")

    async def reject(event: ImageReceived, context: EventContext) -> None:
        raise PermanentError("bad image")

    bus.subscribe(DeadLetter, alert, group="alerts")
    bus.subscribe(ImageReceived, reject, group="strict")
    await bus.start()
    await bus.publish(image_received())
    await bus.drain()
    await bus.drain()

    assert len(bus.dead_letters) == 1
    assert calls == ["strict: bad image"] * FAST_RETRY.max_attempts
