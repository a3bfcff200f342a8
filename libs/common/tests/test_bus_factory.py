"""create_bus picks the bus for the mode: in-process when standalone, Kafka when distributed."""

from __future__ import annotations

import pytest
from edgeloop_common.bus.factory import create_bus
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.idempotency import InMemoryProcessedEventStore
from edgeloop_common.settings import CommonSettings


def test_standalone_mode_gets_the_in_process_bus() -> None:
    store = InMemoryProcessedEventStore()
    bus = create_bus(CommonSettings(mode="standalone"), source="ingest", processed=store)
    assert isinstance(bus, InProcessBus)
    assert (bus.source, bus.processed) == ("ingest", store)


def test_distributed_mode_gets_a_kafka_bus_on_the_configured_brokers() -> None:
    common = CommonSettings(
        mode="distributed", kafka_bootstrap_servers="kafka-1:9092,kafka-2:9092", topic_prefix="staging."
    )
    bus = create_bus(common, source="drift")
    assert isinstance(bus, KafkaBus)
    assert bus.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert bus.source == "drift"
    assert bus.topic_name("edgeloop.images.received.v1") == "staging.edgeloop.images.received.v1"
    assert bus.dead_letter_topic == "staging.edgeloop.deadletter.v1"
    assert bus.group_name("drift") == "staging.drift"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELOOP_MODE", "distributed")
    monkeypatch.setenv("EDGELOOP_KAFKA_BOOTSTRAP_SERVERS", "10.0.0.5:9092")
    monkeypatch.setenv("EDGELOOP_TOPIC_PREFIX", "site-b.")
    bus = create_bus(CommonSettings(), source="ingest")
    assert isinstance(bus, KafkaBus) and bus.bootstrap_servers == "10.0.0.5:9092"
    assert bus.topic_name("edgeloop.images.received.v1") == "site-b.edgeloop.images.received.v1"
