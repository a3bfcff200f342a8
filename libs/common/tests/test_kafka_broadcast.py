"""Broadcast subscriptions on the real Kafka: every process gets every event, replayed from the beginning.

Each test has its own topic prefix (fresh topics) and deletes its topics afterwards.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from edgeloop_common import topics
from edgeloop_common.bus.base import EventContext, PermanentError, RetryPolicy
from edgeloop_common.bus.codec import decode
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.events import DeadLetter, DeploymentPhase, DeploymentUpdated

from tests.helpers import eventually, read_topic_records

pytestmark = pytest.mark.kafka

FAST_RETRY = RetryPolicy(max_attempts=2, initial_backoff_s=0.05, max_backoff_s=0.2)
BusFactory = Callable[..., KafkaBus]
Seen = list[tuple[str, str, int | None]]


@pytest.fixture
async def make_bus(kafka_bootstrap: str, kafka_topics: str) -> AsyncIterator[BusFactory]:
    buses: list[KafkaBus] = []

    def make(**options: Any) -> KafkaBus:
        bus = KafkaBus(
            bootstrap_servers=kafka_bootstrap,
            topic_prefix=kafka_topics,
            source=options.pop("source", "gateway"),
            retry=FAST_RETRY,
            **options,
        )
        buses.append(bus)
        return bus

    yield make
    await asyncio.gather(*(bus.stop() for bus in buses))


def update(group: str, version: int | None, phase: DeploymentPhase = "ready") -> DeploymentUpdated:
    return DeploymentUpdated(
        model_name="catdog",
        node_group=group,
        desired_version=version,
        actual_version=version,
        phase=phase,
    )


def follower(seen: Seen, keys: list[str | None] | None = None) -> Any:
    async def handle(event: DeploymentUpdated, context: EventContext) -> None:
        seen.append((event.node_group, event.phase, event.actual_version))
        if keys is not None:
            keys.append(context.key)

    return handle


async def topic_config(bootstrap: str, topic: str, name: str) -> str | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {name: None})])
    finally:
        await admin.close()
    [resource] = response.to_object()["resources"]
    values = {entry["config_names"]: entry["config_value"] for entry in resource["config_entries"]}
    return values.get(name)


async def test_every_replica_gets_every_event_keyed_by_model_and_group(make_bus: BusFactory) -> None:
    """Two gateway replicas on the same subscription name: a consumer group would split the events between them."""
    seen_a: Seen = []
    seen_b: Seen = []
    keys: list[str | None] = []
    replica_a, replica_b = make_bus(), make_bus()
    replica_a.subscribe(DeploymentUpdated, follower(seen_a, keys), group="routes", broadcast=True)
    replica_b.subscribe(DeploymentUpdated, follower(seen_b), group="routes", broadcast=True)
    await asyncio.gather(replica_a.start(), replica_b.start())
    await asyncio.gather(replica_a.wait_until_caught_up(), replica_b.wait_until_caught_up())
    assert replica_a.caught_up() and replica_b.caught_up()  # an empty topic: caught up at once

    deployer = make_bus(source="deployer")
    published = [update("site-a", 1), update("site-b", 1), update("site-a", 2), update("site-a", None, "deleted")]
    for event in published:
        await deployer.publish(event)

    expected = [(e.node_group, e.phase, e.actual_version) for e in published]
    await eventually(lambda: len(seen_a) == len(seen_b) == 4, what="both replicas got all four updates")
    for seen in (seen_a, seen_b):  # one deployment's updates in publish order
        assert [s for s in seen if s[0] == "site-a"] == [s for s in expected if s[0] == "site-a"]
        assert sorted(seen, key=str) == sorted(expected, key=str)
    assert sorted(set(keys), key=str) == ["catdog/site-a", "catdog/site-b"]


async def test_a_bus_started_later_replays_the_history_before_it_is_caught_up(make_bus: BusFactory) -> None:
    """The restart case: a replica that starts after the updates rebuilds the same state from the log."""
    deployer = make_bus(source="deployer")
    await deployer.start()
    for version in (1, 2, 3):
        await deployer.publish(update("site-a", version))
    await deployer.publish(update("site-b", 7))

    seen: Seen = []
    restarted = make_bus()
    restarted.subscribe(DeploymentUpdated, follower(seen), group="routes", broadcast=True)
    assert not restarted.caught_up()  # not started: nothing replayed yet
    await restarted.start()
    await restarted.wait_until_caught_up()
    replayed = list(seen)  # all of it by the time it says caught up, each deployment's updates in order
    assert [s for s in replayed if s[0] == "site-a"] == [("site-a", "ready", v) for v in (1, 2, 3)]
    assert [s for s in replayed if s[0] == "site-b"] == [("site-b", "ready", 7)]

    await deployer.publish(update("site-b", 8))  # and then it follows
    await eventually(lambda: ("site-b", "ready", 8) in seen, what="the new update followed")
    assert len(seen) == 5  # nothing handled twice


async def test_the_deployments_topic_is_compacted(
    make_bus: BusFactory, kafka_bootstrap: str, kafka_topics: str
) -> None:
    bus = make_bus()
    await bus.start()
    assert await topic_config(kafka_bootstrap, f"{kafka_topics}{topics.DEPLOYMENTS_UPDATED}", "cleanup.policy") == (
        "compact"
    )
    assert await topic_config(kafka_bootstrap, f"{kafka_topics}{topics.IMAGES_RECEIVED}", "cleanup.policy") == "delete"


async def test_a_deployments_topic_made_before_compaction_is_compacted_keeping_its_other_settings(
    make_bus: BusFactory, kafka_bootstrap: str, kafka_topics: str
) -> None:
    topic = f"{kafka_topics}{topics.DEPLOYMENTS_UPDATED}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1, topic_configs={"retention.ms": "86400000"})])
    finally:
        await admin.close()

    def policy_is(value: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:  # the brokers show a topic's configs a moment after acknowledging them
            return await topic_config(kafka_bootstrap, topic, "cleanup.policy") == value

        return check

    await eventually(policy_is("delete"), what="the topic made with the default cleanup.policy", timeout_s=10)
    await make_bus().start()
    await eventually(policy_is("compact"), what="cleanup.policy=compact", timeout_s=10)
    assert await topic_config(kafka_bootstrap, topic, "retention.ms") == "86400000"


async def test_bad_records_are_dead_lettered_once_per_record_and_the_replicas_go_on(
    make_bus: BusFactory, kafka_bootstrap: str, kafka_topics: str
) -> None:
    """Two replicas each report an undecodable record and an event their handler refuses; both go on to the next
    update. The dead letters of one record carry one event id, so a dead-letter consumer sees one failure each."""
    topic = f"{kafka_topics}{topics.DEPLOYMENTS_UPDATED}"
    deployer = make_bus(source="deployer")
    await deployer.start()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:  # same key as the events: one partition, in this order
        await producer.send_and_wait(topic, b"not an event", key=b"catdog/site-a")
    finally:
        await producer.stop()
    await deployer.publish(update("site-a", 666))
    await deployer.publish(update("site-a", 2))

    def refusing(seen: Seen) -> Any:
        async def handle(event: DeploymentUpdated, context: EventContext) -> None:
            if event.actual_version == 666:
                raise PermanentError("no such version in the model store")
            seen.append((event.node_group, event.phase, event.actual_version))

        return handle

    seen_a: Seen = []
    seen_b: Seen = []
    replica_a, replica_b = make_bus(), make_bus()
    replica_a.subscribe(DeploymentUpdated, refusing(seen_a), group="routes", broadcast=True)
    replica_b.subscribe(DeploymentUpdated, refusing(seen_b), group="routes", broadcast=True)
    await asyncio.gather(replica_a.start(), replica_b.start())
    await asyncio.gather(replica_a.wait_until_caught_up(), replica_b.wait_until_caught_up())
    assert seen_a == seen_b == [("site-a", "ready", 2)]

    dead_records = await read_topic_records(kafka_bootstrap, f"{kafka_topics}{topics.DEAD_LETTER}", count=4)
    letters = [decode(topic=r.topic, key=r.key, value=r.value, headers=list(r.headers)) for r in dead_records]
    by_value: dict[bytes, set[str]] = {}
    for letter, context in letters:
        assert isinstance(letter, DeadLetter)
        assert letter.reason.startswith("routes: ") and letter.original_topic == topic
        by_value.setdefault(base64.b64decode(letter.original_value_b64), set()).add(context.event_id)
    assert len(by_value) == 2  # the garbage and the refused update
    assert b"not an event" in by_value
    assert all(len(ids) == 1 for ids in by_value.values())  # two replicas, one event id per failed record
