"""EdgeLoop's own Helm chart, installed into the real control plane with simulated edge nodes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from kube_helpers import KubeCluster, wait_for
from kubernetes import client

pytestmark = pytest.mark.kube

CHART = Path(__file__).resolve().parents[2] / "helm" / "edgeloop"


def _helm(cluster: KubeCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["helm", *args], capture_output=True, text=True, timeout=120, env=cluster.env(), check=False)


def test_the_chart_lints_and_installs_with_the_model_server_on_its_node_group_only(
    kube_cluster: KubeCluster, kube_api: client.ApiClient, namespace: str, edge_groups: list[str]
) -> None:
    lint = _helm(kube_cluster, "lint", str(CHART))
    assert lint.returncode == 0, lint.stdout + lint.stderr

    group = edge_groups[0]
    core = client.CoreV1Api(kube_api)
    # The chart expects the database secret to exist; an operator creates it.
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="edgeloop-database"),
            string_data={"databaseUrl": "postgresql+psycopg://edgeloop:edgeloop@postgres:5432/edgeloop"},
        ),
    )
    install = _helm(
        kube_cluster, "install", "loop", str(CHART), "-n", namespace, "--set", f"modelServer.nodeGroup={group}"
    )
    assert install.returncode == 0, install.stdout + install.stderr

    apps = client.AppsV1Api(kube_api)
    names = sorted(deployment.metadata.name for deployment in apps.list_namespaced_deployment(namespace).items)
    assert {"loop-ingest", "loop-inference-gateway", "loop-model-server"} <= set(names), names

    def model_server_pods_running() -> list[client.V1Pod] | None:
        pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=model-server").items
        return pods if pods and all(pod.status.phase == "Running" for pod in pods) else None

    pods = wait_for(model_server_pods_running, "the model server's pods running")
    edge_nodes = set(kube_cluster.groups[group])
    assert {pod.spec.node_name for pod in pods} <= edge_nodes, (
        f"model server pods on {[pod.spec.node_name for pod in pods]}, expected only nodes of {group}: {edge_nodes}"
    )
