"""Settings of the deployer: ``EDGELOOP_DEPLOYER_*`` plus the shared ``EDGELOOP_*`` ones."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from edgeloop_common.settings import CommonSettings
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgeloop_deployer.adapters.manifests import DEFAULT_ENDPOINT_TEMPLATE, RUN_AS_USER

TargetKind = Literal["auto", "kubernetes", "local"]
WorkloadKind = Literal["deployment", "edgeapplication"]
ServerKind = Literal["tf-serving", "edgeloop-lite"]

# A node group is a Kubernetes object name and part of the names of what the deployer applies (DNS-1123 label).
_NODE_GROUP = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
DEFAULT_IMAGES: dict[ServerKind, str] = {"tf-serving": "tensorflow/serving:2.19.0", "edgeloop-lite": "edgeloop:0.1.0"}
ENDPOINT_PLACEHOLDERS = ("service", "namespace", "node_group", "model", "port")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_DEPLOYER_", extra="ignore")

    http_host: str = Field("127.0.0.1", description="HTTP bind address.")
    http_port: int = Field(8086, description="HTTP port.")

    target: TargetKind = Field(
        "auto",
        description="Where versions go: kubernetes (KubeEdge node groups), local (the standalone lite model "
        "server) or auto (local in standalone mode, kubernetes in distributed mode).",
    )
    node_groups: str = Field("site-a,site-b", description="KubeEdge node groups (comma-separated), named like sites.")
    promotion_alias: str = Field("production", description="The alias whose ModelPromoted events are rolled out.")
    rollout_timeout_s: float = Field(
        120.0, gt=0, description="How long a rollout may take to become ready before it is rolled back."
    )
    poll_interval_s: float = Field(0.5, gt=0, description="How often a rollout in progress is looked at.")
    extra_pod_annotations: dict[str, dict[str, str]] = Field(
        {},  # pydantic copies a mutable default for each instance
        description='Pod-template annotations per version, JSON: {"2": {"edgeloop.io/fail-readiness": "true"}}; '
        'key "*" for every version (tests of failed rollouts).',
    )

    # --- kubernetes target ---
    namespace: str = Field("edgeloop", description="Namespace of the model-server workloads.")
    kubeconfig: Path | None = Field(
        None, description="Kubeconfig file; empty: the in-cluster ServiceAccount, else ~/.kube/config."
    )
    kube_context: str | None = Field(None, description="Context of the kubeconfig (empty: its current one).")
    workload: WorkloadKind = Field(
        "deployment",
        description="deployment: a Deployment + Service per node group, rollout watched; edgeapplication: a KubeEdge "
        "EdgeApplication per node group (applied and reported; its rollout is KubeEdge's to watch).",
    )
    server_kind: ServerKind = Field(
        "tf-serving", description="tf-serving (the official image) or edgeloop-lite (EdgeLoop's image, ARM nodes)."
    )
    image: str = Field(
        "",
        description="Model-server image; empty: tensorflow/serving:2.19.0 (tf-serving) or edgeloop:0.1.0 "
        "(edgeloop-lite).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent")
    replicas: int = Field(2, ge=1, description="Model-server pods per node group (spread over its nodes).")
    models_claim: str = Field(
        "edgeloop-models", description="PersistentVolumeClaim holding <model>/<version>/saved_model.pb."
    )
    models_host_path: str = Field(
        "", description="Host folder with the models on every edge node; when set, used instead of the claim."
    )
    rest_port: int = Field(8501, description="Model server REST port in the pod.")
    grpc_port: int = Field(8500, description="Model server gRPC port in the pod.")
    cpu_request: str = Field("250m")
    memory_request: str = Field("512Mi")
    cpu_limit: str = Field("", description="Empty: no CPU limit (throttling hurts latency more than it saves).")
    memory_limit: str = Field("2Gi")
    # The model servers' pod securityContext (numeric ids: runAsNonRoot needs a number, not a name). The chart sets
    # them from global.podSecurityContext, so the model servers run as its pods do.
    run_as_user: int = Field(RUN_AS_USER, ge=1, description="The model servers' numeric user (non-root: not 0).")
    run_as_group: int = Field(RUN_AS_USER, ge=0, description="The model servers' numeric group.")
    fs_group: int = Field(RUN_AS_USER, ge=0, description="The group that owns the volumes the kubelet prepares.")
    progress_deadline_s: int | None = Field(
        None, ge=1, description="The Deployment's progressDeadlineSeconds; empty: the rollout timeout."
    )
    endpoint_template: str = Field(
        DEFAULT_ENDPOINT_TEMPLATE,
        description="The node group's model-server endpoint in DeploymentUpdated (TF Serving REST base URL), with "
        "the placeholders {service} (the group's Service), {namespace}, {node_group}, {model} and {port} (REST_PORT).",
    )

    # --- local target ---
    model_server_url: str = Field(
        "http://127.0.0.1:8501",
        description="REST URL of the lite model server (local target without LOCAL_NODE_GROUP_SERVERS).",
    )
    local_node_group_servers: str = Field(
        "",
        description="One lite model server per node group (local target), 'site-a=http://127.0.0.1:8601,"
        "site-b=http://127.0.0.1:8602': a rollout links the version into LOCAL_MODELS_ROOT/<group>/<model>/ and "
        "waits for that group's server. Empty: the one server of MODEL_SERVER_URL serves every group.",
    )
    local_models_root: Path | None = Field(
        None,
        description="Per-group model folders, <root>/<node_group>/<model>/<version> (each group's server has "
        "<root>/<node_group> as its model base path); default <EDGELOOP_DATA_DIR>/node-groups.",
    )
    local_model_base: Path | None = Field(
        None,
        description="Where the trainer exports versions, <base>/<model>/<version> (the trainer's MODEL_BASE); "
        "default <EDGELOOP_DATA_DIR>/models.",
    )

    # --- canary rollouts (docs/deployer.md, "Canary rollouts") ---
    canary_weight: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of a node group's traffic a promoted version takes as a canary beside the serving one "
        "before it rolls out (0.1: 10 %). 0: no canary, a promotion rolls out at once.",
    )
    canary_window_s: float = Field(300.0, gt=0, description="How long a canary is watched before it can pass.")
    canary_settle_s: float = Field(
        5.0, ge=0, description="From the canary taking traffic to its window: the gateways take the split up."
    )
    canary_min_samples: int = Field(
        50, ge=1, description="Answers needed of the canary (and of the stable version) before it is judged."
    )
    canary_max_error_rate: float = Field(
        0.02, ge=0, le=1, description="Most of the canary's share that may fail (answered by the stable version)."
    )
    canary_max_latency_ratio: float = Field(
        1.5, gt=0, description="Most the canary's p95 latency may be, as a multiple of the stable version's."
    )
    canary_max_confidence_drop: float = Field(
        0.05, ge=0, le=1, description="Most the canary's mean confidence may be below the stable version's."
    )
    canary_max_wait_s: float = Field(
        1800.0, ge=0, description="After the window, how long to wait for enough answers; then the canary fails."
    )
    canary_check_interval_s: float = Field(2.0, gt=0, description="How often a canary's answers are looked at.")
    local_canary_servers: str = Field(
        "",
        description="Local target with LOCAL_NODE_GROUP_SERVERS: a canary model server per node group, "
        "'site-a=http://127.0.0.1:8611,...', serving LOCAL_CANARY_MODELS_ROOT/<group>. Empty: no canaries there.",
    )
    local_canary_models_root: Path | None = Field(
        None,
        description="The canary servers' folders, <root>/<node_group>/<model>/<version>; default "
        "<EDGELOOP_DATA_DIR>/node-groups-canary.",
    )

    consumer_group: str = "deployer"
    common: CommonSettings = Field(default_factory=CommonSettings)

    @field_validator("node_groups")
    @classmethod
    def _valid_groups(cls, value: str) -> str:
        groups = [group.strip() for group in value.split(",") if group.strip()]
        if not groups:
            raise ValueError("at least one node group is needed")
        for group in groups:
            if not _NODE_GROUP.match(group):
                raise ValueError(f"node group {group!r} is not a DNS-1123 label of at most 40 characters")
        return ",".join(groups)

    @field_validator("endpoint_template")
    @classmethod
    def _valid_template(cls, value: str) -> str:
        try:
            value.format(**dict.fromkeys(ENDPOINT_PLACEHOLDERS, "x"))
        except KeyError as exc:
            problem = f"unknown placeholder {{{exc.args[0]}}}"
        except (IndexError, AttributeError, ValueError) as exc:
            problem = str(exc)
        else:
            return value
        known = ", ".join(f"{{{name}}}" for name in ENDPOINT_PLACEHOLDERS)
        raise ValueError(f"endpoint template {value!r}: {problem} (placeholders: {known})")

    @field_validator("local_node_group_servers", "local_canary_servers")
    @classmethod
    def _valid_servers(cls, value: str) -> str:
        _parse_servers(value)
        return value.strip()

    @model_validator(mode="after")
    def _a_server_for_every_group(self) -> Settings:
        servers = self.node_group_servers()
        if servers and set(servers) != set(self.groups()):
            raise ValueError(
                f"local_node_group_servers names the groups {', '.join(sorted(servers))} but the node groups are "
                f"{', '.join(self.groups())}: give every node group one server, and no other group"
            )
        canaries = self.canary_servers()
        if canaries and (not servers or not set(canaries) <= set(servers)):
            raise ValueError(
                f"local_canary_servers names the groups {', '.join(sorted(canaries))}: a canary server needs the "
                "group's own server in local_node_group_servers"
            )
        return self

    def groups(self) -> tuple[str, ...]:
        return tuple(self.node_groups.split(","))

    def resolved_target(self) -> Literal["kubernetes", "local"]:
        if self.target == "auto":
            return "local" if self.common.mode == "standalone" else "kubernetes"
        return self.target

    def resolved_image(self) -> str:
        return self.image or DEFAULT_IMAGES[self.server_kind]

    def resolved_progress_deadline_s(self) -> int:
        return self.progress_deadline_s or max(1, math.ceil(self.rollout_timeout_s))

    def node_group_servers(self) -> dict[str, str]:
        """Node group -> REST URL of its own model server (local target); empty: one server for all."""
        return _parse_servers(self.local_node_group_servers)

    def canary_servers(self) -> dict[str, str]:
        """Node group -> REST URL of its canary model server (local target)."""
        return _parse_servers(self.local_canary_servers)

    def resolved_local_canary_models_root(self) -> Path:
        return (self.local_canary_models_root or self.common.data_dir / "node-groups-canary").resolve()

    def resolved_local_models_root(self) -> Path:
        return (self.local_models_root or self.common.data_dir / "node-groups").resolve()

    def resolved_local_model_base(self) -> Path:
        return (self.local_model_base or self.common.data_dir / "models").resolve()

    def pod_annotations_for(self, version: int) -> dict[str, str]:
        return {**self.extra_pod_annotations.get("*", {}), **self.extra_pod_annotations.get(str(version), {})}


def _parse_servers(text: str) -> dict[str, str]:
    servers: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        group, sep, url = (piece.strip() for piece in item.partition("="))
        if not sep or not group or not url.startswith(("http://", "https://")):
            raise ValueError(f"{item!r} is not 'node-group=http://host:port'")
        if group in servers:
            raise ValueError(f"node group {group!r} is given two model servers")
        servers[group] = url.rstrip("/")
    return servers
