"""Helpers for the Kubernetes tests: polling, the edge Deployment the deployer writes, pod state."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from edgeloop.kube import edge
from kubernetes import client

T = TypeVar("T")

# On 2 shared cores a controller may lag a few seconds behind; nothing here should take longer.
WAIT_SECONDS = 90.0


@dataclass(frozen=True)
class KubeCluster:
    """What tests need of the running control plane."""

    kubeconfig: Path
    bin_dir: Path
    groups: dict[str, list[str]]  # node group -> its simulated edge nodes

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": f"{self.bin_dir}:{os.environ['PATH']}"}


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = WAIT_SECONDS, interval: float = 0.5) -> T:
    """Poll probe until it returns something truthy; fail naming ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last seen: {last!r})", pytrace=False)


def edge_deployment(
    name: str,
    *,
    group: str | None,
    replicas: int = 2,
    image: str = "tensorflow/serving:2.19.0",
    tolerate_edge: bool = True,
    annotations: dict[str, str] | None = None,
    progress_deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """A Deployment bound for the edge nodes of ``group`` (or any edge node), as the deployer writes them."""
    pod_spec: dict[str, Any] = {
        "nodeSelector": edge.node_selector(group),
        "containers": [{"name": "serving", "image": image, "ports": [{"containerPort": 8501, "name": "http"}]}],
    }
    if tolerate_edge:
        pod_spec["tolerations"] = [edge.EDGE_TOLERATION]
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
    }
    if annotations:
        spec["template"]["metadata"]["annotations"] = annotations
    if progress_deadline_seconds is not None:
        spec["progressDeadlineSeconds"] = progress_deadline_seconds
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec}


def pods_of(api: client.ApiClient, namespace: str, app: str) -> list[client.V1Pod]:
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"app={app}").items
    return [pod for pod in pods if pod.metadata.deletion_timestamp is None]


def pod_ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def describe_namespace(core: client.CoreV1Api, namespace: str, *, log_lines: int = 40) -> str:
    """What `kubectl describe pods` and `kubectl logs` would say, for a failure message: the nodes, each pod's phase,
    conditions and container states (with restarts and the last termination), the namespace's events, and the
    end of each container's log (the previous run's too when it restarted)."""
    lines: list[str] = []
    pods = core.list_namespaced_pod(namespace).items
    for node_name in sorted({pod.spec.node_name for pod in pods if pod.spec.node_name}):
        node = core.read_node(node_name)
        conditions = ", ".join(f"{c.type}={c.status}" for c in node.status.conditions or [])
        taints = ", ".join(f"{t.key}:{t.effect}" for t in node.spec.taints or []) or "none"
        lines.append(f"node {node_name}: {conditions}; taints {taints}; allocatable {node.status.allocatable}")
    for pod in pods:
        status = pod.status
        lines.append(f"pod {pod.metadata.name} on {pod.spec.node_name}: {status.phase} {status.reason or ''}".rstrip())
        for condition in status.conditions or []:
            lines.append(f"  condition {condition.type}={condition.status} {condition.reason or ''}".rstrip())
        for container in [*(status.init_container_statuses or []), *(status.container_statuses or [])]:
            lines.append(
                f"  container {container.name}: ready={container.ready} restarts={container.restart_count} "
                f"state={container.state.to_dict()} last={container.last_state.to_dict()}"
            )
            for previous in (False, True) if container.restart_count else (False,):
                try:
                    log = core.read_namespaced_pod_log(
                        pod.metadata.name, namespace, container=container.name, tail_lines=log_lines, previous=previous
                    )
                except client.ApiException as exc:
                    log = f"(no log: {exc.reason})"
                label = "previous log" if previous else "log"
                lines.append(f"  {label} of {container.name}:\n" + "\n".join(f"    {x}" for x in log.splitlines()))
    for event in core.list_namespaced_event(namespace).items:
        lines.append(
            f"event {event.involved_object.kind}/{event.involved_object.name}: {event.type} {event.reason} "
            f"x{event.count or 1}: {event.message}"
        )
    return "\n".join(lines) or f"(nothing in namespace {namespace})"


def host_folder_claim(core: client.CoreV1Api, namespace: str, claim: str, folder: Path) -> str:
    """A PersistentVolumeClaim ``claim`` bound to ``folder`` on the real node (a hostPath volume, ReadWriteMany: no
    provisioner runs here). Returns the PersistentVolume's name, for the caller to delete (it is not namespaced)."""
    volume = f"{namespace}-{claim}"
    core.create_persistent_volume(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume, "labels": {"edgeloop.io/test": "1"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(folder), "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    return volume


def _authorized(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def get_json(url: str, *, token: str | None = None) -> dict[str, Any] | None:
    """The JSON at ``url``, or None while it does not answer (for ``wait_for``)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=_authorized(token)), timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def post_json(url: str, body: dict[str, Any], *, token: str | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"} | _authorized(token)
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]
