"""The fixtures of tests/kube (the control plane of ``edgeloop kube up``, a fresh namespace per test), reused.

tests/kube/conftest.py is loaded under its own module name and its fixtures re-exported here, so the
deployer's tests start (and, if they started it, stop) the same control plane the same way.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

KUBE_TESTS = Path(__file__).resolve().parents[3] / "tests" / "kube"
if str(KUBE_TESTS) not in sys.path:
    sys.path.insert(0, str(KUBE_TESTS))  # kube_helpers, as tests/kube imports it

_spec = importlib.util.spec_from_file_location("edgeloop_kube_fixtures", KUBE_TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
_kube_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_kube_fixtures)

kube_cluster = _kube_fixtures.kube_cluster
edge_groups = _kube_fixtures.edge_groups
kube_api = _kube_fixtures.kube_api
namespace = _kube_fixtures.namespace
kubectl = _kube_fixtures.kubectl
wait_for = sys.modules["kube_helpers"].wait_for


@pytest.fixture(scope="session")
def edge_pods_run(kube_cluster: Any, kube_api: client.ApiClient) -> None:
    """Wait until KWOK plays the pods of every edge node.

    ``edgeloop kube up`` returns when the nodes are Ready, but a KWOK that was just (re)started acts on the
    pods of a node only once it holds the node's Lease, which can take until the previous holder's lease
    runs out (~20 s seen after down + up). Rollout timings and deadlines in these tests are seconds, so
    they start once a probe pod on each edge node has become Ready.
    """
    core = client.CoreV1Api(kube_api)
    name = f"edgeloop-warmup-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        wait_for(lambda: _has_default_service_account(core, name), f"ServiceAccount default in {name}")
        nodes = [node for members in kube_cluster.groups.values() for node in members]
        for node in nodes:
            core.create_namespaced_pod(name, _probe_pod(node))
        wait_for(
            lambda: all(_ready(core.read_namespaced_pod(f"probe-{node}", name)) for node in nodes),
            "a probe pod Ready on every edge node",
            timeout=120,
        )
    finally:
        core.delete_namespace(name)


def _probe_pod(node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"probe-{node}"},
        "spec": {
            "nodeName": node,
            "tolerations": [{"key": "node-role.kubernetes.io/edge", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "probe", "image": "busybox"}],
        },
    }


def _ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def _has_default_service_account(core: client.CoreV1Api, namespace: str) -> bool:
    return any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(namespace).items)
