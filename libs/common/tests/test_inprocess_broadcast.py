"""Broadcast subscriptions on the in-process bus: the events published before the subscription come first."""

from __future__ import annotations

from common_samples import telemetry_received
from edgeloop_common.bus.base import EventContext
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import TelemetryReceived


async def test_a_late_broadcast_subscriber_gets_the_history_and_a_group_subscriber_does_not() -> None:
    bus = InProcessBus(source="test")
    await bus.start()
    for seq in range(3):
        await bus.publish(telemetry_received(seq=seq))
    replayed: list[int] = []
    grouped: list[int] = []

    def recorder(seen: list[int]):  # type: ignore[no-untyped-def]
        async def handle(event: TelemetryReceived, context: EventContext) -> None:
            seen.append(int(event.readings["seq"] or 0))

        return handle

    bus.subscribe(TelemetryReceived, recorder(replayed), group="routes", broadcast=True)
    bus.subscribe(TelemetryReceived, recorder(grouped), group="late-group")
    await bus.publish(telemetry_received(seq=3))
    await bus.drain()
    await bus.stop()

    assert replayed == [0, 1, 2, 3]
    assert grouped == [3]
    assert bus.caught_up()
