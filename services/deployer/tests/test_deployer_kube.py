"""The deployer against the real Kubernetes control plane (``edgeloop kube up``) with simulated KubeEdge edge nodes.

Events go through an InProcessBus (fast); test_deployer_kafka.py does the same over the real Kafka.
Each test has its own namespace.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from deployer_kube import MODEL, deployment_of, kube_settings, running_deployer, serving_pods, serving_summary
from deployer_testing import eventually, final_update, phases, promotion, updates
from edgeloop.kube import FAIL_READINESS_ANNOTATION
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_deployer.adapters.manifests import FIELD_MANAGER, workload_name
from kube_helpers import KubeCluster
from kubernetes import client

pytestmark = [pytest.mark.kube, pytest.mark.slow, pytest.mark.usefixtures("edge_pods_run")]


@pytest.fixture
async def bus() -> AsyncIterator[InProcessBus]:
    events = InProcessBus(source="registry")
    await events.start()
    yield events
    await events.stop()


def http(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://deployer")  # type: ignore[arg-type]


async def finished(bus: InProcessBus, group: str, count: int = 1, timeout_s: float = 60.0) -> None:
    """Wait until ``count`` rollouts of ``group`` have ended (ready, failed, rolled_back, deleted)."""
    ends = ("ready", "failed", "rolled_back", "deleted")
    await eventually(
        lambda: sum(phase in ends for phase, _, _ in phases(bus, group)) >= count,
        what=f"{count} finished rollout(s) in {group}",
        timeout_s=timeout_s,
    )


async def test_a_promotion_for_site_a_runs_the_version_on_site_a_nodes_only(
    kube_cluster: KubeCluster, kube_api: client.ApiClient, namespace: str, tmp_path: Path, bus: InProcessBus
) -> None:
    settings = kube_settings(kube_cluster.kubeconfig, namespace, tmp_path)
    async with running_deployer(settings, bus):
        await bus.publish(promotion(1, group="site-a"))
        await finished(bus, "site-a")

    assert phases(bus, "site-a") == [("pending", 1, None), ("progressing", 1, None), ("ready", 1, 1)]
    assert phases(bus, "site-b") == []
    ready = final_update(bus, "site-a")
    assert ready is not None and ready.reason == "2/2 pods of version 1 ready"
    # What runs: two Ready pods of version 1, one on each site-a node, none anywhere else.
    assert serving_summary(kube_api, namespace, "site-a") == [
        (node, "1", True) for node in sorted(kube_cluster.groups["site-a"])
    ]
    assert [d.metadata.name for d in client.AppsV1Api(kube_api).list_namespaced_deployment(namespace).items] == [
        workload_name(MODEL, "site-a")
    ]
    # What was applied: pinned to the group's edge nodes and to the version.
    deployment = deployment_of(kube_api, namespace, "site-a")
    pod_spec = deployment["spec"]["template"]["spec"]
    assert deployment["metadata"]["annotations"]["edgeloop.io/model-version"] == "1"
    assert pod_spec["nodeSelector"] == {"node-role.kubernetes.io/edge": "", "apps.kubeedge.io/belonging-to": "site-a"}
    assert {"key": "node-role.kubernetes.io/edge", "operator": "Exists", "effect": "NoSchedule"} in pod_spec[
        "tolerations"
    ]
    container = pod_spec["containers"][0]
    assert container["image"] == "tensorflow/serving:2.19.0"
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/v1/models/catdog/versions/1",
        "port": "rest",
        "scheme": "HTTP",
    }
    assert "--model_config_file=/etc/edgeloop/serving/models.config" in container["args"]
    assert container["resources"]["requests"] == {"cpu": "250m", "memory": "512Mi"}
    assert {
        m.manager
        for m in client.AppsV1Api(kube_api)
        .read_namespaced_deployment(workload_name(MODEL, "site-a"), namespace)
        .metadata.managed_fields
        if m.operation == "Apply"
    } == {FIELD_MANAGER}
    config = client.CoreV1Api(kube_api).read_namespaced_config_map(f"{workload_name(MODEL, 'site-a')}-v1", namespace)
    assert "model_version_policy { specific { versions: 1 } }" in config.data["models.config"]
    service = client.CoreV1Api(kube_api).read_namespaced_service(workload_name(MODEL, "site-a"), namespace)
    assert sorted((p.name, p.port) for p in service.spec.ports) == [("grpc", 8500), ("rest", 8501)]
    assert service.spec.type == "ClusterIP"
    assert service.spec.selector == deployment["spec"]["selector"]["matchLabels"]
    # Every update names that Service as the group's model-server endpoint.
    endpoint = f"http://{workload_name(MODEL, 'site-a')}.{namespace}.svc:8501"
    assert [event.endpoint for event in updates(bus, group="site-a")] == [endpoint] * 3


async def test_promoting_a_new_version_rolls_every_pod_over_to_it(
    kube_cluster: KubeCluster, kube_api: client.ApiClient, namespace: str, tmp_path: Path, bus: InProcessBus
) -> None:
    settings = kube_settings(kube_cluster.kubeconfig, namespace, tmp_path)
    async with running_deployer(settings, bus):
        await bus.publish(promotion(1, group="site-b"))
        await finished(bus, "site-b", 1)
        old_pods = {pod.metadata.uid for pod in serving_pods(kube_api, namespace, "site-b")}
        await bus.publish(promotion(2, group="site-b"))
        await finished(bus, "site-b", 2)

    assert phases(bus, "site-b")[3:] == [("pending", 2, 1), ("progressing", 2, 1), ("ready", 2, 2)]
    pods = serving_pods(kube_api, namespace, "site-b")
    assert not {pod.metadata.uid for pod in pods} & old_pods
    assert serving_summary(kube_api, namespace, "site-b") == [
        (node, "2", True) for node in sorted(kube_cluster.groups["site-b"])
    ]
    replica_sets = client.AppsV1Api(kube_api).list_namespaced_replica_set(namespace).items
    assert sorted(
        (rs.spec.template.metadata.annotations["edgeloop.io/model-version"], rs.spec.replicas) for rs in replica_sets
    ) == [("1", 0), ("2", 2)]


async def test_a_version_failing_readiness_is_rolled_back_after_the_progress_deadline(
    kube_cluster: KubeCluster, kube_api: client.ApiClient, namespace: str, tmp_path: Path, bus: InProcessBus
) -> None:
    settings = kube_settings(
        kube_cluster.kubeconfig,
        namespace,
        tmp_path,
        progress_deadline_s=4,
        extra_pod_annotations={"2": {FAIL_READINESS_ANNOTATION: "true"}},
    )
    async with running_deployer(settings, bus) as app:
        await bus.publish(promotion(1, group="site-a"))
        await finished(bus, "site-a", 1)
        await bus.publish(promotion(2, group="site-a"))
        await finished(bus, "site-a", 2)
        async with http(app) as api:
            detail = (await api.get(f"/v1/deployments/{MODEL}/site-a")).json()

    rolled_back = final_update(bus, "site-a")
    assert rolled_back is not None
    assert (rolled_back.phase, rolled_back.desired_version, rolled_back.actual_version) == ("rolled_back", 2, 1)
    assert rolled_back.reason.startswith("version 2 did not become ready: ")
    assert f'ReplicaSet "{workload_name(MODEL, "site-a")}-' in rolled_back.reason
    assert "has timed out progressing" in rolled_back.reason
    assert "on edge-site-a-" in rolled_back.reason and "not ready: readiness probe failed" in rolled_back.reason
    assert rolled_back.reason.endswith("; rolled back to version 1")
    assert (detail["actual_version"], detail["phase"]) == (1, "rolled_back")
    assert [(r["version"], r["phase"]) for r in detail["rollouts"]] == [(2, "rolled_back"), (1, "ready")]
    # The Deployment serves version 1 again, from both site-a nodes, and the stuck pod is gone.
    assert deployment_of(kube_api, namespace, "site-a")["metadata"]["annotations"]["edgeloop.io/model-version"] == "1"
    await eventually(
        lambda: (
            serving_summary(kube_api, namespace, "site-a")
            == [(node, "1", True) for node in sorted(kube_cluster.groups["site-a"])]
        ),
        what="only version 1 pods left",
    )


async def test_http_deploy_with_failing_pods_times_out_rolls_back_and_delete_removes_everything(
    kube_cluster: KubeCluster, kube_api: client.ApiClient, namespace: str, tmp_path: Path, bus: InProcessBus
) -> None:
    # The Deployment's own progress deadline is set far beyond the deployer's timeout, so the deployer's
    # timeout is what fires (by default the two are equal and race each other).
    settings = kube_settings(kube_cluster.kubeconfig, namespace, tmp_path, rollout_timeout_s=5, progress_deadline_s=600)
    name = workload_name(MODEL, "site-b")
    async with running_deployer(settings, bus) as app, http(app) as api:
        first = await api.post("/v1/deployments", json={"model_name": MODEL, "version": 3, "node_group": "site-b"})
        await finished(bus, "site-b", 1)
        broken = await api.post(
            "/v1/deployments",
            json={
                "model_name": MODEL,
                "version": 4,
                "node_group": "site-b",
                "pod_annotations": {FAIL_READINESS_ANNOTATION: "true"},
            },
        )
        await finished(bus, "site-b", 2)
        rolled_back = final_update(bus, "site-b")
        deleted = await api.delete(f"/v1/deployments/{MODEL}/site-b")
        listing = (await api.get("/v1/deployments")).json()

    assert (first.status_code, broken.status_code) == (202, 202)
    assert rolled_back is not None and (rolled_back.phase, rolled_back.actual_version) == ("rolled_back", 3)
    assert "not ready within the rollout timeout of 5 s" in rolled_back.reason
    assert "on edge-site-b-" in rolled_back.reason and "not ready: readiness probe failed" in rolled_back.reason
    assert deleted.status_code == 200, deleted.text
    assert final_update(bus, "site-b") is not None and phases(bus, "site-b")[-1] == ("deleted", None, None)
    assert [(d["node_group"], d["phase"], d["actual_version"]) for d in listing["deployments"]] == [
        ("site-b", "deleted", None)
    ]
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    assert apps.list_namespaced_deployment(namespace).items == []
    assert [s.metadata.name for s in core.list_namespaced_service(namespace).items] == []
    assert [c.metadata.name for c in core.list_namespaced_config_map(namespace).items if name in c.metadata.name] == []
    await eventually(lambda: serving_pods(kube_api, namespace, "site-b") == [], what="the pods to go")


async def test_an_object_of_another_owner_is_not_taken_over(
    kube_cluster: KubeCluster, kube_api: client.ApiClient, namespace: str, tmp_path: Path, bus: InProcessBus
) -> None:
    name = workload_name(MODEL, "site-a")
    foreign = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "theirs"}},
            "template": {
                "metadata": {"labels": {"app": "theirs"}},
                "spec": {"containers": [{"name": "x", "image": "x"}]},
            },
        },
    }
    client.AppsV1Api(kube_api).create_namespaced_deployment(namespace, foreign, field_manager="someone-else")
    settings = kube_settings(kube_cluster.kubeconfig, namespace, tmp_path)
    async with running_deployer(settings, bus):
        await bus.publish(promotion(1, group="site-a"))
        await finished(bus, "site-a")

    failed = final_update(bus, "site-a")
    assert failed is not None and failed.phase == "failed"
    assert f"Deployment {name} exists and is not managed by edgeloop-deployer; not taking it over" in failed.reason
    assert client.AppsV1Api(kube_api).read_namespaced_deployment(name, namespace).spec.replicas == 3


async def test_the_edgeapplication_workload_is_applied_per_group_and_reported(
    kube_cluster: KubeCluster, kube_api: client.ApiClient, namespace: str, tmp_path: Path, bus: InProcessBus
) -> None:
    settings = kube_settings(kube_cluster.kubeconfig, namespace, tmp_path, workload="edgeapplication")
    async with running_deployer(settings, bus):
        await bus.publish(promotion(5))
        await finished(bus, "site-a")
        await finished(bus, "site-b")

    custom = client.CustomObjectsApi(kube_api)
    applications = custom.list_namespaced_custom_object("apps.kubeedge.io", "v1alpha1", namespace, "edgeapplications")
    by_name = {item["metadata"]["name"]: item for item in applications["items"]}
    assert sorted(by_name) == [workload_name(MODEL, "site-a"), workload_name(MODEL, "site-b")]
    for group in ("site-a", "site-b"):
        spec = by_name[workload_name(MODEL, group)]["spec"]
        assert spec["workloadScope"] == {"targetNodeGroups": [{"name": group}]}
        kinds = [manifest["kind"] for manifest in spec["workloadTemplate"]["manifests"]]
        assert kinds == ["ConfigMap", "Deployment", "Service"]
        template = spec["workloadTemplate"]["manifests"][1]["spec"]["template"]
        assert template["metadata"]["annotations"]["edgeloop.io/model-version"] == "5"
        assert template["spec"]["nodeSelector"]["apps.kubeedge.io/belonging-to"] == group
        update = final_update(bus, group)
        assert update is not None and (update.phase, update.actual_version) == ("ready", 5)
        assert "its rollout is KubeEdge's to report" in update.reason
    # No KubeEdge controller runs here: nothing expands the EdgeApplications into Deployments.
    assert client.AppsV1Api(kube_api).list_namespaced_deployment(namespace).items == []
    assert json.dumps(by_name).count('"edgeloop.io/model-version": "5"') >= 2


async def test_the_lite_server_for_arm_nodes_is_pinned_by_its_environment(
    kube_cluster: KubeCluster, kube_api: client.ApiClient, namespace: str, tmp_path: Path, bus: InProcessBus
) -> None:
    settings = kube_settings(kube_cluster.kubeconfig, namespace, tmp_path, server_kind="edgeloop-lite", replicas=1)
    async with running_deployer(settings, bus):
        await bus.publish(promotion(3, group="site-b"))
        await finished(bus, "site-b")

    assert phases(bus, "site-b")[-1] == ("ready", 3, 3)
    container = deployment_of(kube_api, namespace, "site-b")["spec"]["template"]["spec"]["containers"][0]
    assert (container["image"], container["args"]) == ("edgeloop:0.1.0", ["model-server"])
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["EDGELOOP_MODEL_SERVER_MODEL_VERSION_POLICY"] == "specific:3"
    [(node, version, ready)] = serving_summary(kube_api, namespace, "site-b")
    assert node in kube_cluster.groups["site-b"] and (version, ready) == ("3", True)
    assert (
        client.CoreV1Api(kube_api).list_namespaced_config_map(namespace, label_selector="edgeloop.io/model").items == []
    )
