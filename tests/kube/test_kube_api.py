"""The API server's own behaviour: validation, server-side apply, RBAC, the KubeEdge CRDs, helm."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from edgeloop.kube import EDGE_ROLE_LABEL
from kube_helpers import KubeCluster, edge_deployment
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

pytestmark = pytest.mark.kube

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
KUBEEDGE_GROUP, KUBEEDGE_VERSION = "apps.kubeedge.io", "v1alpha1"


def test_an_invalid_deployment_is_rejected_with_the_reason(kube_api: client.ApiClient, namespace: str) -> None:
    manifest = edge_deployment("bad-selector", group=None)
    manifest["spec"]["selector"] = {"matchLabels": {"app": "something-else"}}

    with pytest.raises(ApiException) as refused:
        client.AppsV1Api(kube_api).create_namespaced_deployment(namespace, manifest)

    assert refused.value.status == 422
    assert "`selector` does not match template `labels`" in json.loads(refused.value.body)["message"]


def test_server_side_apply_reports_a_conflict_between_field_managers(
    kube_api: client.ApiClient, namespace: str
) -> None:
    deployments = DynamicClient(kube_api).resources.get(api_version="apps/v1", kind="Deployment")
    manifest = edge_deployment("model", group=None, replicas=2)
    deployments.server_side_apply(body=manifest, namespace=namespace, field_manager="edgeloop-deployer")
    # Another controller (an autoscaler) applies only the field it cares about.
    scaled = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "model"}, "spec": {"replicas": 3}}

    with pytest.raises(ApiException) as conflict:
        deployments.server_side_apply(body=scaled, namespace=namespace, field_manager="an-autoscaler")

    assert conflict.value.status == 409
    message = json.loads(conflict.value.body)["message"]
    assert message == 'Apply failed with 1 conflict: conflict with "edgeloop-deployer": .spec.replicas'
    forced = deployments.server_side_apply(
        body=scaled, namespace=namespace, field_manager="an-autoscaler", force_conflicts=True
    )
    assert forced.spec.replicas == 3
    owners = {entry.manager for entry in forced.metadata.managedFields if "f:replicas" in str(entry.fieldsV1)}
    assert owners == {"an-autoscaler"}


def test_a_namespaced_service_account_is_refused_cluster_scoped_actions(
    kube_api: client.ApiClient, namespace: str, kubectl: Kubectl, kube_cluster: KubeCluster
) -> None:
    _create_deployer_service_account(kube_api, namespace)
    subject = f"system:serviceaccount:{namespace}:deployer"

    def can_i(*args: str) -> str:
        result = kubectl("auth", "can-i", *args, "--as", subject)
        return result.stdout.strip()

    assert can_i("create", "deployments", "-n", namespace) == "yes"
    assert can_i("patch", "deployments", "-n", namespace) == "yes"
    assert can_i("list", "nodes") == "no"
    assert can_i("create", "namespaces") == "no"
    assert can_i("create", "clusterrolebindings") == "no"
    assert can_i("create", "deployments", "-n", "kube-system") == "no"

    # And with the ServiceAccount's own token (signed by the API server's key), not impersonation:
    token = kubectl("create", "token", "deployer", "-n", namespace, "--duration=10m")
    assert token.returncode == 0, token.stderr
    server = client.CoreV1Api(kube_api).api_client.configuration.host
    as_deployer = [
        "kubectl",
        "--kubeconfig=/dev/null",  # nothing but the token: no admin client certificate from a kubeconfig
        f"--server={server}",
        f"--certificate-authority={_ca_file(kube_cluster)}",
        f"--token={token.stdout.strip()}",
    ]
    nodes = subprocess.run([*as_deployer, "get", "nodes"], capture_output=True, text=True, check=False, timeout=60)
    deployments = subprocess.run(
        [*as_deployer, "get", "deployments", "-n", namespace], capture_output=True, text=True, check=False, timeout=60
    )
    assert nodes.returncode != 0
    assert f'User "{subject}" cannot list resource "nodes"' in nodes.stderr
    assert deployments.returncode == 0, deployments.stderr


def test_the_default_node_groups_exist_with_their_member_nodes(
    kube_api: client.ApiClient, kube_cluster: KubeCluster, edge_groups: list[str]
) -> None:
    custom = client.CustomObjectsApi(kube_api)
    for group in edge_groups:
        node_group = custom.get_cluster_custom_object(KUBEEDGE_GROUP, KUBEEDGE_VERSION, "nodegroups", group)
        assert sorted(node_group["spec"]["nodes"]) == sorted(kube_cluster.groups[group])
        assert {(s["nodeName"], s["readyStatus"]) for s in node_group["status"]["nodeStatuses"]} == {
            (node, "Ready") for node in kube_cluster.groups[group]
        }


def test_a_valid_edge_application_is_stored(kube_api: client.ApiClient, namespace: str, edge_groups: list[str]) -> None:
    custom = client.CustomObjectsApi(kube_api)

    created = custom.create_namespaced_custom_object(
        KUBEEDGE_GROUP, KUBEEDGE_VERSION, namespace, "edgeapplications", _edge_application("model", edge_groups)
    )

    scope = created["spec"]["workloadScope"]
    assert [target["name"] for target in scope["targetNodeGroups"]] == edge_groups[:2]
    assert scope["targetNodeGroups"][1]["overriders"]["replicas"] == 1
    # The embedded manifest is kept whole (x-kubernetes-preserve-unknown-fields).
    assert created["spec"]["workloadTemplate"]["manifests"][0]["spec"]["template"]["spec"]["containers"][0]["image"]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda app: app["spec"].pop("workloadScope"), "spec.workloadScope: Required value"),
        (
            lambda app: app["spec"]["workloadScope"]["targetNodeGroups"][0]["overriders"]["imageOverriders"][0].update(
                component="Digest"
            ),
            'Unsupported value: "Digest"',
        ),
        (lambda app: app["spec"]["workloadScope"]["targetNodeGroups"][0].pop("name"), "name: Required value"),
        (
            lambda app: app["spec"]["workloadScope"]["targetNodeGroups"][1]["overriders"].update(replicas="two"),
            'replicas: Invalid value: "string"',
        ),
    ],
    ids=["no-workload-scope", "unknown-image-component", "target-group-without-name", "replicas-not-integer"],
)
def test_an_invalid_edge_application_is_rejected_with_the_reason(
    kube_api: client.ApiClient,
    namespace: str,
    edge_groups: list[str],
    mutate: Callable[[dict[str, Any]], object],
    reason: str,
) -> None:
    application = _edge_application("model", edge_groups)
    mutate(application)

    with pytest.raises(ApiException) as refused:
        client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
            KUBEEDGE_GROUP, KUBEEDGE_VERSION, namespace, "edgeapplications", application
        )

    assert refused.value.status == 422
    assert reason in json.loads(refused.value.body)["message"]


def test_an_invalid_node_group_is_rejected(kube_api: client.ApiClient) -> None:
    bad = {
        "apiVersion": f"{KUBEEDGE_GROUP}/{KUBEEDGE_VERSION}",
        "kind": "NodeGroup",
        "metadata": {"name": "bad-group"},
        "spec": {"nodes": "edge-site-a-0", "matchLabels": {"zone": 7}},
    }

    with pytest.raises(ApiException) as refused:
        client.CustomObjectsApi(kube_api).create_cluster_custom_object(
            KUBEEDGE_GROUP, KUBEEDGE_VERSION, "nodegroups", bad
        )

    message = json.loads(refused.value.body)["message"]
    assert refused.value.status == 422
    assert 'spec.nodes: Invalid value: "string": spec.nodes in body must be of type array' in message
    assert "spec.matchLabels.zone: Invalid value" in message


def test_helm_on_the_test_path_installs_a_chart(
    kube_cluster: KubeCluster, namespace: str, kubectl: Kubectl, tmp_path: Path
) -> None:
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\nkubeVersion: '>=1.30.0-0'\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\n"
        "data:\n  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )

    version = subprocess.run(["helm", "version", "--short"], capture_output=True, text=True, check=False)
    install = subprocess.run(
        ["helm", "install", "probe", str(chart), "-n", namespace, "--wait", "--timeout", "60s"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("v3.")
    assert install.returncode == 0, install.stderr
    assert "STATUS: deployed" in install.stdout
    config_map = kubectl("get", "configmap", "probe-settings", "-n", namespace, "-o", "jsonpath={.data.kubeVersion}")
    assert config_map.stdout == _server_version(kubectl)  # helm asked the API server, as it does in a cluster


def _edge_application(name: str, groups: list[str]) -> dict[str, Any]:
    """An EdgeApplication as KubeEdge documents it: one Deployment, two node groups, per-group overrides."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {EDGE_ROLE_LABEL: ""},
                    "containers": [{"name": "serving", "image": "tensorflow/serving:2.19.0"}],
                },
            },
        },
    }
    return {
        "apiVersion": f"{KUBEEDGE_GROUP}/{KUBEEDGE_VERSION}",
        "kind": "EdgeApplication",
        "metadata": {"name": name},
        "spec": {
            "workloadTemplate": {"manifests": [deployment]},
            "workloadScope": {
                "targetNodeGroups": [
                    {
                        "name": groups[0],
                        "overriders": {
                            "imageOverriders": [{"component": "Tag", "operator": "replace", "value": "2.19.0-gpu"}],
                            "envOverriders": [
                                {
                                    "containerName": "serving",
                                    "operator": "add",
                                    "value": [{"name": "MODEL_NAME", "value": "catdog"}],
                                }
                            ],
                        },
                    },
                    {"name": groups[1], "overriders": {"replicas": 1}},
                ]
            },
        },
    }


def _create_deployer_service_account(api: client.ApiClient, namespace: str) -> None:
    client.CoreV1Api(api).create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="deployer"))
    )
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "deployer"},
            "rules": [
                {
                    "apiGroups": ["apps"],
                    "resources": ["deployments"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch"],
                }
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "deployer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deployer"},
            "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": namespace}],
        },
    )


def _ca_file(kube_cluster: KubeCluster) -> Path:
    return kube_cluster.kubeconfig.parent / "pki" / "ca.crt"


def _server_version(kubectl: Kubectl) -> str:
    result = kubectl("version", "-o", "json")
    return str(json.loads(result.stdout)["serverVersion"]["gitVersion"])
