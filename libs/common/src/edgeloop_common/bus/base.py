"""The event bus interface shared by the Kafka and the in-process implementations.

Delivery contract (docs/architecture.md, "Delivery semantics"):

* ``publish`` returns only once the event is durable (Kafka: acknowledged by
  all in-sync replicas; in-process: queued to every subscriber).
* A subscriber's handler is called at least once per event. The bus records
  the event id as processed for the subscriber's group *after* the handler
  returned and skips ids it has already recorded, so a redelivery has no
  second effect.
* A handler that raises is retried with backoff up to ``RetryPolicy.max_attempts``;
  :class:`PermanentError` is not retried. Then a :class:`DeadLetter` with the
  reason goes to ``edgeloop.deadletter.v1`` and the consumer moves on.

Two kinds of subscription:

* group (the default): the processes subscribed with the same ``group`` share
  the topic's events, each event goes to one of them, and the group resumes
  where it left off (Kafka consumer groups with committed offsets).
* ``broadcast=True``: every process gets every event of the topic, replayed
  from the beginning of the log at start and then followed. For state every
  replica must hold (the gateway's routes, rebuilt from the compacted
  ``deployments.updated`` topic). Nothing is committed; ids are deduplicated in
  memory only, so a restarted process replays the history. ``caught_up()`` says
  when the replay reached the end the log had at start.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from edgeloop_common.events import DeadLetter, Event

E = TypeVar("E", bound=Event)


class PermanentError(Exception):
    """The message can never be handled (bad input); do not retry, dead-letter it.

    Domain errors do not inherit from it: a handler maps those that are permanent at its boundary, with
    ``raise PermanentError(str(error)) from error``; the dead letter then names the domain error's type.
    """


class BusUnavailableError(Exception):
    """The broker did not acknowledge in time; the event is not durable. The caller keeps it."""


@dataclass(frozen=True)
class EventContext:
    """Transport attributes of a delivered event (CloudEvents + Kafka position)."""

    event_id: str
    event_type: str
    source: str
    time: datetime
    topic: str
    key: str | None = None
    traceparent: str | None = None
    partition: int | None = None
    offset: int | None = None
    attempt: int = 1


Handler = Callable[[Any, EventContext], Awaitable[None]]
Delivery = tuple[Any, EventContext]
BatchHandler = Callable[[Sequence[Delivery]], Awaitable[None]]


@dataclass(frozen=True)
class Outgoing:
    """One event for :meth:`EventBus.enqueue_many`, with the key, id and trace it keeps (None: the bus chooses, as
    for ``publish``)."""

    event: Event
    key: str | None = None
    event_id: str | None = None
    traceparent: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0

    def backoff_s(self, attempt: int) -> float:
        """Delay before attempt ``attempt + 1`` (exponential, capped)."""
        return float(min(self.max_backoff_s, self.initial_backoff_s * (2 ** (attempt - 1))))


@dataclass(frozen=True)
class Subscription:
    event_cls: type[Event]
    handler: Handler
    group: str
    broadcast: bool = False
    # Set by ``subscribe_batch``: the handler of many events; ``handler`` then hands it one event at a time.
    batch_handler: BatchHandler | None = None


@dataclass
class BusStats:
    published: int = 0
    handled: int = 0
    duplicates_skipped: int = 0
    retried: int = 0
    dead_lettered: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)


class EventBus(abc.ABC):
    """Publish events and run subscribers' handlers with at-least-once delivery."""

    def __init__(self, *, source: str, retry: RetryPolicy | None = None) -> None:
        self.source = source
        self.retry = retry or RetryPolicy()
        self.subscriptions: list[Subscription] = []
        self.stats = BusStats()

    def subscribe(
        self,
        event_cls: type[E],
        handler: Callable[[E, EventContext], Awaitable[None]],
        *,
        group: str,
        broadcast: bool = False,
    ) -> None:
        """Register ``handler`` for ``event_cls`` in consumer group ``group``. Call before ``start``.

        ``broadcast=True``: this process gets every event of the topic, from the beginning of the log, whatever
        other processes subscribed; ``group`` then only names the subscription (dead-letter reasons, logs). The
        handler must be idempotent over a replay: a restart delivers the history again.
        """
        self._add_subscription(Subscription(event_cls=event_cls, handler=handler, group=group, broadcast=broadcast))

    def subscribe_batch(
        self,
        event_cls: type[E],
        handler: Callable[[Sequence[tuple[E, EventContext]]], Awaitable[None]],
        *,
        group: str,
    ) -> None:
        """Register ``handler`` for many events of ``event_cls`` at once, in consumer group ``group`` (a group
        subscription; call before ``start``).

        The Kafka bus hands it each partition's fetched records together, in order, skipping ids already processed;
        when it returns, every one of them is recorded as processed and committed. Anything else -- a record that is
        not an event of the topic, the handler raising -- and the bus delivers that batch's events again one at a
        time, with the usual retries and dead letters (``handler`` called with one event). So the handler must have
        no effect when it raises, or only effects that a second delivery of the same events does not repeat. The
        in-process bus delivers one event at a time.
        """
        batch_handler: BatchHandler = handler

        async def one(event: Any, context: EventContext) -> None:
            await batch_handler([(event, context)])

        self._add_subscription(Subscription(event_cls=event_cls, handler=one, group=group, batch_handler=batch_handler))

    def _add_subscription(self, subscription: Subscription) -> None:
        self.subscriptions.append(subscription)

    def caught_up(self) -> bool:
        """True once every broadcast subscription has handled the events its topic held when the bus started
        (always, for a bus without broadcast subscriptions). The in-process bus has no log to replay: True."""
        return True

    async def wait_until_caught_up(self, timeout_s: float = 30.0) -> None:
        """Wait until :meth:`caught_up`; raises TimeoutError after ``timeout_s``."""
        if not self.caught_up():
            raise NotImplementedError(f"{type(self).__name__} cannot wait for its broadcast subscriptions")

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop consuming, finish the handler in flight, flush the producer."""

    @abc.abstractmethod
    async def publish(
        self,
        event: Event,
        *,
        key: str | None = None,
        event_id: str | None = None,
        traceparent: str | None = None,
    ) -> str:
        """Publish ``event`` durably; return its event id. Raises :class:`BusUnavailableError` on timeout."""

    async def enqueue(
        self,
        event: Event,
        *,
        key: str | None = None,
        event_id: str | None = None,
        traceparent: str | None = None,
    ) -> Awaitable[str]:
        """Hand ``event`` to the bus in call order and return an awaitable that resolves once it is durable.

        Lets a caller pipeline many events while keeping their order (the
        ingest bridge acknowledges each device message when its awaitable
        resolves). Awaiting the result may raise :class:`BusUnavailableError`.
        The default publishes right away; the Kafka bus overrides it.
        """
        event_id = await self.publish(event, key=key, event_id=event_id, traceparent=traceparent)
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        done.set_result(event_id)
        return done

    async def enqueue_many(self, outgoing: Sequence[Outgoing]) -> list[asyncio.Future[str]]:
        """Hand many events to the bus in order; one future per event, in the same order, resolving to its event id
        once it is durable, or failing (:class:`BusUnavailableError`, :class:`PermanentError`) when it is not.

        What the bus takes of each partition (of each key) is a prefix of that partition's events: after one it
        could not take, it takes none of the same partition, and their futures fail at once with
        :class:`BusUnavailableError`. A caller that sends the failed ones elsewhere, and the same keys' later events
        after them (ingest's disk buffer), keeps every key's order. Await or inspect every future. The default
        enqueues one at a time and stops at the first failure; the Kafka bus builds a record batch per partition
        (aiokafka's ``send_batch``), a fraction of the cost of a ``send`` per record.
        """
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[str]] = []
        failure: BaseException | None = None
        for item in outgoing:
            if failure is None:
                try:
                    ack = await self.enqueue(
                        item.event, key=item.key, event_id=item.event_id, traceparent=item.traceparent
                    )
                except (BusUnavailableError, PermanentError) as exc:
                    failure = exc
                    futures.append(failed_future(loop, exc))
                else:
                    futures.append(asyncio.ensure_future(ack))
                continue
            futures.append(failed_future(loop, not_handed_over(failure)))
        return futures

    async def publish_dead_letter(self, dead_letter: DeadLetter, *, event_id: str | None = None) -> str:
        """Publish ``dead_letter``. ``event_id``: a stable id, so that the same failure reported again (a replayed
        broadcast record, by every replica) is one event to consumers, who skip the duplicates."""
        return await self.publish(dead_letter, key=dead_letter.device_id or dead_letter.original_key, event_id=event_id)

    @abc.abstractmethod
    async def ready(self) -> bool:
        """True when the bus can publish now (broker reachable)."""


def not_handed_over(failure: BaseException) -> BusUnavailableError:
    """The error of an event :meth:`EventBus.enqueue_many` did not hand over because an earlier one failed."""
    return BusUnavailableError(f"not handed over: an earlier event of the batch was not ({failure})")


def failed_future(loop: asyncio.AbstractEventLoop, error: BaseException) -> asyncio.Future[str]:
    future: asyncio.Future[str] = loop.create_future()
    future.set_exception(error)
    return future
