"""A service's subscription table, wired to the bus by ``subscribed``: each handler bound to the running object."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
from common_samples import image_received, telemetry_received
from edgeloop_common.bus.base import EventContext, PermanentError, RetryPolicy
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import ImageReceived, TelemetryReceived
from edgeloop_common.subscriptions import (
    ConsumerGroup,
    SubscriberStoppedError,
    renamed,
    subscribed,
    with_consumer_group_setting,
)
from pydantic_settings import BaseSettings

FAST_RETRY = RetryPolicy(max_attempts=2, initial_backoff_s=0.001, max_backoff_s=0.01)


class Recorder:
    """A service's handlers: methods of one object that holds what they need."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[str] = []

    async def on_image(self, event: ImageReceived, context: EventContext) -> None:
        self.seen.append(f"{self.name}: image {event.sample_id}")

    async def on_telemetry(self, event: TelemetryReceived, context: EventContext) -> None:
        self.seen.append(f"{self.name}: telemetry")


class BadImageError(Exception):
    """A domain error, unrelated to the bus."""


class Strict:
    async def on_image(self, event: ImageReceived, context: EventContext) -> None:
        try:
            raise BadImageError(f"sample {event.sample_id} is 0x0")
        except BadImageError as exc:
            raise PermanentError(str(exc)) from exc


SUBSCRIPTIONS = (
    ConsumerGroup("recorder", {ImageReceived: Recorder.on_image}),
    ConsumerGroup("recorder-telemetry", {TelemetryReceived: Recorder.on_telemetry}),
)


@pytest.fixture
async def bus() -> AsyncIterator[InProcessBus]:
    bus = InProcessBus(source="test", retry=FAST_RETRY)
    yield bus
    await bus.stop()


async def test_every_handler_of_the_table_is_subscribed_in_its_group_and_bound_to_the_object(
    bus: InProcessBus,
) -> None:
    recorder = Recorder("first")
    with subscribed(bus, SUBSCRIPTIONS, recorder):
        await bus.start()
        await bus.publish(image_received(sample_id="s-1"))
        await bus.publish(telemetry_received())
        await bus.drain()

    assert [(s.event_cls, s.group, s.broadcast) for s in bus.subscriptions] == [
        (ImageReceived, "recorder", False),
        (TelemetryReceived, "recorder-telemetry", False),
    ]
    assert recorder.seen == ["first: image s-1", "first: telemetry"]


async def test_after_the_block_the_handlers_no_longer_reach_the_object(bus: InProcessBus) -> None:
    stopped = Recorder("stopped")
    with subscribed(bus, SUBSCRIPTIONS[:1], stopped):
        await bus.start()
    running = Recorder("running")  # the service restarted on the same (shared) bus
    with subscribed(bus, SUBSCRIPTIONS[:1], running):
        await bus.publish(image_received(sample_id="s-2"))
        await bus.drain()

    assert stopped.seen == []
    assert running.seen == ["running: image s-2"]
    [dead] = bus.dead_letters  # the stopped service's subscription retried, then gave the event up
    assert dead.error_type == SubscriberStoppedError.__name__ and "the service has stopped" in dead.reason


async def test_a_permanent_error_raised_from_a_domain_error_names_the_domain_error(bus: InProcessBus) -> None:
    with subscribed(bus, [ConsumerGroup("strict", {ImageReceived: Strict.on_image})], Strict()):
        await bus.start()
        await bus.publish(image_received(sample_id="s-3"))
        await bus.drain()

    [dead] = bus.dead_letters
    assert (dead.attempts, dead.error_type, dead.reason) == (1, "BadImageError", "strict: sample s-3 is 0x0")


async def test_broadcast_groups_are_subscribed_as_broadcast(bus: InProcessBus) -> None:
    with subscribed(bus, [ConsumerGroup("routes", {ImageReceived: Recorder.on_image}, broadcast=True)], Recorder("r")):
        pass
    assert [(s.group, s.broadcast) for s in bus.subscriptions] == [("routes", True)]


def test_renamed_renames_only_the_groups_named() -> None:
    groups = renamed(SUBSCRIPTIONS, {"recorder": "recorder-blue"})
    assert [group.name for group in groups] == ["recorder-blue", "recorder-telemetry"]
    assert groups[0].handlers == SUBSCRIPTIONS[0].handlers


class _GroupSetting(BaseSettings):
    consumer_group: str = "unused-default"


def test_the_consumer_group_setting_renames_the_first_group_only_where_an_operator_set_it() -> None:
    assert with_consumer_group_setting(SUBSCRIPTIONS, _GroupSetting()) == SUBSCRIPTIONS
    groups = with_consumer_group_setting(SUBSCRIPTIONS, _GroupSetting(consumer_group="recorder-green"))
    assert [group.name for group in groups] == ["recorder-green", "recorder-telemetry"]


class BatchRecorder:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    async def on_readings(self, deliveries: Sequence[tuple[TelemetryReceived, EventContext]]) -> None:
        self.batches.append([int(event.readings["seq"] or 0) for event, _ in deliveries])


async def test_batch_handlers_are_subscribed_as_batches_and_bound_to_the_object(bus: InProcessBus) -> None:
    recorder = BatchRecorder()
    groups = [ConsumerGroup("scorer", batch_handlers={TelemetryReceived: BatchRecorder.on_readings})]
    with subscribed(bus, groups, recorder):
        await bus.start()
        for seq in range(3):
            await bus.publish(telemetry_received(seq=seq))
        await bus.drain()
    [subscription] = bus.subscriptions
    assert (subscription.event_cls, subscription.group, subscription.batch_handler is not None) == (
        TelemetryReceived,
        "scorer",
        True,
    )
    assert recorder.batches == [[0], [1], [2]]  # the in-process bus hands over one event at a time

    await bus.publish(telemetry_received(seq=3))  # after the block: the stopped service is not reached
    await bus.drain()
    assert recorder.batches == [[0], [1], [2]]
    [dead] = bus.dead_letters
    assert dead.error_type == SubscriberStoppedError.__name__
