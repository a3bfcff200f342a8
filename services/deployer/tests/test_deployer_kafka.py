"""The distributed path: ModelPromoted over the real Kafka, state in a fresh PostgreSQL database, rollouts on the
real Kubernetes control plane, DeploymentUpdated read back from Kafka by another consumer."""

from __future__ import annotations

from pathlib import Path

import pytest
from deployer_kube import kube_settings, running_deployer, serving_summary
from deployer_testing import eventually, promotion
from edgeloop_common.bus import EventContext
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.events import DeploymentUpdated
from edgeloop_common.settings import CommonSettings
from edgeloop_deployer.adapters.store import deployments
from kube_helpers import KubeCluster
from kubernetes import client
from sqlalchemy import create_engine, select

pytestmark = [
    pytest.mark.kube,
    pytest.mark.kafka,
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.usefixtures("edge_pods_run"),
]


class Observer:
    """What the gateway sees on Kafka: DeploymentUpdated events, in order."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.updates: list[tuple[DeploymentUpdated, EventContext]] = []
        self.bus = KafkaBus(bootstrap_servers=bootstrap, source="observer", topic_prefix=prefix)
        self.bus.subscribe(DeploymentUpdated, self._updated, group="observer")

    async def _updated(self, event: DeploymentUpdated, context: EventContext) -> None:
        self.updates.append((event, context))

    def phases(self, group: str) -> list[tuple[str, int | None, int | None]]:
        return [(e.phase, e.desired_version, e.actual_version) for e, _ in self.updates if e.node_group == group]


async def test_a_promotion_over_kafka_is_rolled_out_to_every_group_and_reported_on_kafka(
    kube_cluster: KubeCluster,
    kube_api: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topics: str,
    fresh_postgres_url: str,
) -> None:
    registry = KafkaBus(bootstrap_servers=kafka_bootstrap, source="registry", topic_prefix=kafka_topics)
    observer = Observer(kafka_bootstrap, kafka_topics)
    common = CommonSettings(
        mode="distributed",
        kafka_bootstrap_servers=kafka_bootstrap,
        database_url=fresh_postgres_url,
        topic_prefix=kafka_topics,
    )
    settings = kube_settings(kube_cluster.kubeconfig, namespace, tmp_path, common=common)
    await registry.start()
    await observer.bus.start()
    try:
        promoted_id = await registry.publish(promotion(1))
        async with running_deployer(settings, None):
            await eventually(
                lambda: all(observer.phases(g)[-1:] == [("ready", 1, 1)] for g in ("site-a", "site-b")),
                what="version 1 ready in both groups, on Kafka",
                timeout_s=90,
            )
            # The same event again (a redelivery) starts nothing; the next promotion proves it was consumed.
            await registry.publish(promotion(1), event_id=promoted_id)
            await registry.publish(promotion(2, group="site-b"))
            await eventually(
                lambda: observer.phases("site-b")[-1:] == [("ready", 2, 2)], what="version 2 ready in site-b"
            )
    finally:
        await observer.bus.stop()
        await registry.stop()

    assert observer.phases("site-a") == [("pending", 1, None), ("progressing", 1, None), ("ready", 1, 1)]
    assert observer.phases("site-b") == [
        ("pending", 1, None),
        ("progressing", 1, None),
        ("ready", 1, 1),
        ("pending", 2, 1),
        ("progressing", 2, 1),
        ("ready", 2, 2),
    ]
    assert {context.source for _, context in observer.updates} == {"deployer"}
    assert {context.key for _, context in observer.updates} == {"catdog/site-a", "catdog/site-b"}
    # The group's serving endpoint reaches Kafka's consumers (the edge agents) with every update.
    assert {(e.node_group, e.endpoint) for e, _ in observer.updates} == {
        (group, f"http://edgeloop-model-catdog-{group}.{namespace}.svc:8501") for group in ("site-a", "site-b")
    }
    for group, version in (("site-a", "1"), ("site-b", "2")):
        assert serving_summary(kube_api, namespace, group) == [
            (node, version, True) for node in sorted(kube_cluster.groups[group])
        ]
    engine = create_engine(fresh_postgres_url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(deployments.c.node_group, deployments.c.actual_version, deployments.c.previous_version)
        ).all()
    engine.dispose()
    assert sorted(rows) == [("site-a", 1, None), ("site-b", 2, 1)]
