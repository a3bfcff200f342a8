"""What the deployer applies to Kubernetes for one model version in one KubeEdge node group (pure functions).

Per (model, node group): a Deployment of the model server pinned to the version and to the
group's edge nodes, a Service in front of it, and, for ``tensorflow/serving``, a ConfigMap per
version holding the model config that pins it (``model_version_policy { specific { ... } }``).
The Service's cluster DNS name is the group's serving endpoint (:func:`service_endpoint`).
A canary (``plan.canary``) is the same set of objects named ``...-canary``, one replica, labelled
``edgeloop.io/canary: "true"``: beside the stable ones, never selected by the stable Service.
Or, with the ``edgeapplication`` workload, one KubeEdge EdgeApplication carrying those objects
as its workload template and targeting the node group. docs/deployer.md shows an example.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal

from edgeloop_deployer.service import WorkloadPlan

FIELD_MANAGER = "edgeloop-deployer"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = FIELD_MANAGER
INSTANCE_LABEL = "app.kubernetes.io/instance"
MODEL_LABEL = "edgeloop.io/model"
GROUP_LABEL = "edgeloop.io/node-group"
VERSION_LABEL = "edgeloop.io/model-version"
VERSION_ANNOTATION = "edgeloop.io/model-version"
CANARY_LABEL = "edgeloop.io/canary"
CANARY_SUFFIX = "-canary"
MODEL_ANNOTATION = "edgeloop.io/model-name"

# What a KubeEdge edge node carries (keadm join, and KubeEdge's NodeGroup controller).
EDGE_ROLE_LABEL = "node-role.kubernetes.io/edge"
NODE_GROUP_LABEL = "apps.kubeedge.io/belonging-to"
EDGE_TOLERATION = {"key": EDGE_ROLE_LABEL, "operator": "Exists", "effect": "NoSchedule"}

KUBEEDGE_API_VERSION = "apps.kubeedge.io/v1alpha1"
CONFIG_MOUNT_PATH = "/etc/edgeloop/serving"
CONFIG_FILE = "models.config"
_MAX_NAME = 63  # a Service name is a DNS-1035 label
DEFAULT_ENDPOINT_TEMPLATE = "http://{service}.{namespace}.svc:{port}"
# The EdgeLoop image's numeric user (`edgeloop images build`, and the Helm chart's global.podSecurityContext). The
# tensorflow/serving image runs as it too: it only reads the models volume.
RUN_AS_USER = 10001
TMP_MOUNT_PATH = "/tmp"


@dataclass(frozen=True)
class ServingSpec:
    """How the model server runs at the edge (from the settings)."""

    server_kind: Literal["tf-serving", "edgeloop-lite"] = "tf-serving"
    image: str = "tensorflow/serving:2.19.0"
    image_pull_policy: str = "IfNotPresent"
    replicas: int = 2
    models_claim: str = "edgeloop-models"
    models_host_path: str = ""
    models_mount_path: str = "/models"
    rest_port: int = 8501
    grpc_port: int = 8500
    cpu_request: str = "250m"
    memory_request: str = "512Mi"
    cpu_limit: str = ""
    memory_limit: str = "2Gi"
    progress_deadline_s: int = 120
    run_as_user: int = RUN_AS_USER
    run_as_group: int = RUN_AS_USER
    fs_group: int = RUN_AS_USER


def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


def _shortened(text: str, limit: int, original: str) -> str:
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(original.encode()).hexdigest()[:8]
    return f"{text[: limit - 9].rstrip('-')}-{digest}"


def workload_name(model_name: str, node_group: str, *, canary: bool = False) -> str:
    """``edgeloop-model-<model>-<group>`` (``...-canary``), made a valid DNS-1035 label (shortened with a hash when
    long)."""
    suffix = CANARY_SUFFIX if canary else ""
    return _shortened(
        f"edgeloop-model-{_slug(model_name)}-{node_group}{suffix}", _MAX_NAME, f"{model_name}/{node_group}{suffix}"
    )


def config_map_name(model_name: str, node_group: str, version: int, *, canary: bool = False) -> str:
    return f"{workload_name(model_name, node_group, canary=canary)}-v{version}"


def model_label_value(model_name: str) -> str:
    """Model names may be up to 128 characters; a label value at most 63."""
    value = _shortened(model_name, _MAX_NAME, model_name)
    return value.strip("-_.") or _slug(model_name)


def instance_labels(model_name: str, node_group: str, *, canary: bool = False) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "edgeloop-model-server",
        "app.kubernetes.io/part-of": "edgeloop",
        INSTANCE_LABEL: workload_name(model_name, node_group, canary=canary),
        MANAGED_BY_LABEL: MANAGED_BY,
        MODEL_LABEL: model_label_value(model_name),
        GROUP_LABEL: node_group,
    }
    if canary:
        labels[CANARY_LABEL] = "true"
    return labels


def model_base_path(plan: WorkloadPlan, spec: ServingSpec) -> str:
    return f"{spec.models_mount_path.rstrip('/')}/{plan.model_name}"


def tf_serving_model_config(plan: WorkloadPlan, spec: ServingSpec) -> str:
    """TF Serving's model config (text protobuf) serving exactly ``plan.version``."""
    return (
        "model_config_list {\n"
        "  config {\n"
        f'    name: "{plan.model_name}"\n'
        f'    base_path: "{model_base_path(plan, spec)}"\n'
        '    model_platform: "tensorflow"\n'
        f"    model_version_policy {{ specific {{ versions: {plan.version} }} }}\n"
        "  }\n"
        "}\n"
    )


def config_map(plan: WorkloadPlan, spec: ServingSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(plan.model_name, plan.node_group, plan.version, canary=plan.canary),
            "labels": {**_labels(plan), VERSION_LABEL: str(plan.version)},
            "annotations": {MODEL_ANNOTATION: plan.model_name, VERSION_ANNOTATION: str(plan.version)},
        },
        "immutable": True,  # one per version: pods of the old version keep theirs during a rollout
        "data": {CONFIG_FILE: tf_serving_model_config(plan, spec)},
    }


def _container(plan: WorkloadPlan, spec: ServingSpec) -> dict[str, Any]:
    base_path = model_base_path(plan, spec)
    container: dict[str, Any] = {
        "name": "model-server",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "ports": [
            {"name": "rest", "containerPort": spec.rest_port, "protocol": "TCP"},
            {"name": "grpc", "containerPort": spec.grpc_port, "protocol": "TCP"},
        ],
        # Ready only once this very version answers on the TF Serving status API.
        "readinessProbe": {
            "httpGet": {"path": f"/v1/models/{plan.model_name}/versions/{plan.version}", "port": "rest"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": f"/v1/models/{plan.model_name}", "port": "rest"},
            "initialDelaySeconds": 30,
            "periodSeconds": 15,
            "failureThreshold": 4,
        },
        "resources": _resources(spec),
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "models", "mountPath": spec.models_mount_path, "readOnly": True},
            {"name": "tmp", "mountPath": TMP_MOUNT_PATH},  # the root filesystem is read-only
        ],
    }
    if spec.server_kind == "tf-serving":
        # The image's entrypoint runs tensorflow_model_server with these appended. --model_config_file wins over
        # --model_name/--model_base_path (kept so `ps` and the logs name the model); it pins the version.
        container["env"] = [{"name": "MODEL_NAME", "value": plan.model_name}]
        container["args"] = [
            f"--port={spec.grpc_port}",
            f"--rest_api_port={spec.rest_port}",
            f"--model_name={plan.model_name}",
            f"--model_base_path={base_path}",
            f"--model_config_file={CONFIG_MOUNT_PATH}/{CONFIG_FILE}",
        ]
        container["volumeMounts"].append({"name": "serving-config", "mountPath": CONFIG_MOUNT_PATH, "readOnly": True})
    else:
        container["args"] = ["model-server"]  # EdgeLoop's image: ENTRYPOINT ["edgeloop"]
        container["env"] = [
            {"name": "EDGELOOP_MODEL_SERVER_HTTP_HOST", "value": "0.0.0.0"},
            {"name": "EDGELOOP_MODEL_SERVER_GRPC_HOST", "value": "0.0.0.0"},
            {"name": "EDGELOOP_MODEL_SERVER_HTTP_PORT", "value": str(spec.rest_port)},
            {"name": "EDGELOOP_MODEL_SERVER_GRPC_PORT", "value": str(spec.grpc_port)},
            {"name": "EDGELOOP_MODEL_SERVER_MODEL_NAME", "value": plan.model_name},
            # Like the tensorflow/serving image's MODEL_BASE_PATH: the folder holding <model>/<version>/ (the lite
            # server appends the model's name), not the model's own folder that --model_base_path names.
            {"name": "EDGELOOP_MODEL_SERVER_MODEL_BASE_PATH", "value": spec.models_mount_path},
            {"name": "EDGELOOP_MODEL_SERVER_MODEL_VERSION_POLICY", "value": f"specific:{plan.version}"},
        ]
    return container


def container_security_context() -> dict[str, Any]:
    """Nothing writable but the mounts, no privilege to gain, no capability (the chart's global.securityContext)."""
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def pod_security_context(spec: ServingSpec) -> dict[str, Any]:
    """A numeric non-root user (the kubelet refuses to start a container that would run as root) under the
    runtime's default seccomp profile; the volumes the kubelet prepares (emptyDir, most claims) get fsGroup."""
    return {
        "runAsNonRoot": True,
        "runAsUser": spec.run_as_user,
        "runAsGroup": spec.run_as_group,
        "fsGroup": spec.fs_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources(spec: ServingSpec) -> dict[str, dict[str, str]]:
    limits = {"memory": spec.memory_limit} if spec.memory_limit else {}
    if spec.cpu_limit:
        limits["cpu"] = spec.cpu_limit
    resources = {"requests": {"cpu": spec.cpu_request, "memory": spec.memory_request}}
    if limits:
        resources["limits"] = limits
    return resources


def _volumes(plan: WorkloadPlan, spec: ServingSpec) -> list[dict[str, Any]]:
    if spec.models_host_path:
        models: dict[str, Any] = {"name": "models", "hostPath": {"path": spec.models_host_path, "type": "Directory"}}
    else:
        models = {"name": "models", "persistentVolumeClaim": {"claimName": spec.models_claim, "readOnly": True}}
    volumes = [models, {"name": "tmp", "emptyDir": {}}]
    if spec.server_kind == "tf-serving":
        name = config_map_name(plan.model_name, plan.node_group, plan.version, canary=plan.canary)
        volumes.append({"name": "serving-config", "configMap": {"name": name}})
    return volumes


def _labels(plan: WorkloadPlan) -> dict[str, str]:
    return instance_labels(plan.model_name, plan.node_group, canary=plan.canary)


def deployment(plan: WorkloadPlan, spec: ServingSpec) -> dict[str, Any]:
    name = workload_name(plan.model_name, plan.node_group, canary=plan.canary)
    labels = _labels(plan)
    version = str(plan.version)
    pod_annotations = {**plan.pod_annotations, MODEL_ANNOTATION: plan.model_name, VERSION_ANNOTATION: version}
    pod_spec: dict[str, Any] = {
        "nodeSelector": {EDGE_ROLE_LABEL: "", NODE_GROUP_LABEL: plan.node_group},
        "tolerations": [EDGE_TOLERATION],
        # One pod per edge node where there are enough nodes; counted per ReplicaSet so a rollout spreads too.
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {INSTANCE_LABEL: name}},
                "matchLabelKeys": ["pod-template-hash"],
            }
        ],
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(spec),
        "containers": [_container(plan, spec)],
        "volumes": _volumes(plan, spec),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {MODEL_ANNOTATION: plan.model_name, VERSION_ANNOTATION: version},
        },
        "spec": {
            "replicas": 1 if plan.canary else spec.replicas,  # a canary: one pod on one node of the group
            "selector": {"matchLabels": {INSTANCE_LABEL: name}},
            "progressDeadlineSeconds": spec.progress_deadline_s,
            "revisionHistoryLimit": 5,
            # The old version serves until the new one is Ready: no moment without a model at the edge.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {**labels, VERSION_LABEL: version}, "annotations": pod_annotations},
                "spec": pod_spec,
            },
        },
    }


def service(plan: WorkloadPlan, spec: ServingSpec) -> dict[str, Any]:
    name = workload_name(plan.model_name, plan.node_group, canary=plan.canary)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "labels": _labels(plan),
            "annotations": {MODEL_ANNOTATION: plan.model_name},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {INSTANCE_LABEL: name},
            "ports": [
                {"name": "rest", "port": spec.rest_port, "targetPort": "rest", "protocol": "TCP"},
                {"name": "grpc", "port": spec.grpc_port, "targetPort": "grpc", "protocol": "TCP"},
            ],
        },
    }


def service_endpoint(
    model_name: str,
    node_group: str,
    *,
    namespace: str,
    spec: ServingSpec,
    template: str = DEFAULT_ENDPOINT_TEMPLATE,
    canary: bool = False,
) -> str:
    """The TF Serving REST base URL of the group's model server: by default its Service's cluster DNS name.

    ``template`` may use ``{service}``, ``{namespace}``, ``{node_group}``, ``{model}`` and ``{port}`` (the REST port).
    KubeEdge's EdgeApplication controller keeps the Service's name (it suffixes the Deployment's), so the name is
    the same for both workloads.
    """
    return template.format(
        service=workload_name(model_name, node_group, canary=canary),
        namespace=namespace,
        node_group=node_group,
        model=model_name,
        port=spec.rest_port,
    )


def serving_objects(plan: WorkloadPlan, spec: ServingSpec) -> list[dict[str, Any]]:
    """In apply order: the ConfigMap the pods mount comes before the Deployment."""
    objects = [config_map(plan, spec)] if spec.server_kind == "tf-serving" else []
    return [*objects, deployment(plan, spec), service(plan, spec)]


def edge_application(plan: WorkloadPlan, spec: ServingSpec) -> dict[str, Any]:
    """A KubeEdge EdgeApplication with the serving objects as its workload template, for one node group."""
    name = workload_name(plan.model_name, plan.node_group)
    return {
        "apiVersion": KUBEEDGE_API_VERSION,
        "kind": "EdgeApplication",
        "metadata": {
            "name": name,
            "labels": instance_labels(plan.model_name, plan.node_group),
            "annotations": {MODEL_ANNOTATION: plan.model_name, VERSION_ANNOTATION: str(plan.version)},
        },
        "spec": {
            "workloadTemplate": {"manifests": serving_objects(plan, spec)},
            "workloadScope": {"targetNodeGroups": [{"name": plan.node_group}]},
        },
    }
