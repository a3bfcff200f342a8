"""docker-compose.yml turns MQTT device identity and TLS on by default (docs/security.md, "Device identity on MQTT"):
the broker refuses anonymous clients and plain text, each MQTT service logs in with its own identity over TLS, and
no password is written in the file. No Docker engine runs here: the mqtt-identities job's own command runs on the
tls-certs job's files, and the broker's config (infra/mosquitto/compose.conf) on the real Mosquitto with them, each
container path mapped to a folder of the test as the compose file mounts it."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from edgeloop.device_identity import DynsecAdmin, MqttAdminSettings, device_username
from edgeloop.infra.secure import write_server_certificates
from edgeloop.main import app
from edgeloop.secure_mqtt import count_refusals, find_dynsec_plugin
from edgeloop_common import topics
from edgeloop_common.mqtt_asyncio import AsyncMqttClient, MqttRefusedError, MqttUnavailableError
from edgeloop_common.mqtt_auth import MqttAuth
from edgeloop_common.settings import CommonSettings
from typer.testing import CliRunner

from tests.helpers import eventually, free_port

REPO = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
JOB = SERVICES["mqtt-identities"]
# The services that talk MQTT (ingest's bridge and capture commands, the gateway's results).
MQTT_USERS = ("ingest", "inference-gateway")


def _env(name: str) -> dict[str, str]:
    return {key: str(value) for key, value in (SERVICES[name].get("environment") or {}).items()}


def _common(name: str) -> CommonSettings:
    env = _env(name)
    fields = {key.removeprefix("EDGELOOP_").lower(): value for key, value in env.items() if key.startswith("EDGELOOP_")}
    return CommonSettings(**{key: value for key, value in fields.items() if key in CommonSettings.model_fields})


def _option(command: list[str], option: str) -> str:
    return command[command.index(option) + 1]


def _mounts(service: str) -> dict[str, str]:
    """{container path: volume or host path} of a service's volumes."""
    mounts = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target = str(volume).split(":")[:2]
        mounts[target] = source
    return mounts


def test_every_mqtt_service_has_its_own_identity_and_verifies_the_broker_over_tls() -> None:
    made = set(_option(JOB["command"], "--services").split(","))
    for name in MQTT_USERS:
        settings = _common(name)  # the settings as the service reads them
        assert settings.mqtt_username == name, f"{name}: logs in as {settings.mqtt_username!r}"
        assert name in made, f"{name}: the mqtt-identities job makes no identity for it"
        assert (settings.mqtt_host, settings.mqtt_port) == ("mosquitto", 8883), name
        assert str(settings.mqtt_tls_ca_file) == "/run/edgeloop-tls/ca.pem", name
        assert str(settings.mqtt_password_file) == f"/run/edgeloop-mqtt/{name}.password", name
        assert "EDGELOOP_MQTT_PASSWORD" not in _env(name), f"{name}: a password written in the file"
        mounts = _mounts(name)
        assert mounts["/run/edgeloop-mqtt"] == "mqtt-credentials" and mounts["/run/edgeloop-tls"] == "edgeloop-tls"
        assert SERVICES[name]["depends_on"]["mqtt-identities"] == {"condition": "service_completed_successfully"}
    # Every service that shares the anchor's settings reaches the broker over TLS with the CA (none anonymously).
    for name in SERVICES:
        env = _env(name)
        if env.get("EDGELOOP_MQTT_HOST") == "mosquitto":
            assert env["EDGELOOP_MQTT_PORT"] == "8883" and env["EDGELOOP_MQTT_TLS_CA_FILE"], name
            assert _mounts(name).get("/run/edgeloop-tls") == "edgeloop-tls", f"{name} does not mount the CA"
    # The admin's password is in a volume only the job mounts.
    assert [name for name in SERVICES if "mqtt-admin" in _mounts(name).values()] == ["mqtt-identities"]
    broker = SERVICES["mosquitto"]
    assert broker["ports"] == ["127.0.0.1:8883:8883"], "only the TLS listener is published"
    assert broker["depends_on"]["mqtt-identities"] == {"condition": "service_completed_successfully"}
    assert JOB["depends_on"]["tls-certs"] == {"condition": "service_completed_successfully"}
    text = (REPO / "docker-compose.yml").read_text()
    assert not re.search(r"EDGELOOP_MQTT(_ADMIN)?_PASSWORD:", text), "no MQTT password in the file"


def test_the_brokers_config_has_no_anonymous_access_and_no_plain_text_listener() -> None:
    lines = [line.split("#")[0].split() for line in (REPO / "infra/mosquitto/compose.conf").read_text().splitlines()]
    lines = [line for line in lines if line]
    options = {line[0]: line[1:] for line in lines}
    assert options["allow_anonymous"] == ["false"]
    assert options["per_listener_settings"] == ["false"]
    assert options["plugin"] == ["/usr/lib/mosquitto_dynamic_security.so"]  # where the eclipse-mosquitto image has it
    assert options["plugin_opt_config_file"] == [_option(JOB["command"], "--dynsec-file")]
    listeners = [line[1:] for line in lines if line[0] == "listener"]
    assert listeners == [["8883", "0.0.0.0"]], "one listener, the TLS one"
    assert options["certfile"] == ["/run/edgeloop-tls/mosquitto.pem"]
    assert options["keyfile"] == ["/run/edgeloop-tls/mosquitto.key"]
    assert options["cafile"] == ["/run/edgeloop-tls/ca.pem"]


@dataclass
class ComposeBroker:
    """The compose file's broker, run here: its volumes are folders of the test."""

    volumes: dict[str, Path]
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    def path(self, service: str, container_path: str) -> Path:
        """Where a container path of a service lies here (by the service's mounts)."""
        for target, source in sorted(_mounts(service).items(), key=lambda item: -len(item[0])):
            if container_path == target or container_path.startswith(f"{target}/"):
                return self.volumes[source] / container_path.removeprefix(target).lstrip("/")
        raise AssertionError(f"{service} mounts nothing at {container_path}")

    def ca(self) -> Path:
        return self.path("ingest", "/run/edgeloop-tls/ca.pem")

    def service_auth(self, name: str) -> MqttAuth:
        """The service's MqttAuth as it builds it from its settings, the files where its volumes are here."""
        settings = _common(name)
        assert settings.mqtt_password_file is not None and settings.mqtt_tls_ca_file is not None
        return settings.model_copy(
            update={
                "mqtt_password_file": self.path(name, str(settings.mqtt_password_file)),
                "mqtt_tls_ca_file": self.path(name, str(settings.mqtt_tls_ca_file)),
            }
        ).mqtt_auth()


def _run_job(volumes: dict[str, Path], extra_services: str = "") -> str:
    """The mqtt-identities job's command, its container paths mapped onto the test's folders (and the uids it hands
    the files to mapped onto this machine's: the test reads the passwords, the broker runs as Debian's user)."""
    command = list(JOB["command"])
    mounts = _mounts("mqtt-identities")
    for index, argument in enumerate(command):
        for target, source in sorted(mounts.items(), key=lambda item: -len(item[0])):
            if argument == target or argument.startswith(f"{target}/"):
                command[index] = str(volumes[source] / argument.removeprefix(target).lstrip("/"))
                break
    if extra_services:
        command[command.index("--services") + 1] += f",{extra_services}"
    command[command.index("--owner") + 1] = str(os.getuid())
    command[command.index("--broker-uid") + 1] = str(_broker_uid())
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    return result.output


def _broker_uid() -> int:
    """The uid the local Mosquitto runs as: started as root it switches to the user `mosquitto` (as the image's)."""
    if os.getuid() != 0:
        return os.getuid()
    try:
        return pwd.getpwnam("mosquitto").pw_uid
    except KeyError:
        return 0


@pytest.fixture(scope="module")
def compose_broker() -> Iterator[ComposeBroker]:
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    assert mosquitto, "mosquitto is installed by `edgeloop infra up`"
    # Not pytest's tmp_path (0700 up to /tmp): the broker, switched to its own user as in the image, must reach the
    # volumes, whose roots are traversable like Docker's.
    with tempfile.TemporaryDirectory(prefix="edgeloop-compose-mqtt-") as folder:
        root = Path(folder)
        root.chmod(0o755)
        yield from _started(mosquitto, root)


def _started(mosquitto: str, root: Path) -> Iterator[ComposeBroker]:
    volumes = {name: root / name for name in COMPOSE["volumes"]}
    for path in volumes.values():
        path.mkdir()
    # The tls-certs job first, as compose runs it (its own command: Kafka's and PostgreSQL's certificate and CA).
    tls_job = SERVICES["tls-certs"]["command"]
    write_server_certificates(volumes["edgeloop-tls"], tuple(_option(tls_job, "--hosts").split(",")))
    _run_job(volumes)
    port = free_port()
    config = (REPO / "infra/mosquitto/compose.conf").read_text()
    config = config.replace("listener 8883 0.0.0.0", f"listener {port} 127.0.0.1")
    config = config.replace("/usr/lib/mosquitto_dynamic_security.so", str(find_dynsec_plugin()))
    for target, source in sorted(_mounts("mosquitto").items(), key=lambda item: -len(item[0])):
        if source in volumes:
            config = config.replace(target, str(volumes[source]))
    (root / "mosquitto.conf").write_text(config)
    log = root / "mosquitto.log"
    with log.open("wb") as output:
        process = subprocess.Popen([mosquitto, "-c", str(root / "mosquitto.conf")], stdout=output, stderr=output)
    broker = ComposeBroker(volumes, port, log, process)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"mosquitto did not listen: {log.read_text()}"
                time.sleep(0.1)
        yield broker
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.mqtt
async def test_an_anonymous_client_and_plain_text_are_refused(compose_broker: ComposeBroker) -> None:
    anonymous = AsyncMqttClient(
        "127.0.0.1", compose_broker.port, protocol="5", auth=MqttAuth(ca_file=compose_broker.ca())
    )
    with pytest.raises(MqttRefusedError) as refused:
        await anonymous.connect(timeout_s=5)
    assert refused.value.reason == "Not authorized"
    await anonymous.close()
    ingest = compose_broker.service_auth("ingest")
    wrong = AsyncMqttClient(
        "127.0.0.1",
        compose_broker.port,
        protocol="5",
        auth=MqttAuth("ingest", "not-its-password", ca_file=ingest.ca_file),
    )
    with pytest.raises(MqttRefusedError):
        await wrong.connect(timeout_s=5)
    await wrong.close()
    plain = AsyncMqttClient(
        "127.0.0.1", compose_broker.port, protocol="5", auth=MqttAuth(ingest.username, ingest.password)
    )
    with pytest.raises(MqttUnavailableError):  # plain text on the TLS listener: no CONNACK ever comes
        await plain.connect(timeout_s=2)
    await plain.close()
    await eventually(
        lambda: count_refusals(compose_broker.log.read_text()).connections >= 2,
        timeout_s=5,
        what="the refusals in the log",
    )


@pytest.mark.mqtt
async def test_the_services_log_in_over_tls_and_a_device_added_by_the_admin_reaches_ingest(
    compose_broker: ComposeBroker,
) -> None:
    ingest_auth = compose_broker.service_auth("ingest")
    assert ingest_auth.username == "ingest" and ingest_auth.password and ingest_auth.uses_tls
    seen: list[tuple[str, bytes]] = []
    # localhost: the broker's certificate names it (and mosquitto, for the services in compose) and is verified.
    ingest = AsyncMqttClient(
        "localhost", compose_broker.port, protocol="5", auth=ingest_auth, on_message=lambda t, p: seen.append((t, p))
    )
    await ingest.connect(timeout_s=5)
    gateway = AsyncMqttClient(
        "127.0.0.1", compose_broker.port, protocol="5", auth=compose_broker.service_auth("inference-gateway")
    )
    await gateway.connect(timeout_s=5)
    # The operator's way to add a device: `docker compose run --rm mqtt-identities device add ...` reads the admin's
    # password from the file its environment names.
    job_env = {key: str(value) for key, value in JOB["environment"].items()}
    admin_file = compose_broker.path("mqtt-identities", job_env["EDGELOOP_MQTT_ADMIN_PASSWORD_FILE"])
    admin_settings = MqttAdminSettings(password_file=admin_file)
    assert admin_settings.password_file is not None
    admin_auth = MqttAuth(
        "edgeloop-admin", admin_settings.password_file.read_text().strip(), ca_file=compose_broker.ca()
    )
    try:
        await ingest.subscribe([topics.MQTT_IMAGE_SUBSCRIPTION])
        async with DynsecAdmin("127.0.0.1", compose_broker.port, admin_auth) as admin:
            await admin.add_device("site-a", "cam-2", "cam-2-password")
        device = AsyncMqttClient(
            "127.0.0.1",
            compose_broker.port,
            protocol="5",
            auth=MqttAuth(device_username("site-a", "cam-2"), "cam-2-password", ca_file=compose_broker.ca()),
        )
        await device.connect(timeout_s=5)
        image = topics.mqtt_topic(topics.MQTT_IMAGE, site="site-a", device="cam-2")
        await device.publish(image, b"a picture")
        await eventually(lambda: (image, b"a picture") in seen, timeout_s=5)
        # The services' rights are their own: ingest may not answer as the gateway.
        result = topics.mqtt_topic(topics.MQTT_RESULT, site="site-a", device="cam-2")
        with pytest.raises(MqttRefusedError):
            await ingest.publish(result, b"{}")
        await gateway.publish(result, b"{}")
        await device.close()
        # The simulated camera's identity, made by the job, its password where the camera service reads it: it may
        # publish its own pictures only.
        camera_env = {key: str(value) for key, value in SERVICES["camera"]["environment"].items()}
        camera_password = compose_broker.path("camera", camera_env["EDGELOOP_MQTT_PASSWORD_FILE"]).read_text().strip()
        camera = AsyncMqttClient(
            "127.0.0.1",
            compose_broker.port,
            protocol="5",
            auth=MqttAuth(camera_env["EDGELOOP_MQTT_USERNAME"], camera_password, ca_file=compose_broker.ca()),
        )
        await camera.connect(timeout_s=5)
        own = topics.mqtt_topic(topics.MQTT_IMAGE, site="site-a", device="cam-1")
        await camera.publish(own, b"the camera's picture")
        await eventually(lambda: (own, b"the camera's picture") in seen, timeout_s=5)
        with pytest.raises(MqttRefusedError):
            await camera.publish(image, b"as another device")
        await camera.close()
        assert [name for name in SERVICES if "camera-credentials" in _mounts(name).values()] == [
            "mqtt-identities",
            "camera",
        ], "only the job and the camera see the camera's password"
    finally:
        await ingest.close()
        await gateway.close()


@pytest.mark.mqtt
def test_a_second_run_of_the_job_keeps_every_password_and_the_devices_and_adds_a_new_service(
    compose_broker: ComposeBroker,
) -> None:
    """Runs last in the module: it stops the broker (which saves the plugin's file) before the job runs again."""
    compose_broker.process.terminate()
    compose_broker.process.wait(10)
    credentials = compose_broker.volumes["mqtt-credentials"]
    before = {path.name: path.read_text() for path in credentials.iterdir()}
    assert set(before) == {f"{name}.password" for name in MQTT_USERS}
    assert all((path.stat().st_mode & 0o077) == 0 for path in credentials.iterdir()), "passwords are 0600"
    admin_file = compose_broker.volumes["mqtt-admin"] / "admin.password"
    admin = admin_file.read_text()
    dynsec = compose_broker.path("mosquitto", "/mosquitto/data/dynamic-security.json")
    assert all(password.strip() not in dynsec.read_text() for password in [*before.values(), admin])  # hashed only
    output = _run_job(compose_broker.volumes, extra_services="edge-site-a")
    assert "made for edge-site-a;" in output
    after = {path.name: path.read_text() for path in credentials.iterdir()}
    assert {name: after[name] for name in before} == before and admin_file.read_text() == admin
    clients = {client["username"] for client in json.loads(dynsec.read_text())["clients"]}
    assert {"edgeloop-admin", "ingest", "inference-gateway", "edge-site-a", "site-a/cam-1", "site-a/cam-2"} <= clients
    assert _run_job(compose_broker.volumes).count("none (all kept)") == 1
