"""Deployment rollouts on the edge nodes, driven by the real deployment controller."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest
from edgeloop.kube import FAIL_READINESS_ANNOTATION
from kube_helpers import edge_deployment, pod_ready, pods_of, wait_for
from kubernetes import client, utils

pytestmark = pytest.mark.kube

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
OLD_IMAGE = "tensorflow/serving:2.18.0"
NEW_IMAGE = "tensorflow/serving:2.19.0"


def test_rolling_update_replaces_every_pod(kube_api: client.ApiClient, namespace: str, edge_groups: list[str]) -> None:
    apps = client.AppsV1Api(kube_api)
    manifest = edge_deployment("model", group=edge_groups[0], image=OLD_IMAGE)
    utils.create_from_dict(kube_api, manifest, namespace=namespace)
    wait_for(lambda: _rollout_complete(apps, namespace, "model"), "the first rollout")
    old_pods = {pod.metadata.uid for pod in pods_of(kube_api, namespace, "model")}

    apps.patch_namespaced_deployment("model", namespace, _image_patch(NEW_IMAGE))
    deployment = wait_for(lambda: _rollout_complete(apps, namespace, "model"), "the rolling update")

    new_pods = pods_of(kube_api, namespace, "model")
    assert deployment.status.updated_replicas == deployment.status.ready_replicas == 2
    assert len(new_pods) == 2
    assert not {pod.metadata.uid for pod in new_pods} & old_pods
    assert all(pod.spec.containers[0].image == NEW_IMAGE and pod_ready(pod) for pod in new_pods)
    replica_sets = apps.list_namespaced_replica_set(namespace, label_selector="app=model").items
    assert sorted((rs.spec.template.spec.containers[0].image, rs.spec.replicas) for rs in replica_sets) == [
        (OLD_IMAGE, 0),
        (NEW_IMAGE, 2),
    ]


def test_failing_readiness_blocks_the_rollout_until_it_is_rolled_back(
    kube_api: client.ApiClient, namespace: str, edge_groups: list[str], kubectl: Kubectl
) -> None:
    apps = client.AppsV1Api(kube_api)
    manifest = edge_deployment("model", group=edge_groups[0], image=OLD_IMAGE, progress_deadline_seconds=8)
    utils.create_from_dict(kube_api, manifest, namespace=namespace)
    wait_for(lambda: _rollout_complete(apps, namespace, "model"), "the first rollout")

    broken = _image_patch(NEW_IMAGE)
    broken["spec"]["template"]["metadata"] = {"annotations": {FAIL_READINESS_ANNOTATION: "true"}}
    apps.patch_namespaced_deployment("model", namespace, broken)
    stalled = wait_for(
        lambda: _progressing_reason(apps, namespace, "model", "ProgressDeadlineExceeded"), "the progress deadline"
    )

    # The new pod runs but is never Ready, so maxUnavailable=0 keeps both old pods serving.
    assert stalled.status.available_replicas == 2
    pods = pods_of(kube_api, namespace, "model")
    serving = sorted(pod.spec.containers[0].image for pod in pods if pod_ready(pod))
    stuck = [pod for pod in pods if not pod_ready(pod)]
    assert serving == [OLD_IMAGE, OLD_IMAGE]
    assert [(pod.spec.containers[0].image, pod.status.phase) for pod in stuck] == [(NEW_IMAGE, "Running")]
    status = kubectl("rollout", "status", "deployment/model", "-n", namespace, "--timeout=5s")
    assert status.returncode != 0
    assert "exceeded its progress deadline" in status.stderr

    undo = kubectl("rollout", "undo", "deployment/model", "-n", namespace)
    assert undo.returncode == 0, undo.stderr
    wait_for(lambda: _progressing_reason(apps, namespace, "model", "NewReplicaSetAvailable"), "the rollback")
    wait_for(lambda: len(pods_of(kube_api, namespace, "model")) == 2, "the stuck pod to go")
    pods = pods_of(kube_api, namespace, "model")
    assert all(pod.spec.containers[0].image == OLD_IMAGE and pod_ready(pod) for pod in pods)


def _image_patch(image: str) -> dict[str, object]:
    return {"spec": {"template": {"spec": {"containers": [{"name": "serving", "image": image}]}}}}


def _rollout_complete(apps: client.AppsV1Api, namespace: str, name: str) -> client.V1Deployment | None:
    """What `kubectl rollout status` waits for: every replica updated, available, and no old one left."""
    deployment = apps.read_namespaced_deployment(name, namespace)
    status, wanted = deployment.status, deployment.spec.replicas
    done = (
        (status.observed_generation or 0) >= deployment.metadata.generation
        and status.updated_replicas == wanted
        and status.available_replicas == wanted
        and status.replicas == wanted
    )
    return deployment if done else None


def _progressing_reason(apps: client.AppsV1Api, namespace: str, name: str, reason: str) -> client.V1Deployment | None:
    deployment = apps.read_namespaced_deployment(name, namespace)
    if (deployment.status.observed_generation or 0) < deployment.metadata.generation:
        return None
    conditions = {c.type: c for c in deployment.status.conditions or []}
    progressing = conditions.get("Progressing")
    return deployment if progressing is not None and progressing.reason == reason else None
