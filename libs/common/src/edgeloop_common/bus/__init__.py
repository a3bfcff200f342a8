"""Event bus: one interface (:class:`EventBus`), a Kafka and an in-process implementation."""

from edgeloop_common.bus.base import (
    BusStats,
    EventBus,
    EventContext,
    Handler,
    PermanentError,
    RetryPolicy,
    Subscription,
)

__all__ = [
    "BusStats",
    "EventBus",
    "EventContext",
    "Handler",
    "PermanentError",
    "RetryPolicy",
    "Subscription",
]
