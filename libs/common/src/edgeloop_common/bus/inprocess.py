"""The in-process bus: standalone mode and fast unit tests.

Each subscription has its own queue and worker task, so a slow consumer does
not hold up a publisher, and handlers see events in publication order. A
broadcast subscription also gets the events of its class published before it
subscribed (the bus keeps what it published), like a replay of a Kafka topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from edgeloop_common.bus.base import E, EventBus, EventContext, RetryPolicy, Subscription
from edgeloop_common.bus.dispatch import deliver
from edgeloop_common.events import DeadLetter, Event
from edgeloop_common.idempotency import InMemoryProcessedEventStore, ProcessedEventStore
from edgeloop_common.tracing import new_traceparent

log = logging.getLogger(__name__)

_Delivery = tuple[Event, EventContext]


class InProcessBus(EventBus):
    def __init__(
        self,
        *,
        source: str = "edgeloop",
        retry: RetryPolicy | None = None,
        processed: ProcessedEventStore | None = None,
    ) -> None:
        super().__init__(source=source, retry=retry)
        self.processed = processed or InMemoryProcessedEventStore()
        self.published: list[tuple[Event, EventContext]] = []
        self.dead_letters: list[DeadLetter] = []
        self._queues: list[tuple[Subscription, asyncio.Queue[_Delivery]]] = []
        self._workers: list[asyncio.Task[None]] = []
        self._started = False

    def subscribe(
        self,
        event_cls: type[E],
        handler: Callable[[E, EventContext], Awaitable[None]],
        *,
        group: str,
        broadcast: bool = False,
    ) -> None:
        """Register a handler. Unlike Kafka, also allowed after ``start``: services sharing one bus start in
        any order. Events published before a group subscription exists are not delivered to it; a broadcast
        subscription gets them first, in publication order."""
        super().subscribe(event_cls, handler, group=group, broadcast=broadcast)

    def _add_subscription(self, subscription: Subscription) -> None:
        super()._add_subscription(subscription)
        queue: asyncio.Queue[_Delivery] = asyncio.Queue()
        if subscription.broadcast:
            for event, context in self.published:
                if isinstance(event, subscription.event_cls):
                    queue.put_nowait((event, context))
        self._queues.append((subscription, queue))
        if self._started:
            self._start_worker(subscription, queue)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for subscription, queue in self._queues:
            self._start_worker(subscription, queue)

    def _start_worker(self, subscription: Subscription, queue: asyncio.Queue[_Delivery]) -> None:
        self._workers.append(asyncio.create_task(self._work(subscription, queue), name=f"bus:{subscription.group}"))

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Let queued events be handled (bounded), then stop the workers."""
        if self._started:
            with contextlib.suppress(TimeoutError):
                await self.drain(drain_timeout_s)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        self._started = False

    async def ready(self) -> bool:
        return self._started

    async def publish(
        self,
        event: Event,
        *,
        key: str | None = None,
        event_id: str | None = None,
        traceparent: str | None = None,
    ) -> str:
        context = EventContext(
            event_id=event_id or str(uuid.uuid4()),
            event_type=event.event_type,
            source=self.source,
            time=datetime.now(UTC),
            topic=event.topic,
            key=key if key is not None else event.partition_key(),
            traceparent=traceparent or new_traceparent(),
        )
        self.published.append((event, context))
        self.stats.published += 1
        self.stats.by_topic[event.topic] = self.stats.by_topic.get(event.topic, 0) + 1
        if isinstance(event, DeadLetter):
            self.dead_letters.append(event)
        for subscription, queue in self._queues:
            if isinstance(event, subscription.event_cls):
                queue.put_nowait((event, context))
        return context.event_id

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until every queued event has been handled (tests, graceful shutdown)."""
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(queue.join() for _, queue in self._queues))

    async def _work(self, subscription: Subscription, queue: asyncio.Queue[_Delivery]) -> None:
        # A broadcast subscription is this process's own: its handled ids are not the group's shared record.
        processed = InMemoryProcessedEventStore() if subscription.broadcast else self.processed
        while True:
            event, context = await queue.get()
            try:
                await deliver(
                    subscription,
                    event,
                    context,
                    retry=self.retry,
                    processed=processed,
                    stats=self.stats,
                    service=self.source,
                    raw_value=event.model_dump_json().encode(),
                    raw_headers={"ce_id": context.event_id, "ce_type": context.event_type},
                    publish_dead_letter=self.publish_dead_letter,
                )
            except Exception:  # a failing dead-letter publish must not kill the worker
                log.exception("in-process delivery of %s failed", context.event_id)
            finally:
                queue.task_done()

    def events_of(self, event_cls: type[Event]) -> list[Event]:
        return [event for event, _ in self.published if isinstance(event, event_cls)]
