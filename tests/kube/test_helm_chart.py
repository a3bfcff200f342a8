"""EdgeLoop's own Helm chart, installed into the real control plane with simulated edge nodes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_helpers import KubeCluster, wait_for
from kubernetes import client

pytestmark = pytest.mark.kube

CHART = Path(__file__).resolve().parents[2] / "helm" / "edgeloop"


def _helm(cluster: KubeCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["helm", *args], capture_output=True, text=True, timeout=120, env=cluster.env(), check=False)


def _env(container: client.V1Container) -> dict[str, str | None]:
    return {var.name: var.value for var in container.env or []}


def _render(cluster: KubeCluster, *args: str) -> dict[tuple[str, str], dict[str, Any]]:
    """`helm template loop CHART ARGS` as {(kind, name): object}."""
    rendered = _helm(cluster, "template", "loop", str(CHART), *args)
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(rendered.stdout) if doc}


def _container_env(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return env


def test_the_chart_lints_and_installs_with_the_model_server_on_its_node_group_only(
    kube_cluster: KubeCluster, kube_api: client.ApiClient, namespace: str, edge_groups: list[str]
) -> None:
    lint = _helm(kube_cluster, "lint", str(CHART))
    assert lint.returncode == 0, lint.stdout + lint.stderr

    group = edge_groups[0]
    core = client.CoreV1Api(kube_api)
    # The chart expects the database secret to exist; an operator creates it.
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="edgeloop-database"),
            string_data={"databaseUrl": "postgresql+psycopg://edgeloop:edgeloop@postgres:5432/edgeloop"},
        ),
    )
    install = _helm(
        kube_cluster, "install", "loop", str(CHART), "-n", namespace, "--set", f"modelServer.nodeGroup={group}"
    )
    assert install.returncode == 0, install.stdout + install.stderr

    apps = client.AppsV1Api(kube_api)
    names = sorted(deployment.metadata.name for deployment in apps.list_namespaced_deployment(namespace).items)
    assert {"loop-ingest", "loop-inference-gateway", "loop-model-server"} <= set(names), names

    def model_server_pods_running() -> list[client.V1Pod] | None:
        pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=model-server").items
        return pods if pods and all(pod.status.phase == "Running" for pod in pods) else None

    pods = wait_for(model_server_pods_running, "the model server's pods running")
    edge_nodes = set(kube_cluster.groups[group])
    assert {pod.spec.node_name for pod in pods} <= edge_nodes, (
        f"model server pods on {[pod.spec.node_name for pod in pods]}, expected only nodes of {group}: {edge_nodes}"
    )


def test_the_chart_installs_the_learning_loop_wired_by_the_release_service_names(
    kube_cluster: KubeCluster, kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="edgeloop-database"),
            string_data={"databaseUrl": "postgresql+psycopg://edgeloop:edgeloop@postgres:5432/edgeloop"},
        ),
    )
    install = _helm(
        kube_cluster, "install", "closed", str(CHART), "-n", namespace, "--set", "trainer.seedData.existingClaim=seed"
    )
    assert install.returncode == 0, install.stdout + install.stderr
    # NOTES.txt: what the pods need first, and where each service answers
    assert f'EdgeLoop 0.1.0 is installed as release "closed" in namespace "{namespace}"' in install.stdout
    assert "http://closed-registry:8083" in install.stdout and "edge agents        one per site" in install.stdout

    # KWOK: pods of these cloud-side Deployments need not run here (no kubelet, maybe no
    # non-edge node); what the chart is responsible for is the objects and their wiring.
    apps = client.AppsV1Api(kube_api)
    deployments = {d.metadata.name: d for d in apps.list_namespaced_deployment(namespace).items}
    services = {s.metadata.name: s for s in core.list_namespaced_service(namespace).items}
    expected_ports = {"registry": 8083, "trainer": 8084, "drift": 8085, "ingest": 8081, "deployer": 8086}
    for service, port in expected_ports.items():
        name = f"closed-{service}"
        assert name in deployments, sorted(deployments)
        container = deployments[name].spec.template.spec.containers[0]
        assert container.args == [service]
        assert [(p.name, p.container_port) for p in container.ports] == [("http", port)]
        assert container.readiness_probe.http_get.path == "/readyz"
        assert container.liveness_probe.http_get.path == "/healthz"
        env = _env(container)
        assert env[f"EDGELOOP_{service.upper()}_HTTP_HOST"] == "0.0.0.0"
        assert env[f"EDGELOOP_{service.upper()}_HTTP_PORT"] == str(port)
        assert "EDGELOOP_DATABASE_URL" in env and env["EDGELOOP_MODE"] == "distributed"
        assert name in services, sorted(services)
        assert [(p.port, p.target_port) for p in services[name].spec.ports] == [(port, "http")]
        selector = {"app.kubernetes.io/instance": "closed", "app.kubernetes.io/name": service}
        assert services[name].spec.selector == selector

    trainer = deployments["closed-trainer"].spec.template.spec
    trainer_env = _env(trainer.containers[0])
    assert trainer_env["EDGELOOP_TRAINER_REGISTRY_URL"] == "http://closed-registry:8083"
    assert trainer_env["EDGELOOP_TRAINER_INGEST_URL"] == "http://closed-ingest:8081"
    assert _env(deployments["closed-drift"].spec.template.spec.containers[0])["EDGELOOP_DRIFT_REGISTRY_URL"] == (
        "http://closed-registry:8083"
    )
    # The trainer writes versions into the very claim the deployer gives the model servers.
    deployer_env = _env(deployments["closed-deployer"].spec.template.spec.containers[0])
    claims = {v.name: v.persistent_volume_claim for v in trainer.volumes}
    assert claims["models"] is not None
    assert claims["models"].claim_name == deployer_env["EDGELOOP_DEPLOYER_MODELS_CLAIM"] == "edgeloop-models"
    mounts = {m.name: m for m in trainer.containers[0].volume_mounts}
    assert mounts["models"].mount_path == trainer_env["EDGELOOP_TRAINER_MODEL_BASE"] == "/models"
    assert not mounts["models"].read_only
    assert claims["seed"] is not None and claims["seed"].claim_name == "seed"
    assert mounts["seed"].read_only and trainer_env["EDGELOOP_TRAINER_SEED_DATA_DIR"] == "/seed"
    assert deployments["closed-trainer"].spec.replicas == 1
    assert deployments["closed-trainer"].spec.strategy.type == "Recreate"


def test_disabled_services_render_nothing_and_extra_env_reaches_every_service(kube_cluster: KubeCluster) -> None:
    everything = _render(kube_cluster)
    for service in ("ingest", "inference-gateway", "model-server", "deployer", "registry", "trainer", "drift"):
        assert ("Deployment", f"loop-{service}") in everything, sorted(everything)
        assert ("Service", f"loop-{service}") in everything, sorted(everything)
    # Without a seed claim the trainer has no seed folder and no seed volume.
    trainer_env = {var["name"] for var in _container_env(everything[("Deployment", "loop-trainer")])}
    assert "EDGELOOP_TRAINER_SEED_DATA_DIR" not in trainer_env

    off = _render(kube_cluster, "--set", "registry.enabled=false,trainer.enabled=false,drift.enabled=false")
    for service in ("registry", "trainer", "drift"):
        assert ("Deployment", f"loop-{service}") not in off
        assert ("Service", f"loop-{service}") not in off
    assert ("Deployment", "loop-ingest") in off and ("Deployment", "loop-deployer") in off

    debug = json.dumps([{"name": "EDGELOOP_LOG_LEVEL", "value": "DEBUG"}])
    keys = ("ingest", "inferenceGateway", "modelServer", "deployer", "registry", "trainer", "drift", "edgeAgents")
    extra = _render(kube_cluster, *(arg for key in keys for arg in ("--set-json", f"{key}.extraEnv={debug}")))
    assert sum(kind == "Deployment" for kind, _ in extra) == len(keys) - 1 + 2  # an edge agent per node group
    for (kind, name), doc in extra.items():
        if kind == "Deployment":
            assert {"name": "EDGELOOP_LOG_LEVEL", "value": "DEBUG"} in _container_env(doc), name
    # The URLs can point elsewhere (a registry outside the release).
    moved = _render(kube_cluster, "--set", "registry.enabled=false,drift.registryUrl=http://registry.example:8083")
    drift_env = {var["name"]: var.get("value") for var in _container_env(moved[("Deployment", "loop-drift")])}
    assert drift_env["EDGELOOP_DRIFT_REGISTRY_URL"] == "http://registry.example:8083"


def test_an_edge_agent_per_site_serves_with_the_model_server_the_deployer_rolls_out_on_its_node_group(
    kube_cluster: KubeCluster,
) -> None:
    from edgeloop_deployer.adapters.manifests import ServingSpec, service_endpoint

    rendered = _render(kube_cluster, "--set", "deployer.namespace=models,edgeAgents.modelName=Cat_Dog.v2")
    for site in ("site-a", "site-b"):  # the deployer's node groups: a site is named like its node group
        agent = rendered[("Deployment", f"loop-edge-{site}")]
        pod = agent["spec"]["template"]["spec"]
        env = {var["name"]: var.get("value") for var in _container_env(agent)}
        assert pod["containers"][0]["args"] == ["edge", "--site", site]
        assert pod["nodeSelector"]["apps.kubeedge.io/belonging-to"] == site
        assert agent["spec"]["replicas"] == 1 and agent["spec"]["strategy"]["type"] == "Recreate"
        # The URL the chart gives the agent is the endpoint the deployer announces for that group.
        assert env["EDGELOOP_EDGE_MODEL_SERVER_URL"] == service_endpoint(
            "Cat_Dog.v2", site, namespace="models", spec=ServingSpec()
        )
        assert env["EDGELOOP_EDGE_CLOUD_URL"] == "http://loop-inference-gateway:8082"
        assert env["EDGELOOP_EDGE_INGEST_URL"] == "http://loop-ingest:8081"
        assert pod["volumes"][0]["hostPath"]["path"] == f"/var/lib/edgeloop/edge/{site}"
    one = _render(kube_cluster, "--set", "edgeAgents.sites=site-b")
    assert [name for kind, name in one if kind == "Deployment" and "-edge-" in name] == ["loop-edge-site-b"]
    assert not any("-edge-" in name for _, name in _render(kube_cluster, "--set", "edgeAgents.enabled=false"))


def test_the_lite_model_server_of_the_chart_reads_the_models_folder_the_volume_mounts(
    kube_cluster: KubeCluster,
) -> None:
    """The chart's model server, run as EdgeLoop's image: the folder its own configuration code derives from the
    environment the chart gives it is <mount>/<model> (the tensorflow/serving image's MODEL_BASE_PATH semantics)."""
    from edgeloop_model_server.config import from_settings
    from edgeloop_model_server.settings import Settings as ModelServerSettings

    deployment = _render(kube_cluster, "--set", "modelServer.modelName=catdog")[("Deployment", "loop-model-server")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {var["name"][len("EDGELOOP_MODEL_SERVER_") :].lower(): var.get("value") for var in container["env"]}
    known = {name: value for name, value in env.items() if name in ModelServerSettings.model_fields}
    settings = ModelServerSettings(**known)
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["models"]
    assert [model.base_path for model in from_settings(settings)] == [Path(mount) / "catdog"]


def test_the_gateway_reaches_the_releases_model_server_and_reads_ingests_blob_claim(kube_cluster: KubeCluster) -> None:
    rendered = _render(kube_cluster, "--set", "ingest.blobStorage.existingClaim=blobs")
    gateway = rendered[("Deployment", "loop-inference-gateway")]["spec"]["template"]["spec"]
    ingest = rendered[("Deployment", "loop-ingest")]["spec"]["template"]["spec"]
    env = {var["name"]: var.get("value") for var in gateway["containers"][0]["env"]}
    # the release's own model server, whatever the release is called (not only "edgeloop")
    assert env["EDGELOOP_INFERENCE_GATEWAY_MODEL_SERVER_REST_URL"] == "http://loop-model-server:8501"
    assert ("Service", "loop-model-server") in rendered
    # the pictures ingest writes under its data folder are readable by the gateway at the same path
    ingest_mount = {m["name"]: m["mountPath"] for m in ingest["containers"][0]["volumeMounts"]}["data"]
    gateway_mount = {m["name"]: m for m in gateway["containers"][0]["volumeMounts"]}["blobs"]
    assert gateway_mount["mountPath"] == ingest_mount and gateway_mount["readOnly"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in gateway["volumes"]}
    assert (
        claims == {"blobs": "blobs"}
        and {v["name"]: v for v in ingest["volumes"]}["data"]["persistentVolumeClaim"]["claimName"] == "blobs"
    )


def test_values_the_chart_cannot_run_with_are_refused_with_the_reason(kube_cluster: KubeCluster) -> None:
    for wrong, reason in (
        ("ingest.replicas=-3", "/ingest/replicas"),
        ("ingest.replica=2", "additional properties 'replica' not allowed"),  # a typo is not silently ignored
        ("deployer.workload=daemonset", "/deployer/workload"),
        ("edgeAgents.uplinkPolicy=everything", "/edgeAgents/uplinkPolicy"),
        ("ingest.port=70000", "/ingest/port"),
    ):
        rendered = _helm(kube_cluster, "template", "loop", str(CHART), "--set", wrong)
        assert rendered.returncode != 0 and reason in rendered.stderr, (wrong, rendered.stderr)
