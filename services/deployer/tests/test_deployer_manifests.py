"""What the deployer applies, as pure data: names, version pinning per server kind, volumes, the EdgeApplication."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from edgeloop_deployer.adapters.manifests import (
    ServingSpec,
    deployment,
    edge_application,
    model_label_value,
    service_endpoint,
    serving_objects,
    workload_name,
)
from edgeloop_deployer.service import WorkloadPlan
from edgeloop_deployer.settings import Settings
from pydantic import ValidationError

DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")


@pytest.mark.parametrize(
    "model",
    ["catdog", "EdgeLoop_Classifier.v2", "x" * 128, "a.b_c-d" * 18],
    ids=["plain", "mixed-case-dots", "longest", "long-with-symbols"],
)
def test_names_and_labels_are_valid_kubernetes_names_for_any_model_name(model: str) -> None:
    name = workload_name(model, "site-a")

    assert DNS_1035_LABEL.match(name), name
    assert LABEL_VALUE.match(model_label_value(model)), model_label_value(model)
    assert workload_name(model, "site-b") != name


def test_long_model_names_that_share_a_prefix_get_different_names() -> None:
    assert workload_name("m" * 100 + "1", "site-a") != workload_name("m" * 100 + "2", "site-a")


def test_tf_serving_pins_the_version_in_its_model_config_and_probe() -> None:
    config_map, deploy, service = serving_objects(WorkloadPlan("catdog", "site-b", 7), ServingSpec())

    assert config_map["metadata"]["name"] == "edgeloop-model-catdog-site-b-v7"
    assert "model_version_policy { specific { versions: 7 } }" in config_map["data"]["models.config"]
    assert 'base_path: "/models/catdog"' in config_map["data"]["models.config"]
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/catdog/versions/7"
    assert "--model_config_file=/etc/edgeloop/serving/models.config" in container["args"]
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert volumes["serving-config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "edgeloop-models", "readOnly": True}
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("server_kind", ["tf-serving", "edgeloop-lite"])
def test_each_group_gets_a_cluster_ip_service_in_front_of_its_own_pods_only(server_kind: str) -> None:
    spec = ServingSpec(server_kind=server_kind)  # type: ignore[arg-type]
    *_, site_a_deploy, site_a_service = serving_objects(WorkloadPlan("catdog", "site-a", 3), spec)
    *_, site_b_service = serving_objects(WorkloadPlan("catdog", "site-b", 3), spec)

    assert site_a_service["kind"] == "Service"
    assert site_a_service["metadata"]["name"] == "edgeloop-model-catdog-site-a"
    assert site_a_service["spec"]["type"] == "ClusterIP"
    assert [(p["name"], p["port"], p["targetPort"]) for p in site_a_service["spec"]["ports"]] == [
        ("rest", 8501, "rest"),
        ("grpc", 8500, "grpc"),
    ]
    pod_labels = site_a_deploy["spec"]["template"]["metadata"]["labels"]
    selector = site_a_service["spec"]["selector"]
    assert selector.items() <= pod_labels.items()
    assert site_b_service["spec"]["selector"] != selector


def test_the_endpoint_is_the_groups_service_dns_name_on_the_rest_port() -> None:
    spec = ServingSpec(rest_port=9001)

    assert (
        service_endpoint("catdog", "site-a", namespace="edge", spec=ServingSpec())
        == "http://edgeloop-model-catdog-site-a.edge.svc:8501"
    )
    assert service_endpoint("catdog", "site-b", namespace="edge", spec=spec) == (
        "http://edgeloop-model-catdog-site-b.edge.svc:9001"
    )
    long_name = "EdgeLoop_Classifier." + "x" * 100
    assert service_endpoint(long_name, "site-a", namespace="edge", spec=spec) == (
        f"http://{workload_name(long_name, 'site-a')}.edge.svc:9001"
    )
    template = "http://{node_group}.gateway.example:{port}/{model}/{service}/{namespace}"
    assert service_endpoint("catdog", "site-a", namespace="edge", spec=spec, template=template) == (
        "http://site-a.gateway.example:9001/catdog/edgeloop-model-catdog-site-a/edge"
    )


def test_the_lite_server_pins_the_version_by_environment_and_needs_no_config_map() -> None:
    spec = ServingSpec(server_kind="edgeloop-lite", image="edgeloop:0.1.0", models_host_path="/srv/models")
    objects = serving_objects(WorkloadPlan("catdog", "site-a", 4, {"team": "vision"}), spec)

    assert [o["kind"] for o in objects] == ["Deployment", "Service"]
    template = objects[0]["spec"]["template"]
    container = template["spec"]["containers"][0]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert container["args"] == ["model-server"]
    assert env["EDGELOOP_MODEL_SERVER_MODEL_VERSION_POLICY"] == "specific:4"
    assert env["EDGELOOP_MODEL_SERVER_MODEL_BASE_PATH"] == "/models"
    # What the lite server makes of that environment: the model's own folder on the models volume.
    served = served_folders(env)
    assert served == [Path(container["volumeMounts"][0]["mountPath"]) / "catdog"]
    assert template["spec"]["volumes"] == [
        {"name": "models", "hostPath": {"path": "/srv/models", "type": "Directory"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    assert template["metadata"]["annotations"] == {
        "team": "vision",
        "edgeloop.io/model-name": "catdog",
        "edgeloop.io/model-version": "4",
    }


@pytest.mark.parametrize("server_kind", ["tf-serving", "edgeloop-lite"])
@pytest.mark.parametrize("canary", [False, True], ids=["stable", "canary"])
def test_every_model_server_pod_runs_as_a_numeric_non_root_user_on_a_read_only_root(
    server_kind: str, canary: bool
) -> None:
    """Issue 12: what the chart asks of its own pods, the deployer asks of the model servers it rolls out."""
    spec = ServingSpec(server_kind=server_kind)  # type: ignore[arg-type]
    plan = WorkloadPlan("catdog", "site-a", 3, canary=canary)
    pods = [deployment(plan, spec)["spec"]["template"]["spec"]]
    pods += [
        manifest["spec"]["template"]["spec"]
        for manifest in edge_application(plan, spec)["spec"]["workloadTemplate"]["manifests"]
        if manifest["kind"] == "Deployment"
    ]
    for pod in pods:
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        [container] = pod["containers"]
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        # a read-only root: temporary files go to an emptyDir at /tmp
        mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
        assert mounts["tmp"] == "/tmp"
        assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    other = ServingSpec(run_as_user=20000, run_as_group=20001, fs_group=20002)
    context = deployment(plan, other)["spec"]["template"]["spec"]["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (20000, 20001, 20002)


def test_the_model_servers_ids_are_settings_and_never_root(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeloop_deployer.app import serving_spec

    monkeypatch.setenv("EDGELOOP_DEPLOYER_RUN_AS_USER", "20000")
    monkeypatch.setenv("EDGELOOP_DEPLOYER_RUN_AS_GROUP", "20001")
    monkeypatch.setenv("EDGELOOP_DEPLOYER_FS_GROUP", "20002")
    spec = serving_spec(Settings())
    context = deployment(WorkloadPlan("catdog", "site-a", 1), spec)["spec"]["template"]["spec"]["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"], context["runAsNonRoot"]) == (
        20000,
        20001,
        20002,
        True,
    )
    monkeypatch.setenv("EDGELOOP_DEPLOYER_RUN_AS_USER", "0")
    with pytest.raises(ValidationError, match="run_as_user"):
        Settings()


def test_resources_follow_the_settings() -> None:
    spec = ServingSpec(cpu_request="100m", memory_request="128Mi", cpu_limit="1", memory_limit="")
    container = deployment(WorkloadPlan("catdog", "site-a", 1), spec)["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1"}}


def test_the_edge_application_targets_one_node_group_with_the_serving_objects() -> None:
    application = edge_application(WorkloadPlan("catdog", "site-b", 2), ServingSpec())

    assert application["apiVersion"] == "apps.kubeedge.io/v1alpha1"
    assert application["spec"]["workloadScope"] == {"targetNodeGroups": [{"name": "site-b"}]}
    assert [m["kind"] for m in application["spec"]["workloadTemplate"]["manifests"]] == [
        "ConfigMap",
        "Deployment",
        "Service",
    ]


def test_settings_refuse_node_groups_that_cannot_be_kubernetes_names() -> None:
    with pytest.raises(ValidationError, match="node group 'Site_A' is not a DNS-1123 label"):
        Settings(node_groups="site-b,Site_A")
    assert Settings(node_groups=" site-a , site-c ").groups() == ("site-a", "site-c")
    assert Settings(server_kind="edgeloop-lite").resolved_image() == "edgeloop:0.1.0"
    assert Settings(rollout_timeout_s=7.5).resolved_progress_deadline_s() == 8


def test_settings_refuse_an_endpoint_template_with_unknown_placeholders() -> None:
    with pytest.raises(ValidationError, match=r"unknown placeholder \{svc\}"):
        Settings(endpoint_template="http://{svc}.{namespace}.svc:8501")
    with pytest.raises(ValidationError, match="endpoint template"):
        Settings(endpoint_template="http://{service")
    assert Settings().endpoint_template == "http://{service}.{namespace}.svc:{port}"


def test_settings_read_one_model_server_per_node_group() -> None:
    settings = Settings(local_node_group_servers=" site-a=http://127.0.0.1:8601/ , site-b=http://127.0.0.1:8602")

    assert settings.node_group_servers() == {"site-a": "http://127.0.0.1:8601", "site-b": "http://127.0.0.1:8602"}
    assert Settings().node_group_servers() == {}
    with pytest.raises(ValidationError, match="'site-a:8601' is not 'node-group=http://host:port'"):
        Settings(local_node_group_servers="site-a:8601")
    with pytest.raises(ValidationError, match="node group 'site-a' is given two model servers"):
        Settings(local_node_group_servers="site-a=http://a:1,site-a=http://a:2")
    with pytest.raises(ValidationError, match="give every node group one server"):
        Settings(local_node_group_servers="site-a=http://127.0.0.1:8601")
    with pytest.raises(ValidationError, match="give every node group one server"):
        Settings(node_groups="site-a", local_node_group_servers="site-a=http://a:1,site-c=http://a:2")


def served_folders(env: dict[str, str]) -> list[Path]:
    """The folders the lite model server reads versions from, given a container's environment (its own code)."""
    from edgeloop_model_server.config import from_settings
    from edgeloop_model_server.settings import Settings as ModelServerSettings

    fields = {name[len("EDGELOOP_MODEL_SERVER_") :].lower(): value for name, value in env.items()}
    known = {name: value for name, value in fields.items() if name in ModelServerSettings.model_fields}
    return [model.base_path for model in from_settings(ModelServerSettings(**known))]
