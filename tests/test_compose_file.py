"""docker-compose.yml read the way Compose reads it and checked against the repository and the services' own
settings: no Docker engine runs here, so what would break `docker compose up` is found by reading it —
a file it mounts that does not exist, a Dockerfile that copies what the build context leaves out, an
EDGELOOP_* variable no service reads (a misspelled one is silently ignored), a URL naming no service —
and the broker's config is started with the real Mosquitto."""

from __future__ import annotations

import fnmatch
import importlib
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from edgeloop_common.settings import CommonSettings

from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# Made by the operator before the first start (the compose file's header says how).
OPERATOR_MADE = {"./models", "./seed"}
PACKAGES = {name: "edgeloop_" + name.replace("-", "_") for name in SERVICES if "build" in SERVICES[name]}


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


@pytest.mark.mqtt
def test_the_brokers_config_starts_the_real_mosquitto(tmp_path: Path) -> None:
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    assert mosquitto, "mosquitto is installed by `edgeloop infra up`"
    port = free_port()
    config = (REPO / "infra/mosquitto/compose.conf").read_text()
    config = config.replace("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1")
    config = config.replace("/mosquitto/data/", f"{tmp_path}/")
    (tmp_path / "mosquitto.conf").write_text(config)
    broker = subprocess.Popen([mosquitto, "-c", str(tmp_path / "mosquitto.conf")], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert broker.poll() is None, broker.stderr.read().decode() if broker.stderr else "exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not listen"
                time.sleep(0.1)
    finally:
        broker.terminate()
        broker.wait(10)
