"""Scheduling onto the simulated KubeEdge edge nodes, through the real scheduler and taints."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest
from edgeloop.kube import EDGE_ROLE_LABEL, EDGE_TAINT_KEY, NODE_GROUP_LABEL
from kube_helpers import KubeCluster, edge_deployment, pod_ready, pods_of, wait_for
from kubernetes import client, utils

pytestmark = pytest.mark.kube

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def test_edge_nodes_are_ready_labelled_and_tainted_like_kubeedge_nodes(
    kubectl: Kubectl, edge_groups: list[str]
) -> None:
    # The simulated nodes (a real node of `up --real-node` has its own test: test_kube_real_node.py).
    result = kubectl(
        "get", "nodes", "-l", f"{EDGE_ROLE_LABEL},app.kubernetes.io/managed-by=edgeloop-kube", "-o", "json"
    )
    assert result.returncode == 0, result.stderr
    nodes = json.loads(result.stdout)["items"]

    assert len(nodes) >= 4
    assert {node["metadata"]["labels"][NODE_GROUP_LABEL] for node in nodes} == set(edge_groups)
    for node in nodes:
        conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert conditions["Ready"] == "True", node["metadata"]["name"]
        assert {"key": EDGE_TAINT_KEY, "effect": "NoSchedule"} in node["spec"]["taints"]
        assert node["metadata"]["labels"]["node-role.kubernetes.io/agent"] == ""


def test_tensorflow_serving_pinned_to_one_group_becomes_ready_there_only(
    kube_api: client.ApiClient, namespace: str, kube_cluster: KubeCluster, edge_groups: list[str]
) -> None:
    target, other = edge_groups[0], edge_groups[1]
    replicas = 2 * len(kube_cluster.groups[target])
    manifest = edge_deployment("tf-serving", group=target, replicas=replicas)
    utils.create_from_dict(kube_api, manifest, namespace=namespace)

    deployment = wait_for(
        lambda: _ready_deployment(kube_api, namespace, "tf-serving", replicas), f"{replicas} ready replicas"
    )

    assert deployment.status.ready_replicas == replicas
    pods = pods_of(kube_api, namespace, "tf-serving")
    assert len(pods) == replicas
    assert all(pod.status.phase == "Running" and pod_ready(pod) for pod in pods)
    assert {pod.spec.node_name for pod in pods} <= set(kube_cluster.groups[target])
    assert not {pod.spec.node_name for pod in pods} & set(kube_cluster.groups[other])


def test_edge_deployment_without_the_edge_toleration_stays_pending(
    kube_api: client.ApiClient, namespace: str, edge_groups: list[str]
) -> None:
    manifest = edge_deployment("no-toleration", group=edge_groups[0], replicas=1, tolerate_edge=False)
    utils.create_from_dict(kube_api, manifest, namespace=namespace)

    pod = wait_for(lambda: _unschedulable_pod(kube_api, namespace, "no-toleration"), "the scheduler to refuse the pod")

    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None
    condition = next(c for c in pod.status.conditions if c.type == "PodScheduled")
    assert condition.reason == "Unschedulable"
    assert EDGE_TAINT_KEY in condition.message  # "... had untolerated taint {node-role.kubernetes.io/edge: }"
    deployment = client.AppsV1Api(kube_api).read_namespaced_deployment("no-toleration", namespace)
    assert not deployment.status.ready_replicas


def _ready_deployment(api: client.ApiClient, namespace: str, name: str, replicas: int) -> client.V1Deployment | None:
    deployment = client.AppsV1Api(api).read_namespaced_deployment(name, namespace)
    return deployment if deployment.status.ready_replicas == replicas else None


def _unschedulable_pod(api: client.ApiClient, namespace: str, app: str) -> client.V1Pod | None:
    for pod in pods_of(api, namespace, app):
        for condition in pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                return pod
    return None
