"""Choosing the bus for the mode EdgeLoop runs in: in-process (standalone) or Kafka (distributed)."""

from __future__ import annotations

from edgeloop_common.bus.base import EventBus
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.idempotency import ProcessedEventStore
from edgeloop_common.settings import CommonSettings


def create_bus(
    common: CommonSettings,
    *,
    source: str,
    processed: ProcessedEventStore | None = None,
) -> EventBus:
    """The bus a service owns: :class:`InProcessBus` in standalone mode, :class:`KafkaBus` in distributed mode.

    ``source`` is the CloudEvents source of what the service publishes (its name). ``processed`` records handled
    event ids (idempotency); give a :class:`~edgeloop_common.idempotency.SqlProcessedEventStore` on the service's
    database so a redelivery after a restart has no second effect. Kafka topic and group names carry
    ``common.topic_prefix``.
    """
    if common.mode == "standalone":
        return InProcessBus(source=source, processed=processed)
    from edgeloop_common.bus.kafka import KafkaBus  # aiokafka only where Kafka is used

    return KafkaBus(
        bootstrap_servers=common.kafka_bootstrap_servers,
        fetch_max_wait_ms=common.kafka_fetch_max_wait_ms,
        source=source,
        processed=processed,
        topic_prefix=common.topic_prefix,
        auth=common.kafka_auth(),
    )
