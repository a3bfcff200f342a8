"""The real node (``edgeloop kube up --real-node``): kubelet + containerd + kube-proxy beside the simulated nodes,
running the EdgeLoop image built locally (``edgeloop images build``), answering through a Service from the host.

The first run on a machine builds the image (Debian rootfs and pip: ~10 to 15 min on 2 busy cores); later runs
reuse it (cached by content) and take about a minute, most of it TensorFlow starting inside the pods.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from edgeloop import images
from edgeloop.kube import edge, node
from edgeloop.paths import repo_root
from kube_helpers import KubeCluster, describe_namespace, get_json, host_folder_claim, post_json, wait_for
from kubernetes import client

pytestmark = [pytest.mark.kube, pytest.mark.slow]

GROUP = node.DEFAULT_GROUP
MODEL = "affine"
# Run in the init container with the image's own TensorFlow: a SavedModel computing y = 2x + 1.
WRITE_MODEL = f"""
import tensorflow as tf
class Affine(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def serve(self, x):
        return {{"y": 2.0 * x + 1.0}}
model = Affine()
tf.saved_model.save(model, "/models/{MODEL}/1", signatures={{"serving_default": model.serve}})
"""
FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
# What the chart asks of every container (issue 12): a numeric non-root user, nothing writable but mounts.
SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": images.USER_ID,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def test_real_node_is_an_edge_node_of_its_group_beside_the_simulated_ones(
    real_node: str, kube_api: client.ApiClient, kube_cluster: KubeCluster
) -> None:
    core = client.CoreV1Api(kube_api)
    real = core.read_node(real_node)
    simulated = core.read_node(kube_cluster.groups[sorted(kube_cluster.groups)[0]][0])
    for role in (edge.EDGE_ROLE_LABEL, edge.AGENT_ROLE_LABEL):
        assert real.metadata.labels[role] == simulated.metadata.labels[role] == ""
    assert real.metadata.labels[edge.NODE_GROUP_LABEL] == GROUP
    taints = {(t.key, t.effect) for t in real.spec.taints or []}
    assert taints == {(t.key, t.effect) for t in simulated.spec.taints or []} == {(edge.EDGE_TAINT_KEY, "NoSchedule")}
    assert any(c.type == "Ready" and c.status == "True" for c in real.status.conditions)
    # A kubelet and a container runtime, not KWOK: the node says what runs it.
    assert real.status.node_info.container_runtime_version.startswith("containerd://")
    assert real.status.node_info.kubelet_version == simulated.status.node_info.kubelet_version
    assert "kwok.x-k8s.io/node" not in (real.metadata.annotations or {})
    group = client.CustomObjectsApi(kube_api).get_cluster_custom_object(
        "apps.kubeedge.io", "v1alpha1", "nodegroups", GROUP
    )
    assert real_node in group["spec"]["nodes"]
    # The simulated nodes are still Ready beside it.
    assert all(
        any(c.type == "Ready" and c.status == "True" for c in core.read_node(name).status.conditions)
        for names in kube_cluster.groups.values()
        for name in names
    )


def test_edgeloop_image_serves_a_model_through_a_service_from_the_host(
    edgeloop_image: images.BuiltImage, real_node: str, kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    app = f"model-{uuid.uuid4().hex[:6]}"
    image = edgeloop_image.name.reference  # what the chart writes: edgeloop:0.1.0, imported, never pulled
    core.create_namespaced_pod(namespace, _model_server_pod(app, image))
    service = core.create_namespaced_service(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": app},
            "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 8501, "targetPort": "http"}]},
        },
    )
    pod = wait_for(lambda: _ready_pod(core, namespace, app), f"pod {app} Ready on {real_node}", timeout=420)
    assert pod.spec.node_name == real_node
    assert pod.status.pod_ip.startswith(node.POD_CIDR.rsplit(".", 1)[0] + ".")

    # From the host, through the Service's ClusterIP: kube-proxy's rules lead to the pod.
    base = f"http://{service.spec.cluster_ip}:8501/v1/models/{MODEL}"
    status = wait_for(lambda: get_json(base), f"{base} through kube-proxy", timeout=60)
    assert [v["state"] for v in status["model_version_status"]] == ["AVAILABLE"]
    xs = [round(random.uniform(-100, 100), 2) for _ in range(3)]
    answer = post_json(f"{base}:predict", {"instances": [[x] for x in xs]})
    assert [row[0] for row in answer["predictions"]] == pytest.approx([2 * x + 1 for x in xs], rel=1e-5)

    # The API server reaches the kubelet (kubectl logs): the init container said nothing, the server logged.
    logs = core.read_namespaced_pod_log(pod.metadata.name, namespace, container="model-server")
    assert logs.strip(), "the model server's log is empty"

    # From another pod, by the Service's name: cluster DNS (the pod's search path) and kube-proxy from a pod.
    client_pod = _model_server_pod(f"{app}-client", image)
    client_pod["spec"] |= {"initContainers": [], "restartPolicy": "Never"}
    client_pod["spec"]["containers"] = [
        {
            "name": "client",
            "image": image,
            "command": ["python", "-c", FETCH, f"http://{app}:8501/v1/models/{MODEL}"],  # a short name
            "securityContext": SECURITY_CONTEXT,
        }
    ]
    core.create_namespaced_pod(namespace, client_pod)
    phase = wait_for(
        lambda: (
            core.read_namespaced_pod(f"{app}-client", namespace).status.phase in ("Succeeded", "Failed")
            and core.read_namespaced_pod(f"{app}-client", namespace).status.phase
        ),
        "the client pod to finish",
        timeout=180,
    )
    # Raw: the client would turn a log that is JSON into a Python dict's repr.
    said = core.read_namespaced_pod_log(f"{app}-client", namespace, _preload_content=False).data.decode()
    assert phase == "Succeeded", said
    assert json.loads(said)["model_version_status"][0]["state"] == "AVAILABLE"


def test_a_missing_image_is_reported_not_pulled(real_node: str, kube_api: client.ApiClient, namespace: str) -> None:
    """No registry is reachable: an image nobody built fails with the reason, it does not hang silently."""
    core = client.CoreV1Api(kube_api)
    pod = _model_server_pod("missing", "edgeloop-never-built:0.0.0")
    pod["spec"]["initContainers"] = []
    pod["spec"]["containers"][0]["imagePullPolicy"] = "Never"
    core.create_namespaced_pod(namespace, pod)

    def waiting_reason() -> str | None:
        statuses = core.read_namespaced_pod("missing", namespace).status.container_statuses or []
        waiting = [s.state.waiting for s in statuses if s.state and s.state.waiting]
        # ContainerCreating first (the sandbox), then the image's verdict.
        return waiting[0].reason if waiting and waiting[0].reason != "ContainerCreating" else None

    assert wait_for(waiting_reason, "the pod's waiting reason", timeout=60) == "ErrImageNeverPull"


def _model_server_pod(app: str, image: str) -> dict[str, Any]:
    models = {"name": "models", "mountPath": "/models"}
    tmp = {"name": "tmp", "mountPath": "/tmp"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": app, "labels": {"app": app}},
        "spec": {
            "nodeSelector": edge.node_selector(GROUP),
            "tolerations": [edge.EDGE_TOLERATION],
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 2,
            "initContainers": [
                {
                    "name": "write-model",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", WRITE_MODEL],
                    "volumeMounts": [models, tmp],
                    "securityContext": SECURITY_CONTEXT,
                }
            ],
            "containers": [
                {
                    "name": "model-server",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "args": ["model-server"],
                    "env": [
                        {"name": "EDGELOOP_MODEL_SERVER_HTTP_HOST", "value": "0.0.0.0"},
                        {"name": "EDGELOOP_MODEL_SERVER_GRPC_HOST", "value": "0.0.0.0"},
                        {"name": "EDGELOOP_MODEL_SERVER_MODEL_NAME", "value": MODEL},
                        {"name": "EDGELOOP_MODEL_SERVER_MODEL_BASE_PATH", "value": "/models"},
                    ],
                    "ports": [{"name": "http", "containerPort": 8501}, {"name": "grpc", "containerPort": 8500}],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2},
                    "volumeMounts": [{**models, "readOnly": True}, tmp],
                    "securityContext": SECURITY_CONTEXT,
                }
            ],
            "volumes": [{"name": "models", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
        },
    }


def _kubelet_lines_about(word: str, lines: int = 40) -> str:
    """The kubelet's newest log lines naming ``word``: why a pod of the real node did not start, for a failure."""
    log = node.node_paths().log("kubelet")
    if not log.is_file():
        return f"(no kubelet log at {log})"
    found = [line for line in log.read_text(errors="replace").splitlines() if word in line][-lines:]
    return f"the kubelet's last {len(found)} lines about {word}:\n" + "\n".join(found)


def _ready_pod(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod | None:
    pod = core.read_namespaced_pod(name, namespace)
    if pod.status.phase == "Failed":
        pytest.fail(f"pod {name} failed: {pod.status}", pytrace=False)
    ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    return pod if ready else None


CHART = repo_root() / "helm" / "edgeloop"
ONLY_THE_MODEL_SERVER = [
    f"{service}.enabled=false"
    for service in ("ingest", "inferenceGateway", "edgeAgents", "deployer", "registry", "trainer", "drift")
]


def test_the_chart_s_model_server_runs_on_the_real_node_and_answers_with_a_token(
    edgeloop_image: images.BuiltImage,
    real_node: str,
    kube_api: client.ApiClient,
    kube_cluster: KubeCluster,
    namespace: str,
) -> None:
    """The chart's own Deployment, probes and token Secret, on the real node: its model from a models claim."""
    core = client.CoreV1Api(kube_api)
    # The models claim: a hostPath volume on the node (no provisioner here), written by a pod of the image.
    folder = node.node_paths().root / "volumes" / namespace
    folder.mkdir(parents=True)
    os.chown(folder, images.USER_ID, images.USER_ID)
    volume = host_folder_claim(core, namespace, "edgeloop-models", folder)
    try:
        writer = _model_server_pod("write-model", edgeloop_image.name.reference)
        writer["spec"] |= {
            "restartPolicy": "Never",
            "containers": writer["spec"]["initContainers"],
            "initContainers": [],
        }
        writer["spec"]["volumes"][0] = {"name": "models", "persistentVolumeClaim": {"claimName": "edgeloop-models"}}
        core.create_namespaced_pod(namespace, writer)
        wait_for(
            lambda: core.read_namespaced_pod("write-model", namespace).status.phase == "Succeeded",
            "the model written into the claim",
            timeout=180,
        )

        settings = [*ONLY_THE_MODEL_SERVER, f"modelServer.nodeGroup={GROUP}", "modelServer.modelsClaim=edgeloop-models"]
        settings.append(f"modelServer.modelName={MODEL}")
        installed = subprocess.run(
            ["helm", "install", "loop", str(CHART), "-n", namespace, "--set", ",".join(settings), "--wait",
             "--timeout", "5m"],
            capture_output=True, text=True, env=kube_cluster.env(), check=False,
        )  # fmt: skip
        assert installed.returncode == 0, (
            f"{installed.stderr}\n{describe_namespace(core, namespace)}\n{_kubelet_lines_about('model-server')}"
        )
        [pod] = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=model-server").items
        assert pod.spec.node_name == real_node
        assert all(status.ready for status in pod.status.container_statuses)

        service = core.read_namespaced_service("loop-model-server", namespace)
        base = f"http://{service.spec.cluster_ip}:8501/v1/models/{MODEL}"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base, timeout=10)
        assert refused.value.code == 401  # the chart requires API tokens
        secret = core.read_namespaced_secret("loop-api-tokens", namespace)
        token = base64.b64decode(secret.data["admin.token"]).decode()
        x = round(random.uniform(-100, 100), 2)
        answer = post_json(f"{base}:predict", {"instances": [[x]]}, token=token)
        assert answer["predictions"][0][0] == pytest.approx(2 * x + 1, rel=1e-5)
    finally:
        core.delete_persistent_volume(volume)
        shutil.rmtree(folder, ignore_errors=True)
