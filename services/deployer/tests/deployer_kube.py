"""Helpers of the deployer's tests against the real Kubernetes API: settings, a running deployer, what runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from deployer_testing import standalone_settings
from edgeloop_common.bus.base import EventBus
from edgeloop_deployer.adapters.manifests import INSTANCE_LABEL, VERSION_ANNOTATION, workload_name
from edgeloop_deployer.app import create_app
from edgeloop_deployer.settings import Settings
from fastapi import FastAPI
from kubernetes import client

MODEL = "catdog"


def kube_settings(kubeconfig: Path, namespace: str, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "target": "kubernetes",
        "kubeconfig": kubeconfig,
        "namespace": namespace,
        "models_host_path": "/var/lib/edgeloop/models",
        "rollout_timeout_s": 60.0,
        "poll_interval_s": 0.25,
    }
    values.update(overrides)
    return standalone_settings(data_dir, **values)


@asynccontextmanager
async def running_deployer(settings: Settings, bus: EventBus | None) -> AsyncIterator[FastAPI]:
    app = create_app(settings, bus=bus)
    async with app.router.lifespan_context(app):
        yield app


def serving_pods(api: client.ApiClient, namespace: str, group: str, model: str = MODEL) -> list[client.V1Pod]:
    selector = f"{INSTANCE_LABEL}={workload_name(model, group)}"
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
    return [pod for pod in pods if pod.metadata.deletion_timestamp is None]


def pod_ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def pod_version(pod: client.V1Pod) -> str | None:
    return (pod.metadata.annotations or {}).get(VERSION_ANNOTATION)


def serving_summary(api: client.ApiClient, namespace: str, group: str) -> list[tuple[str, str | None, bool]]:
    """(node, version annotation, Ready) of each pod serving the model in ``group``, sorted."""
    return sorted((pod.spec.node_name, pod_version(pod), pod_ready(pod)) for pod in serving_pods(api, namespace, group))


def deployment_of(api: client.ApiClient, namespace: str, group: str, model: str = MODEL) -> dict[str, Any]:
    apps = client.AppsV1Api(api)
    deployment = apps.read_namespaced_deployment(workload_name(model, group), namespace)
    return dict(api.sanitize_for_serialization(deployment))
