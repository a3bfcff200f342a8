"""Event bus: one interface (:class:`EventBus`), a Kafka and an in-process implementation."""

from edgeloop_common.bus.base import (
    BusStats,
    BusUnavailableError,
    EventBus,
    EventContext,
    Handler,
    Outgoing,
    PermanentError,
    RetryPolicy,
    Subscription,
)

__all__ = [
    "BusStats",
    "BusUnavailableError",
    "EventBus",
    "EventContext",
    "Handler",
    "Outgoing",
    "PermanentError",
    "RetryPolicy",
    "Subscription",
]
