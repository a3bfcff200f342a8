"""A service's subscriptions: one table in its ``handlers.py``, wired to the bus in one place.

Each service's ``handlers.py`` declares, once, which consumer group handles which event type with which handler
(cosmicpython's ``EVENT_HANDLERS``). The handlers are methods of one class that holds what they need::

    SUBSCRIPTIONS = (
        ConsumerGroup(
            "drift",
            {
                InferenceCompleted: DriftHandlers.on_inference_completed,
                SampleLabeled: DriftHandlers.on_sample_labeled,
            },
        ),
    )

The object of that class (the service, the bus it publishes on) exists only while the service runs, so the app's
lifespan subscribes once it has built it, and before it starts a bus of its own::

    stack.enter_context(subscribed(bus, SUBSCRIPTIONS, DriftHandlers(service, bus)))

Leaving the block detaches the handlers from the object: a bus shared with other services (standalone mode)
keeps the subscription, and an event it delivers after this service stopped fails with
:class:`SubscriberStoppedError`, to be retried by the bus, instead of reaching a stopped service.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from opentelemetry.trace import SpanKind

from edgeloop_common import otel
from edgeloop_common.bus.base import BatchHandler, Delivery, EventBus, EventContext, Handler
from edgeloop_common.events import Event

Owner = TypeVar("Owner")

OwnedHandler = Callable[[Owner, Any, EventContext], Awaitable[None]]
"""A handler as the table names it: a method of the class whose object the app builds (``Handlers.on_x``)."""

OwnedBatchHandler = Callable[[Owner, Sequence[Delivery]], Awaitable[None]]
"""A handler of many events at once (``EventBus.subscribe_batch``), as the table names it."""


class SubscriberStoppedError(RuntimeError):
    """The service a handler belongs to has stopped; the bus retries the event (a restarted service may take it)."""


@dataclass(frozen=True)
class ConsumerGroup(Generic[Owner]):
    """The events one consumer group handles, one handler per event type.

    ``broadcast``: every replica gets every event of the topics, the log's history first (see
    :meth:`~edgeloop_common.bus.base.EventBus.subscribe`); ``name`` then only names the subscription.
    ``batch_handlers``: handlers of many events at once (a group subscription; see
    :meth:`~edgeloop_common.bus.base.EventBus.subscribe_batch`), for a stream of small events.
    """

    name: str
    handlers: Mapping[type[Event], OwnedHandler[Owner]] = field(default_factory=dict)
    broadcast: bool = False
    batch_handlers: Mapping[type[Event], OwnedBatchHandler[Owner]] = field(default_factory=dict)


def renamed(groups: Iterable[ConsumerGroup[Owner]], names: Mapping[str, str]) -> tuple[ConsumerGroup[Owner], ...]:
    """``groups`` with those that ``names`` maps renamed (an operator's setting names a group the table does not)."""
    return tuple(dataclasses.replace(group, name=names.get(group.name, group.name)) for group in groups)


def with_consumer_group_setting(
    groups: tuple[ConsumerGroup[Owner], ...], settings: Any
) -> tuple[ConsumerGroup[Owner], ...]:
    """``groups``, the first renamed to ``settings.consumer_group`` where an operator set it (its env variable).

    Left unset, the table's own name stands: the group is declared once, in the service's ``handlers.py``.
    """
    if "consumer_group" not in settings.model_fields_set:
        return groups
    return renamed(groups, {groups[0].name: settings.consumer_group})


@contextmanager
def subscribed(bus: EventBus, groups: Iterable[ConsumerGroup[Owner]], owner: Owner) -> Iterator[None]:
    """Subscribe every handler of ``groups``, bound to ``owner``; detach them from ``owner`` on leaving.

    Enter it before ``bus.start()`` (a Kafka bus takes subscriptions only before it starts).
    """
    attachment = _Attachment(owner)
    for group in groups:
        for event_cls, handler in group.handlers.items():
            bus.subscribe(event_cls, attachment.bind(handler, group.name), group=group.name, broadcast=group.broadcast)
        for event_cls, batch_handler in group.batch_handlers.items():
            bus.subscribe_batch(event_cls, attachment.bind_batch(batch_handler, group.name), group=group.name)
    try:
        yield
    finally:
        attachment.detach()


class _Attachment(Generic[Owner]):
    def __init__(self, owner: Owner) -> None:
        self._owner: Owner | None = owner

    def bind(self, handler: OwnedHandler[Owner], group: str) -> Handler:
        async def handle(event: Any, context: EventContext) -> None:
            owner = self._owner
            if owner is None:
                name = getattr(handler, "__qualname__", repr(handler))
                raise SubscriberStoppedError(f"{name}: the service has stopped")
            # One consumer span per delivery, continuing the trace the event carries; what the handler publishes
            # with ``context.traceparent`` then continues this span (docs/observability.md).
            attributes = {"messaging.destination.name": context.topic, "messaging.message.id": context.event_id}
            with otel.continued_span(
                f"{context.topic} process",
                context.traceparent,
                service=group,
                kind=SpanKind.CONSUMER,
                attributes=attributes,
            ) as span:
                if span.is_recording():
                    context = dataclasses.replace(context, traceparent=otel.current_traceparent(context.traceparent))
                await handler(owner, event, context)

        return handle

    def bind_batch(self, handler: OwnedBatchHandler[Owner], group: str) -> BatchHandler:
        async def handle(deliveries: Sequence[Delivery]) -> None:
            owner = self._owner
            if owner is None:
                name = getattr(handler, "__qualname__", repr(handler))
                raise SubscriberStoppedError(f"{name}: the service has stopped")
            # One consumer span per batch (a new trace; per event it would cost more than the event's handling);
            # an event delivered on its own continues its trace, as with ``bind``.
            _, first = deliveries[0]
            attributes: dict[str, str | int] = {
                "messaging.destination.name": first.topic,
                "messaging.batch.message_count": len(deliveries),
            }
            with otel.continued_span(
                f"{first.topic} process",
                first.traceparent if len(deliveries) == 1 else None,
                service=group,
                kind=SpanKind.CONSUMER,
                attributes=attributes,
            ):
                await handler(owner, deliveries)

        return handle

    def detach(self) -> None:
        self._owner = None
