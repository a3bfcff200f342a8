"""The whole chart on the real node, checked by its own ``helm test`` (issue 12).

Every service of the chart (ingest, the gateway, registry, trainer, drift, the deployer, the model server and the
edge agent of the real node's site) runs as a real pod of the EdgeLoop image on the kubelet + containerd node, under
the chart's securityContext, and ``helm test`` then checks from pods of the image that each answers 200 on its
readiness endpoint and that a picture a device publishes comes back classified. Then the deployer, asked through
its API, rolls the model out to the node's group: it reaches the API server through the ``kubernetes`` Service
(the node's api-forward) and its model server runs on the real node under its securityContext, serving the version.
Then two promotions with a canary on the real node, judged on the gateway's answers to a camera at the node's site:
a version sure of its answers completes, one barely sure of anything is stopped at its canary and rolled back.

The pods reach brokers of this test's own, started from ``edgeloop.infra``'s components on the real node's bridge
address (the host as the pods see it): Kafka over SASL_SSL (SCRAM), PostgreSQL over TLS (verify-full) and the
secured Mosquitto over TLS, their certificate made for that address. The shared ``infra up`` servers listen on
127.0.0.1 only (and Kafka advertises 127.0.0.1, which inside a pod is the pod itself), and they are left alone.

Bounded: the image is the one ``edgeloop images build`` cached (only a changed source rebuilds its top layer); the
model is the session's small trained one. About 5 to 8 minutes on 2 busy cores, most of it the pods starting.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from edgeloop import images
from edgeloop.device_identity import bootstrap_identities
from edgeloop.infra.component import Component
from edgeloop.infra.kafka import Kafka
from edgeloop.infra.mqtts import SecureMosquitto
from edgeloop.infra.postgres import Postgres
from edgeloop.infra.secure import KAFKA_USER, POSTGRES_TLS_DATABASE, POSTGRES_TLS_ROLE, SERVER_HOSTS, SecureLinks
from edgeloop.kube import edge, node
from edgeloop.paths import repo_root
from edgeloop.processes import pick_port
from kube_helpers import KubeCluster, describe_namespace, get_json, host_folder_claim, post_json, wait_for
from kubernetes import client

pytestmark = [pytest.mark.kube, pytest.mark.slow, pytest.mark.tf]

CHART = repo_root() / "helm" / "edgeloop"
VALUES = Path(__file__).with_name("helm-real-install-values.yaml")
GROUP = node.DEFAULT_GROUP  # the real node's node group, and the site of its edge agent
CLOUD_SITE, DEVICE = "site-cloud", "helm-test-camera"  # a cloud-first site: no edge agent answers it
INSTALL_TIMEOUT = "12m"
TEST_TIMEOUT = "8m"


def _echo(line: str) -> None:
    print(f"[helm real install] {line}", flush=True)


def _address_on(device: str) -> str | None:
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", device], capture_output=True, text=True, check=False
    )
    words = shown.stdout.split()
    return words[words.index("inet") + 1].split("/")[0] if "inet" in words else None


def _bridge_address(core: client.CoreV1Api, namespace: str, image: str) -> str:
    """The host's address on the real node's bridge: where its pods reach the host (their default gateway). The
    bridge CNI makes the bridge with the node's first pod: one is started when there is none yet."""
    if (address := _address_on(node.BRIDGE)) is not None:
        return address
    core.create_namespaced_pod(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "first-pod"},
            "spec": {
                "nodeSelector": edge.node_selector(GROUP),
                "tolerations": [edge.EDGE_TOLERATION],
                "automountServiceAccountToken": False,
                "restartPolicy": "Never",
                "containers": [
                    {"name": "nothing", "image": image, "imagePullPolicy": "Never", "command": ["python", "-c", "pass"]}
                ],
            },
        },
    )
    return wait_for(lambda: _address_on(node.BRIDGE), f"the real node's bridge {node.BRIDGE}", timeout=180)


@dataclass
class PodBrokers:
    """This test's Kafka, PostgreSQL and secured Mosquitto, on the bridge address, with TLS and credentials."""

    address: str
    links: SecureLinks
    kafka: Kafka
    postgres: Postgres
    mqtts: SecureMosquitto

    @property
    def database_url(self) -> str:
        """As a pod gives it: verify-full against the CA the chart mounts from global.tlsCaSecret."""
        password = self.links.credentials().postgres_password
        return (
            f"postgresql+psycopg://{POSTGRES_TLS_ROLE}:{password}@{self.address}:{self.postgres.port}"
            f"/{POSTGRES_TLS_DATABASE}?sslmode=verify-full&sslrootcert=/etc/edgeloop/tls-ca/ca.crt"
        )

    def password(self, identity: str) -> str:
        return str((self.mqtts.passwords_dir / f"{identity}.password").read_text().strip())

    def device_password(self) -> str:
        return str((self.mqtts.passwords_dir / "devices" / CLOUD_SITE / f"{DEVICE}.password").read_text().strip())


def _on(address: str, component_type: type[Component]) -> type[Component]:
    """The component listening on ``address`` instead of 127.0.0.1 (its listeners, advertised address, pg_hba)."""
    return type(f"Bridge{component_type.__name__}", (component_type,), {"host": address})


@pytest.fixture
def pod_brokers(edgeloop_image: images.BuiltImage, kube_api: client.ApiClient, namespace: str) -> Iterator[PodBrokers]:
    address = _bridge_address(client.CoreV1Api(kube_api), namespace, edgeloop_image.name.reference)
    work = Path(tempfile.mkdtemp(prefix="edgeloop-helm-brokers-"))
    work.chmod(0o755)  # PostgreSQL runs as its own user when we are root
    state = work / "state"
    state.mkdir()
    links = SecureLinks(state, hosts=(address, *SERVER_HOSTS))
    links.ensure(_echo)
    taken: set[int] = set()

    def free() -> int:
        port = int(pick_port(0, taken, host=address))
        taken.add(port)
        return port

    kafka = _on(address, Kafka)(state, repo_root(), secure=links)
    assert isinstance(kafka, Kafka)
    kafka.port, kafka.controller_port, kafka.secure_port = free(), free(), free()
    postgres = _on(address, Postgres)(state, repo_root(), secure=links)
    assert isinstance(postgres, Postgres)
    postgres.port = free()
    postgres.tls_client_networks = (node.POD_CIDR,)  # the pods log in from their own addresses
    mqtts = _on(address, SecureMosquitto)(state, repo_root(), secure=links)
    assert isinstance(mqtts, SecureMosquitto)
    mqtts.port = free()
    # The identities the chart's pods log in with, and the test's device, before the broker starts.
    mqtts.data_dir.mkdir(parents=True, exist_ok=True)
    bootstrap_identities(
        dynsec_file=mqtts.dynsec_file,
        passwords_dir=mqtts.passwords_dir,
        admin_password_file=mqtts.admin_password_file,
        services=("ingest", "inference-gateway", f"edge-{GROUP}"),
        devices=((CLOUD_SITE, DEVICE),),
        devices_dir=mqtts.passwords_dir / "devices",
    )
    servers: list[Component] = [kafka, postgres, mqtts]
    try:
        launches = [(server, server.launch(_echo)) for server in servers]
        for server, launch in reversed(launches):  # the quick ones first; Kafka boots meanwhile
            server.finish(launch, _echo)
        yield PodBrokers(address, links, kafka, postgres, mqtts)
    finally:
        for server in reversed(servers):
            try:
                server.stop(_echo)
            except Exception as exc:  # noqa: BLE001 - the others are stopped all the same; say why
                _echo(f"stopping {server.name} failed: {exc}")
        shutil.rmtree(work, ignore_errors=True)


def _secret(core: client.CoreV1Api, namespace: str, name: str, data: dict[str, str]) -> None:
    core.create_namespaced_secret(namespace, client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data=data))


def _helm(cluster: KubeCluster, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["helm", *args], capture_output=True, text=True, timeout=timeout, env=cluster.env(), check=False
    )


def _owned_folder(path: Path) -> Path:
    """A folder on the node's disk owned by the image's user (what values.yaml asks of a hostPath store)."""
    path.mkdir(parents=True)
    os.chown(path, images.USER_ID, images.USER_ID)
    return path


def test_the_whole_chart_runs_on_the_real_node_and_passes_helm_test(
    edgeloop_image: images.BuiltImage,
    pod_brokers: PodBrokers,
    trained_model_base: Path,
    trained_model_name: str,
    catdog_train_dir: Path,
    real_node: str,
    kube_api: client.ApiClient,
    kube_cluster: KubeCluster,
    namespace: str,
) -> None:
    began = time.monotonic()
    core = client.CoreV1Api(kube_api)
    brokers = pod_brokers
    _secret(core, namespace, "edgeloop-database", {"databaseUrl": brokers.database_url})
    _secret(
        core,
        namespace,
        "edgeloop-kafka",
        {"username": KAFKA_USER, "password": brokers.links.credentials().kafka_password},
    )
    _secret(core, namespace, "edgeloop-tls-ca", {"ca.crt": brokers.links.tls.ca_file.read_text()})
    identities = ("ingest", "inference-gateway", f"edge-{GROUP}")
    _secret(core, namespace, "edgeloop-mqtt", {f"{i}.password": brokers.password(i) for i in identities})
    _secret(
        core,
        namespace,
        "edgeloop-test-device",
        {"site": CLOUD_SITE, "device": DEVICE, "password": brokers.device_password()},
    )

    # The claims (hostPath volumes on the node, owned by the image's user): the models, with the trained model in
    # it (the model server reads it, the trainer would write the next versions there), and ingest's pictures,
    # which the gateway reads. The edge agent's store: a folder made beforehand, as values.yaml says.
    folders = node.node_paths().root / "volumes" / namespace
    models = _owned_folder(folders / "models")
    shutil.copytree(trained_model_base, models, dirs_exist_ok=True)
    for path in [models, *models.rglob("*")]:
        os.chown(path, images.USER_ID, images.USER_ID)
    _owned_folder(folders / "blobs")
    _owned_folder(folders / "edge" / GROUP)
    volumes = [
        host_folder_claim(core, namespace, "edgeloop-models", models),
        host_folder_claim(core, namespace, "edgeloop-blobs", folders / "blobs"),
    ]
    try:
        settings = [
            f"global.nodeSelector.kubernetes\\.io/hostname={real_node}",
            f"global.kafkaBootstrapServers={brokers.address}:{brokers.kafka.secure_port}",
            f"global.mqttHost={brokers.address}",
            f"global.mqttPort={brokers.mqtts.port}",
            f"modelServer.nodeGroup={GROUP}",
            f"modelServer.modelName={trained_model_name}",
            f"inferenceGateway.modelName={trained_model_name}",
            f"trainer.models={trained_model_name}",
            f"edgeAgents.sites={GROUP}",
            f"edgeAgents.modelName={trained_model_name}",
            # the site's model server: the release's (the deployer's rollout to the group is not part of this test)
            "edgeAgents.modelServerUrl=http://loop-model-server:8501",
            f"edgeAgents.storeHostPath={folders / 'edge'}",
            f"deployer.nodeGroups={GROUP}",  # the sites of the edge agents, were edgeAgents.sites empty
        ]
        installed = _helm(
            kube_cluster,
            "install", "loop", str(CHART), "-n", namespace, "-f", str(VALUES), "--set", ",".join(settings),
            "--wait", "--timeout", INSTALL_TIMEOUT,
            timeout=900,
        )  # fmt: skip
        installed_s = time.monotonic() - began
        assert installed.returncode == 0, (
            f"helm install failed after {installed_s:.0f} s: {installed.stderr}\n{describe_namespace(core, namespace)}"
        )
        pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/instance=loop").items
        names = {pod.metadata.labels.get("app.kubernetes.io/name") for pod in pods}
        expected = {"ingest", "inference-gateway", "registry", "trainer", "drift", "deployer", "model-server", "edge"}
        assert expected <= names, sorted(names)
        for pod in pods:
            assert pod.spec.node_name == real_node, (pod.metadata.name, pod.spec.node_name)
            assert pod.status.phase == "Running" and all(s.ready for s in pod.status.container_statuses), (
                pod.metadata.name
            )
            # the securityContext really applies: the kubelet ran each container as the image's numeric user
            assert pod.spec.security_context.run_as_user == images.USER_ID, pod.metadata.name

        tested = _helm(kube_cluster, "test", "loop", "-n", namespace, "--logs", "--timeout", TEST_TIMEOUT, timeout=600)
        print(tested.stdout, tested.stderr, sep="\n")
        _echo(f"install {installed_s:.0f} s, helm test {time.monotonic() - began - installed_s:.0f} s")
        assert tested.returncode == 0, (
            f"helm test failed: {tested.stdout}\n{tested.stderr}\n{describe_namespace(core, namespace)}"
        )
        assert "loop-test-readiness" in tested.stdout and "loop-test-classify" in tested.stdout, tested.stdout
        assert "Phase:          Failed" not in tested.stdout
        assert "8 of 8 ready" in tested.stdout, tested.stdout  # seven services and the site's edge agent
        # the picture's result, as the device printed it: "helm-test.png -> <label> <confidence>  (<model> v1) ..."
        assert "helm-test.png -> " in tested.stdout and f"({trained_model_name} v1)" in tested.stdout, tested.stdout

        _the_deployer_rolls_the_model_out_to_the_real_node(core, namespace, trained_model_name, real_node)
        _canaries_on_the_real_node(core, namespace, trained_model_name, real_node, models, catdog_train_dir)
    finally:
        for volume in volumes:
            core.delete_persistent_volume(volume)
        shutil.rmtree(folders, ignore_errors=True)


def _the_deployer_rolls_the_model_out_to_the_real_node(
    core: client.CoreV1Api, namespace: str, model: str, real_node: str
) -> None:
    """The Deploy button's request to the deployer pod: a rollout to the group, watched to ready; its model server
    (the deployer's own manifests: the lite server, the version pinned) Ready on the real node under its
    securityContext, serving that version through the group's Service."""
    from edgeloop_deployer.adapters.manifests import workload_name

    began = time.monotonic()
    token = _token(core, namespace)
    deployer = _service_url(core, namespace, "loop-deployer", 8086)
    started = post_json(
        f"{deployer}/v1/deployments",
        {"model_name": model, "node_group": GROUP, "version": 1, "reason": "helm real install test"},
        token=token,
    )
    followed = f"{deployer}{started['deployment']}"

    def ended() -> dict[str, Any] | None:
        state = get_json(followed, token=token)
        return state if state and state["phase"] in ("ready", "rolled_back", "failed") else None

    state = wait_for(ended, f"the deployer's rollout of {model} v1 to {GROUP}", timeout=300)
    _echo(f"the deployer's rollout: {state['phase']} in {time.monotonic() - began:.0f} s")
    assert (state["phase"], state["actual_version"]) == ("ready", 1), f"{state}\n{describe_namespace(core, namespace)}"

    selector = f"app.kubernetes.io/instance={workload_name(model, GROUP)}"
    [pod] = core.list_namespaced_pod(namespace, label_selector=selector).items
    assert pod.spec.node_name == real_node
    assert pod.spec.security_context.run_as_user == images.USER_ID and pod.spec.security_context.run_as_non_root
    assert pod.spec.containers[0].security_context.read_only_root_filesystem
    url = f"{_service_url(core, namespace, workload_name(model, GROUP), 8501)}/v1/models/{model}"
    status = wait_for(lambda: get_json(url, token=token), f"{url} through kube-proxy", timeout=60)
    assert [(v["version"], v["state"]) for v in status["model_version_status"]] == [("1", "AVAILABLE")]


def _token(core: client.CoreV1Api, namespace: str) -> str:
    return base64.b64decode(core.read_namespaced_secret("loop-api-tokens", namespace).data["admin.token"]).decode()


def _service_url(core: client.CoreV1Api, namespace: str, service: str, port: int) -> str:
    return f"http://{core.read_namespaced_service(service, namespace).spec.cluster_ip}:{port}"


def _upload(ingest: str, photo: Path, token: str) -> None:
    """A picture of the camera at the real node's site, through ingest's HTTP API (as `edgeloop device` uploads)."""
    request = urllib.request.Request(
        f"{ingest}/v1/samples?device_id=canary-camera&site_id={GROUP}",
        data=photo.read_bytes(),
        headers={"Content-Type": "image/jpeg", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201


def _canaries_on_the_real_node(
    core: client.CoreV1Api, namespace: str, model: str, real_node: str, models: Path, photos_dir: Path
) -> None:
    """Version 2 (sure of its answers) and then version 3 (barely sure of anything) promoted with a canary taking
    half of the site's pictures: each canary's model server is a pod on the real node; the gateway answers the
    share with the canary's version and the deployer judges the answers it reads from Kafka."""
    from edgeloop_deployer.adapters.manifests import workload_name

    from tests.model_fixtures import export_constant_model

    token = _token(core, namespace)
    deployer = _service_url(core, namespace, "loop-deployer", 8086)
    ingest = _service_url(core, namespace, "loop-ingest", 8081)
    served = f"{_service_url(core, namespace, 'loop-model-server', 8501)}/v1/models/{model}"
    for version, scores in ((2, (0.97, 0.03)), (3, (0.52, 0.48))):
        staging = models / f".{version}.new"
        export_constant_model(staging, scores)
        for path in [staging, *staging.rglob("*")]:
            os.chown(path, images.USER_ID, images.USER_ID)
        staging.rename(models / model / str(version))  # whole, or not at all, for the polling servers

    def every_version_available() -> bool:
        status = get_json(served, token=token) or {"model_version_status": []}
        return {v["version"] for v in status["model_version_status"] if v["state"] == "AVAILABLE"} == {"1", "2", "3"}

    wait_for(every_version_available, "the gateway's model server serving versions 1 to 3", timeout=120)
    photos = sorted((photos_dir / "cat").iterdir())[:6] + sorted((photos_dir / "dog").iterdir())[:6]
    canary_pods = f"app.kubernetes.io/instance={workload_name(model, GROUP, canary=True)}"

    def promote_with_canary(version: int) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        began = time.monotonic()
        post_json(
            f"{deployer}/v1/deployments",
            {"model_name": model, "node_group": GROUP, "version": version, "canary_weight": 0.5},
            token=token,
        )
        canary_nodes: list[str] = []
        sent = 0
        figures: dict[str, Any] = {}  # the canary's arm as last seen while it ran

        def decided() -> dict[str, Any] | None:
            nonlocal sent
            canary = get_json(f"{deployer}/v1/deployments/{model}/{GROUP}/canary", token=token)
            if not canary or canary["version"] != version:
                return None
            if canary["status"] in ("completed", "rolled_back"):
                return canary | {"seen": figures}
            if canary["canary"]:
                figures.update(canary["canary"])
            if canary["status"] == "watching":
                if not canary_nodes:
                    canary_nodes.extend(
                        p.spec.node_name for p in core.list_namespaced_pod(namespace, label_selector=canary_pods).items
                    )
                for photo in photos[sent % len(photos) :][:4]:
                    _upload(ingest, photo, token)
                    sent += 1
            return None

        canary = wait_for(decided, f"the canary of version {version} decided", timeout=360)

        def settled() -> dict[str, Any] | None:
            state = get_json(f"{deployer}/v1/deployments/{model}/{GROUP}", token=token)
            done = (
                state and state["desired_version"] == version and state["phase"] in ("ready", "rolled_back", "failed")
            )
            return state if done else None

        deployment = wait_for(settled, f"the rollout of version {version} ended", timeout=300)
        _echo(
            f"canary of version {version}: {canary['status']} after {sent} pictures, {time.monotonic() - began:.0f} s"
        )
        return canary, deployment, canary_nodes

    good, after_good, good_nodes = promote_with_canary(2)
    assert good_nodes == [real_node], good_nodes  # the canary's one pod ran on the real node
    assert good["status"] == "completed", good
    assert (after_good["phase"], after_good["actual_version"]) == ("ready", 2), after_good
    assert good["reason"].startswith("canary of version 2 passed"), good
    # the gateway gave the canary its share of the pictures, answered by version 2 (its constant 0.97)
    assert good["seen"]["answers"] >= 8 and good["seen"]["mean_confidence"] == pytest.approx(0.97, abs=1e-3), good

    unsure, after_unsure, unsure_nodes = promote_with_canary(3)
    assert unsure_nodes == [real_node], unsure_nodes
    assert unsure["status"] == "rolled_back", unsure
    assert unsure["reason"].startswith("canary of version 3 failed: mean confidence 0.520 against 0.970"), unsure
    assert (after_unsure["phase"], after_unsure["desired_version"], after_unsure["actual_version"]) == (
        "rolled_back",
        3,
        2,
    ), after_unsure
    assert after_unsure["reason"] == unsure["reason"]
    # the canary is gone; the group's model server still serves version 2 alone
    wait_for(
        lambda: not core.list_namespaced_pod(namespace, label_selector=canary_pods).items or None,
        "the canary's pod removed",
        timeout=120,
    )
    group = f"{_service_url(core, namespace, workload_name(model, GROUP), 8501)}/v1/models/{model}"
    status = get_json(group, token=token)
    assert status and [(v["version"], v["state"]) for v in status["model_version_status"]] == [("2", "AVAILABLE")]
