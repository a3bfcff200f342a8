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
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from opentelemetry.trace import SpanKind

from edgeloop_common import otel
from edgeloop_common.bus.base import EventBus, EventContext, Handler
from edgeloop_common.events import Event

Owner = TypeVar("Owner")

OwnedHandler = Callable[[Owner, Any, EventContext], Awaitable[None]]
"""A handler as the table names it: a method of the class whose object the app builds (``Handlers.on_x``)."""


class SubscriberStoppedError(RuntimeError):
    """The service a handler belongs to has stopped; the bus retries the event (a restarted service may take it)."""


@dataclass(frozen=True)
class ConsumerGroup(Generic[Owner]):
    """The events one consumer group handles, one handler per event type.

    ``broadcast``: every replica gets every event of the topics, the log's history first (see
    :meth:`~edgeloop_common.bus.base.EventBus.subscribe`); ``name`` then only names the subscription.
    """

    name: str
    handlers: Mapping[type[Event], OwnedHandler[Owner]]
    broadcast: bool = False


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

    def detach(self) -> None:
        self._owner = None
