"""The blob store's settings as the chart and docker-compose.yml hand them to the services: every variable is a
setting the services have, the two agree with each other (same variables, bucket, region, S3 port), and no key
pair has a default in either."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from edgeloop.kube.cluster import helm_path
from edgeloop_common.settings import CommonSettings

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "edgeloop"
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SHARED = {f"EDGELOOP_{name.upper()}" for name in CommonSettings.model_fields}
BLOB_SETTINGS = {f"EDGELOOP_{name.upper()}" for name in CommonSettings.model_fields if name.startswith(("blob", "s3"))}
SECRETS = {"EDGELOOP_S3_ACCESS_KEY_ID", "EDGELOOP_S3_SECRET_ACCESS_KEY"}
# The services that write (ingest) and read (the gateway) pictures; the others get the shared settings too.
BLOB_USERS = ("ingest", "inference-gateway")


@pytest.fixture(scope="module")
def helm(request: pytest.FixtureRequest) -> Path:
    path = helm_path()
    if not path.is_file():
        request.getfixturevalue("kube_cluster")  # `edgeloop kube up` builds the pinned helm
    return path


def render(helm: Path, *settings: str) -> dict[str, dict[str, Any]]:
    """`helm template` of the chart: each cloud service's container env, {service: {name: entry}} (the edge agents
    and model servers at the sites read no blob store)."""
    arguments = [str(helm), "template", "loop", str(CHART)]
    for setting in settings:
        arguments += ["--set", setting]
    done = subprocess.run(arguments, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    services: dict[str, dict[str, Any]] = {}
    for document in yaml.safe_load_all(done.stdout):
        if not document or document.get("kind") != "Deployment":
            continue
        for container in document["spec"]["template"]["spec"]["containers"]:
            env = {entry["name"]: entry for entry in container.get("env", [])}
            if container.get("args") and "EDGELOOP_DATABASE_URL" in env:  # the cloud services (shared settings)
                services[container["args"][0]] = env
    return services


S3_VALUES = (
    "global.blobStore.type=s3",
    "global.blobStore.s3.endpoint=http://seaweedfs.storage:8333",
    "global.blobStore.s3.credentialsSecret=edgeloop-s3",
)


def test_the_charts_s3_settings_are_settings_of_the_services_and_the_keys_come_from_the_secret(helm: Path) -> None:
    services = render(helm, *S3_VALUES)
    assert set(BLOB_USERS) <= set(services)
    for name, env in services.items():
        blob = {variable for variable in env if variable in BLOB_SETTINGS or variable.startswith("EDGELOOP_S3_")}
        assert blob <= SHARED, f"{name}: {blob - SHARED} are not settings of CommonSettings"
        assert blob == BLOB_SETTINGS - {"EDGELOOP_S3_CA_FILE"}, f"{name} lacks {BLOB_SETTINGS - blob}"
        assert env["EDGELOOP_BLOB_STORE"]["value"] == "s3"
        assert env["EDGELOOP_S3_ENDPOINT_URL"]["value"] == "http://seaweedfs.storage:8333"
        for secret in SECRETS:
            assert "value" not in env[secret], f"{name}: {secret} given in clear"
            assert env[secret]["valueFrom"]["secretKeyRef"]["name"] == "edgeloop-s3"


def test_by_default_the_chart_keeps_the_folder_store_and_passes_no_s3_setting(helm: Path) -> None:
    for name, env in render(helm).items():
        assert env["EDGELOOP_BLOB_STORE"]["value"] == "folder", name
        assert not [variable for variable in env if variable.startswith("EDGELOOP_S3_")], name
    without_secret = render(helm, "global.blobStore.type=s3")  # a pod role instead of keys: none passed
    assert not SECRETS & set(without_secret["ingest"])


def test_the_values_hold_no_key_pair() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    s3 = values["global"]["blobStore"]["s3"]
    assert s3["credentialsSecret"] == ""
    text = (CHART / "values.yaml").read_text()
    assert not re.search(r"(?i)(secretAccessKey|accessKeyId)\s*:\s*\S", text), "a key in values.yaml"


def test_compose_points_the_services_at_its_seaweedfs_as_the_chart_would() -> None:
    services = COMPOSE["services"]
    chart_defaults = yaml.safe_load((CHART / "values.yaml").read_text())["global"]["blobStore"]["s3"]
    seaweedfs = services["seaweedfs"]
    port = re.search(r"-s3\.port=(\d+)", seaweedfs["command"])
    s3_port = int(port.group(1)) if port else 8333  # weed's default
    for name in BLOB_USERS:
        env = services[name]["environment"]
        blob = {variable for variable in env if variable in BLOB_SETTINGS or variable.startswith("EDGELOOP_S3_")}
        assert blob == BLOB_SETTINGS - {"EDGELOOP_S3_CA_FILE"}, f"{name}: {blob ^ BLOB_SETTINGS}"
        assert env["EDGELOOP_BLOB_STORE"] == "s3"
        assert env["EDGELOOP_S3_ENDPOINT_URL"] == f"http://seaweedfs:{s3_port}"
        assert env["EDGELOOP_S3_BUCKET"] == chart_defaults["bucket"]
        assert env["EDGELOOP_S3_REGION"] == chart_defaults["region"]
        for secret in SECRETS:  # no default: compose refuses to start without them
            assert re.fullmatch(rf"\$\{{{secret}:\?[^}}]+\}}", env[secret]), f"{name}: {secret}={env[secret]}"
        assert services[name]["depends_on"]["seaweedfs"] == {"condition": "service_healthy"}
    # The server's admin identity is the same key pair the services sign with.
    assert seaweedfs["environment"]["AWS_ACCESS_KEY_ID"].startswith("${EDGELOOP_S3_ACCESS_KEY_ID:?")
    assert seaweedfs["environment"]["AWS_SECRET_ACCESS_KEY"].startswith("${EDGELOOP_S3_SECRET_ACCESS_KEY:?")
    assert f"localhost:{s3_port}/healthz" in " ".join(seaweedfs["healthcheck"]["test"])
