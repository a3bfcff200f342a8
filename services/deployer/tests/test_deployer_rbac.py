"""The deployer's documented rights are enough, and no more: the Role of helm/edgeloop/templates/deployer-rbac.yaml
applied to a test namespace, and the deployer run with a token of its ServiceAccount (no admin certificate)."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from deployer_kube import MODEL, kube_settings, running_deployer, serving_summary
from deployer_testing import eventually, final_update, phases, promotion
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_deployer.adapters.manifests import workload_name
from kube_helpers import KubeCluster
from kubernetes import client, config, utils
from kubernetes.client.exceptions import ApiException

pytestmark = [pytest.mark.kube, pytest.mark.slow, pytest.mark.usefixtures("edge_pods_run")]

CHART = Path(__file__).resolve().parents[3] / "helm" / "edgeloop"
RELEASE = "edgeloop"
ACCOUNT = f"{RELEASE}-deployer"


def rendered_rbac(namespace: str) -> list[dict[str, Any]]:
    """The chart's deployer-rbac.yaml as helm renders it for a release in ``namespace``."""
    result = subprocess.run(
        [
            "helm",
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            namespace,
            "--show-only",
            "templates/deployer-rbac.yaml",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def service_account_kubeconfig(api: client.ApiClient, kube_cluster: KubeCluster, namespace: str, path: Path) -> Path:
    """A kubeconfig holding nothing but a token of the ServiceAccount (TokenRequest, signed by the API server)."""
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 900}}
    token = client.CoreV1Api(api).create_namespaced_service_account_token(ACCOUNT, namespace, request).status.token
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "edgeloop",
                "cluster": {
                    "server": api.configuration.host,
                    "certificate-authority": str(kube_cluster.kubeconfig.parent / "pki" / "ca.crt"),
                },
            }
        ],
        "users": [{"name": ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": ACCOUNT, "context": {"cluster": "edgeloop", "user": ACCOUNT, "namespace": namespace}}],
        "current-context": ACCOUNT,
    }
    path.write_text(yaml.safe_dump(kubeconfig))
    return path


def http_client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://deployer")  # type: ignore[arg-type]


@pytest.fixture
async def bus() -> AsyncIterator[InProcessBus]:
    events = InProcessBus(source="registry")
    await events.start()
    yield events
    await events.stop()


def test_the_role_is_namespaced_and_has_no_wildcards(namespace: str) -> None:
    documents = rendered_rbac(namespace)

    assert sorted(d["kind"] for d in documents) == ["Role", "RoleBinding", "ServiceAccount"]
    [role] = [d for d in documents if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == namespace
    for rule in role["rules"]:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule
    granted = {
        (group, resource) for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]
    }
    assert granted == {
        ("apps", "deployments"),
        ("apps", "replicasets"),
        ("", "services"),
        ("", "configmaps"),
        ("", "pods"),
        ("apps.kubeedge.io", "edgeapplications"),
    }


async def test_the_deployer_rolls_out_and_deletes_with_only_its_role_and_is_refused_cluster_actions(
    kube_cluster: KubeCluster,
    kube_api: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    bus: InProcessBus,
) -> None:
    utils.create_from_yaml(kube_api, yaml_objects=rendered_rbac(namespace), namespace=namespace)
    kubeconfig = service_account_kubeconfig(kube_api, kube_cluster, namespace, tmp_path / "deployer.kubeconfig")
    settings = kube_settings(kubeconfig, namespace, tmp_path)

    async with running_deployer(settings, bus) as app, http_client(app) as http:
        ready = await http.get("/readyz")
        await bus.publish(promotion(1, group="site-a"))
        await eventually(lambda: final_update(bus, "site-a") is not None, what="the rollout", timeout_s=60)
        rolled_out = final_update(bus, "site-a")
        serving = serving_summary(kube_api, namespace, "site-a")
        deleted = await http.delete(f"/v1/deployments/{MODEL}/site-a")

    assert ready.status_code == 200, ready.text
    assert rolled_out is not None and (rolled_out.phase, rolled_out.actual_version) == ("ready", 1), rolled_out
    assert serving == [(node, "1", True) for node in sorted(kube_cluster.groups["site-a"])]
    assert deleted.status_code == 200, deleted.text
    assert client.AppsV1Api(kube_api).list_namespaced_deployment(namespace).items == []

    as_deployer = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        refusals = _refusals(as_deployer, namespace)
    finally:
        as_deployer.close()
    subject = f"system:serviceaccount:{namespace}:{ACCOUNT}"
    expected = {
        "list nodes": 'cannot list resource "nodes" in API group "" at the cluster scope',
        "create namespaces": 'cannot create resource "namespaces" in API group "" at the cluster scope',
        "list deployments in kube-system": (
            'cannot list resource "deployments" in API group "apps" in the namespace "kube-system"'
        ),
        "create clusterroles": (
            'cannot create resource "clusterroles" in API group "rbac.authorization.k8s.io" at the cluster scope'
        ),
        "read secrets here": f'cannot list resource "secrets" in API group "" in the namespace "{namespace}"',
    }
    assert sorted(refusals) == sorted(expected)
    for what, message in refusals.items():
        assert f'User "{subject}" {expected[what]}' in message, (what, message)


async def test_the_edgeapplication_workload_works_with_the_same_role(
    kube_cluster: KubeCluster, kube_api: client.ApiClient, namespace: str, tmp_path: Path, bus: InProcessBus
) -> None:
    utils.create_from_yaml(kube_api, yaml_objects=rendered_rbac(namespace), namespace=namespace)
    kubeconfig = service_account_kubeconfig(kube_api, kube_cluster, namespace, tmp_path / "deployer.kubeconfig")
    settings = kube_settings(kubeconfig, namespace, tmp_path, workload="edgeapplication")

    async with running_deployer(settings, bus) as app:
        await bus.publish(promotion(2, group="site-b"))
        await eventually(lambda: final_update(bus, "site-b") is not None, what="the EdgeApplication applied")
        async with http_client(app) as http:
            deleted = await http.delete(f"/v1/deployments/{MODEL}/site-b")

    assert [phase for phase, _, _ in phases(bus, "site-b")] == ["pending", "progressing", "ready", "deleted"]
    assert deleted.status_code == 200, deleted.text
    custom = client.CustomObjectsApi(kube_api)
    with pytest.raises(ApiException) as gone:
        custom.get_namespaced_custom_object(
            "apps.kubeedge.io", "v1alpha1", namespace, "edgeapplications", workload_name(MODEL, "site-b")
        )
    assert gone.value.status == 404


def _refusals(api: client.ApiClient, namespace: str) -> dict[str, str]:
    core, apps, rbac = client.CoreV1Api(api), client.AppsV1Api(api), client.RbacAuthorizationV1Api(api)
    attempts = {
        "list nodes": lambda: core.list_node(),
        "create namespaces": lambda: core.create_namespace({"metadata": {"name": "not-allowed"}}),
        "list deployments in kube-system": lambda: apps.list_namespaced_deployment("kube-system"),
        "create clusterroles": lambda: rbac.create_cluster_role({"metadata": {"name": "not-allowed"}, "rules": []}),
        "read secrets here": lambda: core.list_namespaced_secret(namespace),
    }
    refused: dict[str, str] = {}
    for what, attempt in attempts.items():
        try:
            attempt()
        except ApiException as exc:
            assert exc.status == 403, (what, exc.status, exc.body)
            refused[what] = yaml.safe_load(exc.body)["message"]
        else:
            refused[what] = "allowed"
    return refused
