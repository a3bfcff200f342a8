"""What the standalone demos share to tell their story (demo_loop, demo_telemetry): a narrator that prints each
step with the seconds since the start, and takes the events it narrates from the bus under one consumer group."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

Echo = Callable[[str], None]
Handler = Callable[[Any, Any], Awaitable[None]]


class BusNarrator:
    """A demo's narrator: ``say`` a line; ``subscribe`` its ``handlers()`` (event class, handler) to the bus."""

    group: ClassVar[str]  # the consumer group its handlers share

    def __init__(self, echo: Echo, started: float) -> None:
        self.echo = echo
        self.started = started

    def say(self, who: str, text: str) -> None:
        self.echo(f"[{time.monotonic() - self.started:6.1f} s] {who:<9} {text}")

    def handlers(self) -> list[tuple[type[Any], Handler]]:
        raise NotImplementedError

    def subscribe(self, bus: Any) -> None:
        for event_cls, handler in self.handlers():
            bus.subscribe(event_cls, handler, group=self.group)
