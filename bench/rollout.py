"""Promotion -> new version ready on every simulated edge node: how long a rollout takes end to end.

For each of ``--promotions`` promotions (versions 1, 2, ...; each to every node group), the clock starts
when ModelPromoted is handed to the bus and stops when **every** simulated edge node of every group runs a
pod of the new version that is Ready (read from the Kubernetes API, polled every 50 ms, pods carrying the
``edgeloop.io/model-version`` annotation of the new version). The time until the deployer reports
DeploymentUpdated(ready) for every group is printed too. Promotion 1 creates the Deployments; the others
are rolling updates (maxSurge 1, maxUnavailable 0).

What runs: the real control plane of ``edgeloop kube up`` (started here if it is not running, stopped
afterwards if this run started it), KWOK's simulated KubeEdge nodes (no container runs: a pod is Ready as
soon as KWOK plays it), the deployer with its defaults (Deployment workload, tensorflow/serving,
2 replicas per group, 0.5 s rollout polling), and the real Kafka (``--bus kafka``, the default:
EDGELOOP_KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:9092) or an in-process bus (``--bus inprocess``).
So the figure is the control loop's own latency (bus, deployer, API server, controllers, scheduler),
not image pulls or model loading, which a real edge node adds.

Target (issue 5): <= 30 s from promotion to the new version ready on every simulated edge node.

    .venv/bin/python bench/rollout.py
    .venv/bin/python bench/rollout.py --promotions 10 --bus inprocess
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeloop.kube import EDGE_TOLERATION, KubeError, cluster
from edgeloop.kube.layout import kubeconfig_path
from edgeloop_common.bus.base import EventBus, EventContext
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import DeploymentUpdated, ModelPromoted
from edgeloop_common.settings import CommonSettings
from edgeloop_deployer.adapters.manifests import MANAGED_BY, MANAGED_BY_LABEL, VERSION_ANNOTATION
from edgeloop_deployer.app import create_app
from edgeloop_deployer.settings import Settings
from kubernetes import client

TARGET_S = 30.0
MODEL = "bench-classifier"
POLL_S = 0.05


@dataclass
class Promotion:
    version: int
    kind: str  # "create" or "rolling update"
    all_nodes_ready_s: float  # promotion published -> a Ready pod of the version on every edge node
    deployer_ready_s: float  # promotion published -> DeploymentUpdated(ready) seen for every group


class ReadyWatcher:
    """DeploymentUpdated events as a consumer sees them."""

    def __init__(self) -> None:
        self.ready: dict[tuple[str, int], float] = {}
        self.failures: list[str] = []

    async def __call__(self, event: DeploymentUpdated, context: EventContext) -> None:
        if event.phase == "ready" and event.actual_version is not None:
            self.ready.setdefault((event.node_group, event.actual_version), time.monotonic())
        elif event.phase in ("failed", "rolled_back"):
            self.failures.append(
                f"version {event.desired_version} in {event.node_group}: {event.phase}: {event.reason}"
            )


def nodes_serving(api: client.ApiClient, namespace: str, version: int) -> set[str]:
    """The edge nodes with a Ready pod of ``version``."""
    pods = client.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY}", _request_timeout=10
    )
    return {
        pod.spec.node_name
        for pod in pods.items
        if pod.metadata.deletion_timestamp is None
        and (pod.metadata.annotations or {}).get(VERSION_ANNOTATION) == str(version)
        and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    }


async def wait_until(probe: Any, what: str, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:g} s")
        await asyncio.sleep(POLL_S)
    return time.monotonic()


def warm_up_edge(api: client.ApiClient, nodes: list[str]) -> float:
    """Wait until KWOK plays pods on every edge node (a just-started KWOK waits for the node leases); seconds."""
    core = client.CoreV1Api(api)
    namespace = f"bench-warmup-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    started = time.monotonic()
    try:
        while not any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(namespace).items):
            time.sleep(0.2)
        for node in nodes:
            pod = {
                "metadata": {"name": f"probe-{node}"},
                "spec": {
                    "nodeName": node,
                    "tolerations": [EDGE_TOLERATION],
                    "containers": [{"name": "p", "image": "p"}],
                },
            }
            core.create_namespaced_pod(namespace, pod)
        deadline = started + 120
        while True:
            pods = core.list_namespaced_pod(namespace).items
            ready = [
                p for p in pods if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
            ]
            if len(ready) == len(nodes):
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise TimeoutError("KWOK did not make a probe pod Ready on every edge node within 120 s")
            time.sleep(0.2)
    finally:
        core.delete_namespace(namespace)


@asynccontextmanager
async def buses(kind: str, prefix: str) -> AsyncIterator[tuple[EventBus, EventBus | None, CommonSettings]]:
    """(the registry's bus to publish on, the deployer's bus if shared, the deployer's common settings)."""
    data_dir = Path(tempfile.mkdtemp(prefix="edgeloop-bench-rollout-"))
    database_url = f"sqlite:///{data_dir / 'deployer.sqlite3'}"
    if kind == "inprocess":
        shared = InProcessBus(source="registry")
        await shared.start()
        try:
            yield shared, shared, CommonSettings(mode="standalone", data_dir=data_dir, database_url=database_url)
        finally:
            await shared.stop()
        return
    from aiokafka.admin import AIOKafkaAdminClient
    from edgeloop_common.bus.kafka import KafkaBus

    bootstrap = os.environ.get("EDGELOOP_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    registry = KafkaBus(bootstrap_servers=bootstrap, source="registry", topic_prefix=prefix)
    await registry.start()
    try:
        common = CommonSettings(
            mode="distributed",
            kafka_bootstrap_servers=bootstrap,
            data_dir=data_dir,
            database_url=database_url,
            topic_prefix=prefix,
        )
        yield registry, None, common
    finally:
        await registry.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            mine = [name for name in await admin.list_topics() if name.startswith(prefix)]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()


async def measure(args: argparse.Namespace, api: client.ApiClient, groups: dict[str, list[str]]) -> list[Promotion]:
    namespace = f"bench-rollout-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    all_nodes = {node for members in groups.values() for node in members}
    prefix = f"bench-rollout-{uuid.uuid4().hex[:8]}."
    results: list[Promotion] = []
    try:
        async with buses(args.bus, prefix) as (registry, shared, common):
            watcher = ReadyWatcher()
            observer = shared
            if observer is None:
                from edgeloop_common.bus.kafka import KafkaBus

                observer = KafkaBus(
                    bootstrap_servers=common.kafka_bootstrap_servers, source="bench", topic_prefix=prefix
                )
            observer.subscribe(DeploymentUpdated, watcher, group="bench-observer")
            if shared is None:
                await observer.start()
            settings = Settings(
                target="kubernetes",
                kubeconfig=kubeconfig_path(),
                namespace=namespace,
                node_groups=",".join(sorted(groups)),
                models_host_path="/var/lib/edgeloop/models",
                common=common,
            )
            app = create_app(settings, bus=shared)
            try:
                async with app.router.lifespan_context(app):
                    for version in range(1, args.promotions + 1):
                        results.append(
                            await promote_once(registry, api, namespace, version, all_nodes, groups, watcher)
                        )
                        print_row(results[-1])
            finally:
                if shared is None:
                    await observer.stop()
    finally:
        client.CoreV1Api(api).delete_namespace(namespace)
    return results


async def promote_once(
    registry: EventBus,
    api: client.ApiClient,
    namespace: str,
    version: int,
    all_nodes: set[str],
    groups: dict[str, list[str]],
    watcher: ReadyWatcher,
) -> Promotion:
    event = ModelPromoted(
        model_name=MODEL, version=version, alias="production", reason="benchmark", promoted_by="bench/rollout.py"
    )
    started = time.monotonic()
    await registry.publish(event)

    async def every_node() -> bool:
        if watcher.failures:
            raise RuntimeError(f"a rollout did not succeed: {watcher.failures}")
        return await asyncio.to_thread(nodes_serving, api, namespace, version) >= all_nodes

    async def every_group() -> bool:
        return all((group, version) in watcher.ready for group in groups)

    on_nodes = await wait_until(every_node, f"version {version} on every edge node", timeout_s=120)
    await wait_until(every_group, f"DeploymentUpdated(ready) of version {version}", timeout_s=120)
    reported = max(watcher.ready[(group, version)] for group in groups)
    return Promotion(version, "create" if version == 1 else "rolling update", on_nodes - started, reported - started)


def print_row(row: Promotion) -> None:
    print(
        f"  version {row.version:>2} ({row.kind:>14}): every edge node ready after {row.all_nodes_ready_s:6.2f} s; "
        f"deployer reported ready after {row.deployer_ready_s:6.2f} s",
        flush=True,
    )


def summarize(results: list[Promotion]) -> dict[str, Any]:
    times = [r.all_nodes_ready_s for r in results]
    worst = max(times)
    return {
        "promotions": len(results),
        "all_nodes_ready_s": {"mean": statistics.mean(times), "median": statistics.median(times), "max": worst},
        "deployer_ready_s_max": max(r.deployer_ready_s for r in results),
        "target_s": TARGET_S,
        "verdict": "PASS" if worst <= TARGET_S else "FAIL",
        "runs": [asdict(r) for r in results],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--promotions", type=int, default=5, help="versions promoted one after the other")
    parser.add_argument("--bus", choices=("kafka", "inprocess"), default="kafka")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    started_here = cluster.status(with_nodes=False).stopped
    try:
        status = cluster.up(echo=lambda message: print(f"[edgeloop kube] {message}", flush=True))
    except KubeError as exc:
        print(f"`edgeloop kube up` failed: {exc}", file=sys.stderr)
        return 2
    groups: dict[str, list[str]] = {}
    for node in status.nodes:
        groups.setdefault(node.group, []).append(node.name)
    api = cluster.api_client()
    try:
        warm = warm_up_edge(api, [node for members in groups.values() for node in members])
        print(f"KWOK plays pods on all {sum(map(len, groups.values()))} edge nodes (waited {warm:.1f} s)")
        print(f"{args.promotions} promotions of {MODEL} to node groups {', '.join(sorted(groups))}, bus: {args.bus}")
        results = asyncio.run(measure(args, api, groups))
    finally:
        api.close()
        if started_here:
            cluster.down(echo=lambda message: print(f"[edgeloop kube] {message}", flush=True))
    summary = summarize(results)
    ready = summary["all_nodes_ready_s"]
    print(
        f"promotion -> new version Ready on every simulated edge node: mean {ready['mean']:.2f} s, "
        f"median {ready['median']:.2f} s, max {ready['max']:.2f} s (target <= {TARGET_S:g} s): {summary['verdict']}"
    )
    print(f"promotion -> DeploymentUpdated(ready) for every group: max {summary['deployer_ready_s_max']:.2f} s")
    if args.json:
        print(json.dumps(summary))
    return 0 if summary["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
