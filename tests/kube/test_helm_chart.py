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
        # The site's canary: asked of the release's deployer (its Service and port, below).
        assert (env["EDGELOOP_EDGE_DEPLOYER_URL"], env["EDGELOOP_EDGE_CANARY_POLL_S"]) == (
            "http://loop-deployer:8086",
            "2",
        )
        store = {volume["name"]: volume for volume in pod["volumes"]}["store"]
        assert store["hostPath"] == {"path": f"/var/lib/edgeloop/edge/{site}", "type": "Directory"}
    deployer_port = rendered[("Service", "loop-deployer")]["spec"]["ports"][0]
    assert deployer_port["port"] == 8086
    one = _render(kube_cluster, "--set", "edgeAgents.sites=site-b")
    assert [name for kind, name in one if kind == "Deployment" and "-edge-" in name] == ["loop-edge-site-b"]
    no_deployer = _render(kube_cluster, "--set", "deployer.enabled=false")
    assert "EDGELOOP_EDGE_DEPLOYER_URL" not in {
        var["name"] for var in _container_env(no_deployer[("Deployment", "loop-edge-site-a")])
    }
    elsewhere = _render(
        kube_cluster,
        "--set",
        "deployer.enabled=false,edgeAgents.deployerUrl=https://deployer.cloud.example,edgeAgents.canaryPollS=1.5",
    )
    env = {var["name"]: var.get("value") for var in _container_env(elsewhere[("Deployment", "loop-edge-site-a")])}
    assert (env["EDGELOOP_EDGE_DEPLOYER_URL"], env["EDGELOOP_EDGE_CANARY_POLL_S"]) == (
        "https://deployer.cloud.example",
        "1.5",
    )
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
    # (volumes beside the claims, such as the api-tokens Secret, are not in question here)
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in gateway["volumes"] if "persistentVolumeClaim" in v
    }
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


def test_every_object_carries_the_recommended_labels_and_operators_get_traces_metrics_and_a_dashboard(
    kube_cluster: KubeCluster,
) -> None:
    plain = _render(kube_cluster)
    for (kind, name), document in plain.items():
        labels = document["metadata"].get("labels", {})
        for label in ("app.kubernetes.io/part-of", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by"):
            assert label in labels, f"{kind} {name} has no {label}"
    assert not [key for key in plain if key[0] in {"ServiceMonitor", "ConfigMap"}], "observability is opt-in"
    assert not any(
        var["name"] == "EDGELOOP_OTLP_ENDPOINT"
        for (kind, _), document in plain.items()
        if kind == "Deployment"
        for var in _container_env(document)
    )

    watched = _render(
        kube_cluster,
        "--set", "observability.otlpEndpoint=http://otel-collector:4318",
        "--set", "observability.serviceMonitor.enabled=true",
        "--set", "observability.serviceMonitor.labels.release=prometheus",
        "--set", "observability.grafanaDashboard.enabled=true",
    )  # fmt: skip
    deployments = {name: document for (kind, name), document in watched.items() if kind == "Deployment"}
    for name, document in deployments.items():
        env = {var["name"]: var.get("value") for var in _container_env(document)}
        assert env.get("EDGELOOP_OTLP_ENDPOINT") == "http://otel-collector:4318", f"{name} exports no spans"
    monitor = watched[("ServiceMonitor", "loop-edgeloop")]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    endpoints = monitor["spec"]["endpoints"]
    assert endpoints == [{"port": port, "path": "/metrics", "interval": "30s"} for port in ("http", "rest")]
    services = [document for (kind, _), document in watched.items() if kind == "Service"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    for service in services:  # the monitor selects every service, and each names the port it scrapes
        assert selector.items() <= service["metadata"]["labels"].items(), service["metadata"]["name"]
        names = {port.get("name") for port in service["spec"]["ports"]}
        assert names & {"http", "rest"}, service["metadata"]["name"]
    dashboard = json.loads(watched[("ConfigMap", "loop-edgeloop-dashboard")]["data"]["edgeloop.json"])
    queried = " ".join(target["expr"] for panel in dashboard["panels"] for target in panel["targets"])
    for metric in ("edgeloop_http_requests_total", "edgeloop_bridge_messages_total", "process_cpu_seconds_total"):
        assert metric in queried

    refused = _helm(kube_cluster, "template", "loop", str(CHART), "--set", "observability.otlpEndpoint=otel:4318")
    assert refused.returncode != 0 and "otlpEndpoint" in refused.stderr


def _api_tokens(secret_data: dict[str, str]) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(token by id, the store's entries) of the chart's API token Secret (stringData or base64 data)."""
    import base64

    def text(value: str) -> str:
        return value if value.startswith(("elt_", "{")) else base64.b64decode(value).decode()

    tokens = {key.removesuffix(".token"): text(value) for key, value in secret_data.items() if key.endswith(".token")}
    return tokens, json.loads(text(secret_data["tokens.json"]))["tokens"]


def test_api_tokens_are_required_by_default_each_service_with_its_own_and_none_in_the_values(
    kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    from edgeloop_common.api_auth import TokenStore

    rendered = _render(kube_cluster)
    secret = rendered[("Secret", "loop-api-tokens")]
    tokens, store = _api_tokens(secret["stringData"])
    services = {"ingest", "inference-gateway", "registry", "trainer", "drift", "deployer", "model-server"}
    assert services | {"edge-site-a", "edge-site-b", "admin"} == set(tokens)
    assert {entry["id"]: entry["role"] for entry in store}["admin"] == "admin"
    assert all(token not in secret["stringData"]["tokens.json"] for token in tokens.values())  # hashes only
    (tmp_path / "tokens.json").write_text(secret["stringData"]["tokens.json"])
    checked = TokenStore([tmp_path / "tokens.json"])
    for token_id, token in tokens.items():
        assert checked.authenticate(token).token_id == token_id
    deployments = {name: doc for (kind, name), doc in rendered.items() if kind == "Deployment"}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        env = {var["name"]: var for var in _container_env(deployment)}
        service = name.removeprefix("loop-")
        assert env["EDGELOOP_API_AUTH"]["value"] == "required", name
        assert env["EDGELOOP_API_TOKENS_FILE"]["value"] == "/etc/edgeloop/api-tokens/tokens.json", name
        assert env["EDGELOOP_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "loop-api-tokens",
            "key": f"{service}.token",
        }, name
        volume = next(v for v in pod["volumes"] if v["name"] == "api-tokens")
        assert volume["secret"]["items"] == [{"key": "tokens.json", "path": "tokens.json"}], name  # no other token
    assert (
        deployments["loop-model-server"]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"][
            "path"
        ]
        == "/readyz"
    )
    assert "elt_" not in (CHART / "values.yaml").read_text()

    off = _render(kube_cluster, "--set", "apiAuth.mode=off")
    assert ("Secret", "loop-api-tokens") not in off
    for (kind, name), doc in off.items():
        if kind == "Deployment":
            env = {var["name"]: var.get("value") for var in _container_env(doc)}
            assert env["EDGELOOP_API_AUTH"] == "off" and "EDGELOOP_API_TOKEN" not in env, name
    mine = _render(kube_cluster, "--set", "apiAuth.existingSecret=my-tokens,apiAuth.extraTokensSecret=people")
    assert ("Secret", "loop-api-tokens") not in mine
    ingest = mine[("Deployment", "loop-ingest")]
    files = {var["name"]: var.get("value") for var in _container_env(ingest)}["EDGELOOP_API_TOKENS_FILE"]
    assert files == "/etc/edgeloop/api-tokens/tokens.json,/etc/edgeloop/api-tokens-extra/tokens.json"


def test_the_api_tokens_survive_an_upgrade(
    kube_cluster: KubeCluster, kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    install = _helm(kube_cluster, "install", "kept", str(CHART), "-n", namespace)
    assert install.returncode == 0, install.stdout + install.stderr
    first, _ = _api_tokens(core.read_namespaced_secret("kept-api-tokens", namespace).data)
    upgrade = _helm(kube_cluster, "upgrade", "kept", str(CHART), "-n", namespace, "--set", "registry.replicas=2")
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    second, store = _api_tokens(core.read_namespaced_secret("kept-api-tokens", namespace).data)
    assert first == second and len(store) == len(first)


# -- MQTT identities and TLS (docs/security.md, "Device identity on MQTT") -----------------------------------------

MQTT_USERS = {"loop-ingest": "ingest", "loop-inference-gateway": "inference-gateway"}


def _template(*settings: str) -> subprocess.CompletedProcess[str]:
    """`helm template loop CHART --set ...` with the pinned helm (`edgeloop kube up` built it; no cluster needed)."""
    from edgeloop.kube.cluster import helm_path

    helm = helm_path()
    assert helm.is_file(), f"{helm} missing: `edgeloop kube up` builds the pinned helm"
    arguments = [str(helm), "template", "loop", str(CHART)]
    for setting in settings:
        arguments += ["--set", setting]
    return subprocess.run(arguments, capture_output=True, text=True, timeout=60, check=False)


def _rendered(*settings: str) -> dict[tuple[str, str], dict[str, Any]]:
    done = _template(*settings)
    assert done.returncode == 0, done.stderr
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(done.stdout) if doc}


def _mqtt_clients(rendered: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{deployment: its env by name} of the pods that talk MQTT: ingest, the gateway, each site's edge agent."""
    return {
        name: {var["name"]: var for var in _container_env(doc)}
        for (kind, name), doc in rendered.items()
        if kind == "Deployment" and (name in MQTT_USERS or name.startswith("loop-edge-"))
    }


def test_every_mqtt_service_has_its_own_identity_and_tls_by_default_and_no_password_is_in_the_values() -> None:
    rendered = _rendered()
    secret = rendered[("Secret", "loop-mqtt-credentials")]
    passwords = secret["stringData"]
    expected = {"ingest", "inference-gateway", "edge-site-a", "edge-site-b"}
    assert set(passwords) == {f"{name}.password" for name in expected}
    assert len(set(passwords.values())) == len(expected) and all(len(p) >= 32 for p in passwords.values())
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    clients = _mqtt_clients(rendered)
    assert set(clients) == {"loop-ingest", "loop-inference-gateway", "loop-edge-site-a", "loop-edge-site-b"}
    for name, env in clients.items():
        identity = MQTT_USERS.get(name) or name.removeprefix("loop-")
        assert env["EDGELOOP_MQTT_USERNAME"]["value"] == identity, name
        assert env["EDGELOOP_MQTT_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "loop-mqtt-credentials",
            "key": f"{identity}.password",
        }, name
        assert env["EDGELOOP_MQTT_TLS"]["value"] == "true", name
        assert env["EDGELOOP_MQTT_TLS_CA_FILE"]["value"] == "/etc/edgeloop/mqtt-ca/ca.crt", name
        pod = rendered[("Deployment", name)]["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "mqtt-ca")
        assert volume["secret"] == {"secretName": "edgeloop-tls-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["mqtt-ca"] == "/etc/edgeloop/mqtt-ca", name
        port = env.get("EDGELOOP_MQTT_PORT") or env["EDGELOOP_EDGE_MQTT_PORT"]
        assert port["value"] == "8883", name
    # The services that never talk MQTT get no identity (least privilege); no Job without an admin Secret.
    for (kind, name), doc in rendered.items():
        if kind == "Deployment" and name not in clients:
            assert "EDGELOOP_MQTT_PASSWORD" not in {var["name"] for var in _container_env(doc)}, name
    assert not [key for key in rendered if key[0] == "Job"]
    values = (CHART / "values.yaml").read_text()
    assert not any(password in values for password in passwords.values())
    assert "password" not in yaml.safe_dump(yaml.safe_load(values)["global"]["mqtt"]).lower()

    own = _rendered("global.mqtt.credentialsSecret=my-mqtt", "global.mqtt.caSecret=broker-ca")
    assert ("Secret", "loop-mqtt-credentials") not in own
    for name, env in _mqtt_clients(own).items():
        assert env["EDGELOOP_MQTT_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "my-mqtt", name
        pod = own[("Deployment", name)]["spec"]["template"]["spec"]
        assert next(v for v in pod["volumes"] if v["name"] == "mqtt-ca")["secret"]["secretName"] == "broker-ca"


def test_rendering_refuses_mqtt_tls_without_a_ca_secret_and_plain_text_is_a_choice() -> None:
    refused = _template("global.mqtt.caSecret=", "global.tlsCaSecret=")
    assert refused.returncode != 0 and "global.mqtt.caSecret" in refused.stderr, refused.stderr
    plain = _rendered("global.mqtt.tls=false", "global.mqttPort=1883")
    for name, env in _mqtt_clients(plain).items():
        assert "EDGELOOP_MQTT_TLS_CA_FILE" not in env and "EDGELOOP_MQTT_TLS" not in env, name
        assert env["EDGELOOP_MQTT_USERNAME"]["value"], name  # still its own identity
        pod = plain[("Deployment", name)]["spec"]["template"]["spec"]
        assert "mqtt-ca" not in {v["name"] for v in pod["volumes"]}, name
    wrong = _template("global.mqtt.tls=maybe")
    assert wrong.returncode != 0 and "/global/mqtt/tls" in wrong.stderr, wrong.stderr


def test_with_the_brokers_admin_secret_a_job_creates_every_identity_after_install_and_upgrade() -> None:
    rendered = _rendered("global.mqtt.adminSecret=mqtt-admin", "edgeAgents.mqttHost=site-broker")
    job = rendered[("Job", "loop-mqtt-identities")]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    script = container["args"][0]
    for identity in ("ingest", "inference-gateway"):
        line = (
            f"edgeloop device add-service {identity} --password-file /etc/edgeloop/mqtt-credentials/{identity}.password"
        )
        assert line in script
    for site in ("site-a", "site-b"):  # the edge agents' identities go to their site broker
        assert (
            f'EDGELOOP_MQTT_HOST="site-broker" EDGELOOP_MQTT_PORT="8883" edgeloop device add-service edge '
            f'--site "{site}" --password-file /etc/edgeloop/mqtt-credentials/edge-{site}.password'
        ) in script
    env = {var["name"]: var for var in container["env"]}
    assert env["EDGELOOP_MQTT_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mqtt-admin", "key": "password"}
    assert env["EDGELOOP_MQTT_TLS_CA_FILE"]["value"] == "/etc/edgeloop/mqtt-ca/ca.crt"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["mqtt-credentials"]["secret"]["secretName"] == "loop-mqtt-credentials"


def test_only_the_deployer_gets_a_service_account_token() -> None:
    """Issue 12: no service-account token where none is needed. Only the deployer calls the Kubernetes API."""
    rendered = _rendered()
    pods = {name: doc["spec"]["template"]["spec"] for (kind, name), doc in rendered.items() if kind == "Deployment"}
    assert {"loop-ingest", "loop-model-server", "loop-deployer"} <= set(pods)
    with_token = sorted(name for name, spec in pods.items() if spec.get("automountServiceAccountToken", True))
    assert with_token == ["loop-deployer"]
    assert pods["loop-deployer"]["serviceAccountName"] == "loop-deployer"


# -- securityContext (issue 12; values.yaml, global.podSecurityContext and global.securityContext) -----------------

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}


def _pod_specs(rendered: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{"Kind/name": its pod spec} of every object that makes pods (a `helm test` Pod, a hook Job, a CronJob too)."""
    pods: dict[str, dict[str, Any]] = {}
    for (kind, name), document in rendered.items():
        if kind not in WORKLOAD_KINDS:
            continue
        spec = document["spec"]
        if kind == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        pods[f"{kind}/{name}"] = spec if kind == "Pod" else spec["template"]["spec"]
    return pods


def _unconfined(pods: dict[str, dict[str, Any]]) -> list[str]:
    """What each pod and container lacks of issue 12's securityContext, one line each (empty: nothing)."""
    from edgeloop import images

    missing: list[str] = []
    for name, pod in pods.items():
        context = pod.get("securityContext") or {}
        if context.get("runAsNonRoot") is not True:
            missing.append(f"{name}: runAsNonRoot is not true")
        if context.get("runAsUser") != images.USER_ID:
            missing.append(f"{name}: runAsUser is {context.get('runAsUser')!r}, not the image's {images.USER_ID}")
        for key in ("runAsGroup", "fsGroup"):
            if not isinstance(context.get(key), int):
                missing.append(f"{name}: {key} is {context.get(key)!r}, not a number")
        if context.get("seccompProfile") != {"type": "RuntimeDefault"}:
            missing.append(f"{name}: seccompProfile is {context.get('seccompProfile')!r}")
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            where = f"{name} container {container['name']}"
            own = container.get("securityContext") or {}
            if own.get("allowPrivilegeEscalation") is not False:
                missing.append(f"{where}: allowPrivilegeEscalation is not false")
            if own.get("readOnlyRootFilesystem") is not True:
                missing.append(f"{where}: readOnlyRootFilesystem is not true")
            if (own.get("capabilities") or {}).get("drop") != ["ALL"]:
                missing.append(f"{where}: capabilities drop {(own.get('capabilities') or {}).get('drop')!r}")
            for key in ("runAsUser", "runAsNonRoot", "privileged"):  # nothing may undo the pod's
                if key in own and own[key] != context.get(key, False):
                    missing.append(f"{where}: {key} {own[key]!r} overrides the pod's")
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}) or tmp[0].get("readOnly"):
                missing.append(f"{where}: no writable emptyDir at /tmp")
    return missing


def test_every_pod_and_container_runs_as_the_images_numeric_non_root_user_on_a_read_only_root() -> None:
    """Issue 12: every pod of the chart (each service, each site's edge agent, the tensorflow/serving model server,
    the MQTT identities Job, the `helm test` pods) and every container and init container in it."""
    default = _rendered()
    everything = _rendered(
        "global.mqtt.adminSecret=mqtt-admin",  # the Job
        "tests.deviceSecret=camera",  # both `helm test` pods
        "trainer.seedData.existingClaim=seed,ingest.blobStorage.existingClaim=blobs,modelServer.modelsClaim=models",
    )
    serving = _rendered("modelServer.image=tensorflow/serving:2.19.0")
    pods = {
        f"{label}: {name}": pod
        for label, rendered in (("default", default), ("everything", everything), ("tf-serving", serving))
        for name, pod in _pod_specs(rendered).items()
    }
    made = {name.split(": ", 1)[1] for name in pods}
    services = ("ingest", "inference-gateway", "model-server", "deployer", "registry", "trainer", "drift")
    expected = {f"Deployment/loop-{service}" for service in services} | {
        "Deployment/loop-edge-site-a",
        "Deployment/loop-edge-site-b",
        "Job/loop-mqtt-identities",
        "Pod/loop-test-readiness",
        "Pod/loop-test-classify",
    }
    assert expected <= made, sorted(expected - made)
    assert _unconfined(pods) == []

    # The check itself finds a pod under another user, and a container that drops nothing (a component's key
    # replaces the global one whole: capabilities with an add and no drop).
    broken = _pod_specs(
        _rendered("ingest.securityContext.capabilities.add[0]=NET_RAW", "drift.podSecurityContext.runAsUser=0")
    )
    assert sorted(_unconfined(broken)) == [
        "Deployment/loop-drift: runAsUser is 0, not the image's 10001",
        "Deployment/loop-ingest container ingest: capabilities drop None",
    ]


def test_the_security_context_is_overridable_per_component_and_for_all_and_matches_the_deployers_model_servers() -> (
    None
):
    from edgeloop_deployer.adapters.manifests import ServingSpec, container_security_context, pod_security_context

    values = yaml.safe_load((CHART / "values.yaml").read_text())["global"]
    # The model servers the deployer rolls out run under the same contexts as the chart's pods.
    assert pod_security_context(ServingSpec()) == values["podSecurityContext"]
    assert container_security_context() == values["securityContext"]

    moved = _pod_specs(
        _rendered(
            "global.podSecurityContext.runAsUser=20000",
            "trainer.securityContext.readOnlyRootFilesystem=false",  # a false replaces the global true
            "trainer.podSecurityContext.fsGroup=30000",
        )
    )
    for name, pod in moved.items():
        assert pod["securityContext"]["runAsUser"] == 20000, name
        trainer = name == "Deployment/loop-trainer"
        assert pod["securityContext"]["fsGroup"] == (30000 if trainer else 10001), name
        assert pod["securityContext"]["runAsGroup"] == 10001, name
        container = pod["containers"][0]["securityContext"]
        assert container["readOnlyRootFilesystem"] is not trainer, name
        assert container["capabilities"] == {"drop": ["ALL"]}, name  # the keys not replaced stay
    wrong = _template("global.podSecurityContext.runAsUser=root")
    assert wrong.returncode != 0 and "/global/podSecurityContext/runAsUser" in wrong.stderr, wrong.stderr

    # The deployer's model servers follow the same ids (its settings), or ids of their own.
    def model_server_ids(*settings: str) -> dict[str, Any]:
        env = _container_env(_rendered(*settings)[("Deployment", "loop-deployer")])
        return {var["name"]: var["value"] for var in env if var["name"].startswith("EDGELOOP_DEPLOYER_RUN_AS_")} | {
            var["name"]: var["value"] for var in env if var["name"] == "EDGELOOP_DEPLOYER_FS_GROUP"
        }

    assert model_server_ids() == {
        "EDGELOOP_DEPLOYER_RUN_AS_USER": "10001",
        "EDGELOOP_DEPLOYER_RUN_AS_GROUP": "10001",
        "EDGELOOP_DEPLOYER_FS_GROUP": "10001",
    }
    assert model_server_ids("global.podSecurityContext.runAsUser=20000")["EDGELOOP_DEPLOYER_RUN_AS_USER"] == "20000"
    own = model_server_ids(
        "deployer.modelServerPodSecurityContext.runAsUser=30000", "global.podSecurityContext.fsGroup=40000"
    )
    assert own["EDGELOOP_DEPLOYER_RUN_AS_USER"] == "30000" and own["EDGELOOP_DEPLOYER_FS_GROUP"] == "40000", own
    wrong = _template("deployer.modelServerPodSecurityContext.runAsUser=0")
    assert wrong.returncode != 0 and "/deployer/modelServerPodSecurityContext/runAsUser" in wrong.stderr, wrong.stderr


def test_the_edge_store_is_a_prepared_host_folder_never_one_the_kubelet_creates_root_owned_or_an_empty_dir() -> None:
    """A non-root agent cannot write a folder the kubelet would create as root (DirectoryOrCreate), and a hostPath
    is never given the pod's fsGroup: the folder is made beforehand, owned by the agent's user (values.yaml), and the
    pod waits for it with the reason; or the store is an emptyDir, lost with the pod."""
    on_disk = _pod_specs(_rendered("edgeAgents.storeHostPath=/srv/edge"))["Deployment/loop-edge-site-a"]
    store = {volume["name"]: volume for volume in on_disk["volumes"]}["store"]
    assert store == {"name": "store", "hostPath": {"path": "/srv/edge/site-a", "type": "Directory"}}
    mounts = {mount["name"]: mount for mount in on_disk["containers"][0]["volumeMounts"]}
    assert mounts["store"]["mountPath"] == "/var/lib/edgeloop" and not mounts["store"].get("readOnly")

    trial = _pod_specs(_rendered("edgeAgents.store=emptyDir"))["Deployment/loop-edge-site-b"]
    assert {volume["name"]: volume for volume in trial["volumes"]}["store"] == {"name": "store", "emptyDir": {}}
    refused = _template("edgeAgents.store=hostpath")
    assert refused.returncode != 0 and "/edgeAgents/store" in refused.stderr, refused.stderr
