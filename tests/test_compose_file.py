"""docker-compose.yml read the way Compose reads it and checked against the repository and the services' own
settings: no Docker engine runs here, so what would break `docker compose up` is found by reading it —
a file it mounts that does not exist, a Dockerfile that copies what the build context leaves out, an
EDGELOOP_* variable no service reads (a misspelled one is silently ignored), a URL naming no service.
(The broker's config runs on the real Mosquitto in test_compose_mqtt_identity.py.)"""

from __future__ import annotations

import fnmatch
import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from edgeloop_common.settings import CommonSettings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# Made by the operator before the first start (the compose file's header says how).
OPERATOR_MADE = {"./models", "./seed", "./camera"}
# The services built from their own Dockerfile (the api-tokens job runs the all-in-one image's `edgeloop` command).
PACKAGES = {
    name: "edgeloop_" + name.replace("-", "_")
    for name in SERVICES
    if "build" in SERVICES[name] and SERVICES[name]["build"]["dockerfile"] != "Dockerfile"
}


def _bind_sources(service: dict[str, Any]) -> list[str]:
    sources = []
    for volume in service.get("volumes", []):
        source = str(volume).split(":")[0]
        source = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", source)  # ${VAR:-default}: the default
        if source.startswith("."):
            sources.append(source)
    return sources


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) or path.startswith(f"{p}/") for p in patterns)


def test_every_file_the_compose_file_mounts_is_in_the_repository() -> None:
    for name, service in SERVICES.items():
        for source in _bind_sources(service):
            if source not in OPERATOR_MADE:
                assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"


def test_every_image_builds_from_what_the_context_sends() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()]
    patterns = [p for p in patterns if not p.startswith("#")]
    for name, service in SERVICES.items():
        if "build" not in service:
            continue
        dockerfile = REPO / service["build"]["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY ") and "--from" not in line:
                for source in line.split()[1:-1]:
                    assert (REPO / source).exists(), f"{name}: {dockerfile.name} copies {source}, which does not exist"
                    assert not _ignored(source.rstrip("/"), patterns), f"{name}: {source} is in .dockerignore"


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_every_edgeloop_variable_is_one_the_service_reads(name: str) -> None:
    settings = importlib.import_module(f"{PACKAGES[name]}.settings").Settings
    prefix = settings.model_config["env_prefix"]
    own = {f"{prefix}{field.upper()}" for field in settings.model_fields if field != "common"}
    shared = {f"EDGELOOP_{field.upper()}" for field in CommonSettings.model_fields}
    for variable in SERVICES[name].get("environment", {}):
        if variable.startswith("EDGELOOP_"):
            assert variable in own | shared, f"{name}: {variable} is not a setting of {PACKAGES[name]}"


def test_the_urls_between_services_name_services_of_the_file() -> None:
    for name, service in SERVICES.items():
        for variable, value in (service.get("environment") or {}).items():
            for host in re.findall(r"(?:https?://|^)([a-z][a-z0-9-]*):\d+", str(value)):
                assert host in SERVICES, f"{name}: {variable}={value} names {host}, not a service of the file"


# The broker's config (secured: identities and TLS) runs on the real Mosquitto with the mqtt-identities job's files
# in tests/test_compose_mqtt_identity.py.


def test_api_tokens_are_required_and_each_service_has_its_own() -> None:
    """Auth on by default (docs/security.md): every service with an HTTP API requires API tokens and presents its
    own (made by the api-tokens job before it starts); no token or password of ours is written in the file."""
    bootstrap = SERVICES["api-tokens"]
    made = set(bootstrap["command"][bootstrap["command"].index("--services") + 1].split(","))
    for name in PACKAGES:
        service = SERVICES[name]
        env = service["environment"]
        assert env["EDGELOOP_API_TOKENS_FILE"] == "/run/edgeloop-auth/tokens.json", name
        assert env["EDGELOOP_API_TOKEN_FILE"] == f"/run/edgeloop-auth/{name}.token", name
        assert name in made, f"{name}: api-tokens makes no token for it"
        assert "api-tokens:/run/edgeloop-auth:ro" in service["volumes"], name
        assert service["depends_on"]["api-tokens"] == {"condition": "service_completed_successfully"}, name
        if name != "console":  # the console signs people in; the services refuse requests without a token
            assert env["EDGELOOP_API_AUTH"] == "required", name
    assert "elt_" not in (REPO / "docker-compose.yml").read_text()
