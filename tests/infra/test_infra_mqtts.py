"""`edgeloop infra up --secure` also starts a secured Mosquitto (mqtts) beside the anonymous one: TLS only, no
anonymous client, the services' identities made with it, and secure.env telling a client where it is. Run in a
state dir of the test's own on a free port: the shared broker on 1883 is never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from edgeloop.infra.secure import SecureLinks
from edgeloop_common.mqtt_asyncio import AsyncMqttClient, MqttRefusedError
from edgeloop_common.mqtt_auth import MqttAuth
from edgeloop_common.settings import CommonSettings

from tests.helpers import free_port

pytestmark = pytest.mark.mqtt

REPO_ROOT = Path(__file__).resolve().parents[2]


def _edgeloop(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeloop.main", *arguments],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def secure_env() -> Iterator[dict[str, str]]:
    home = Path(tempfile.mkdtemp(prefix="edgeloop-mqtts-"))
    home.chmod(0o755)
    (home / "infra").symlink_to(REPO_ROOT / "infra")
    env = {"EDGELOOP_HOME": str(home), "EDGELOOP_INFRA_MQTTS_PORT": str(free_port())}
    try:
        started = _edgeloop("infra", "up", "--secure", "--only", "mqtts", env=env)
        assert started.returncode == 0, f"`infra up --secure` failed:\n{started.stdout}\n{started.stderr}"
        assert "MQTT over TLS on" in started.stdout, started.stdout
        yield env | SecureLinks(home / ".edgeloop").read_client_environment()
    finally:
        stopped = _edgeloop("infra", "down", "--only", "mqtts", env=env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        shutil.rmtree(home, ignore_errors=True)


async def test_the_secured_broker_refuses_anonymous_and_accepts_a_service_identity_from_secure_env(
    secure_env: dict[str, str],
) -> None:
    assert secure_env["EDGELOOP_MQTT_PORT"] == secure_env["EDGELOOP_INFRA_MQTTS_PORT"]
    ca_file = Path(secure_env["EDGELOOP_MQTT_TLS_CA_FILE"])
    port = int(secure_env["EDGELOOP_MQTT_PORT"])
    anonymous = AsyncMqttClient("127.0.0.1", port, protocol="5", auth=MqttAuth(ca_file=ca_file))
    with pytest.raises(MqttRefusedError):
        await anonymous.connect(timeout_s=5)
    await anonymous.close()
    # A service: secure.env plus its own identity, as docs/security.md tells.
    passwords = Path(secure_env["EDGELOOP_MQTT_ADMIN_PASSWORD_FILE"]).parent
    settings = CommonSettings(
        mqtt_host=secure_env["EDGELOOP_MQTT_HOST"],
        mqtt_port=port,
        mqtt_tls_ca_file=ca_file,
        mqtt_username="ingest",
        mqtt_password_file=passwords / "ingest.password",
    )
    ingest = AsyncMqttClient(settings.mqtt_host, settings.mqtt_port, protocol="5", auth=settings.mqtt_auth())
    await ingest.connect(timeout_s=5)
    await ingest.close()
    assert (passwords / "ingest.password").stat().st_mode & 0o077 == 0


def test_the_admin_of_secure_env_manages_devices_and_status_lists_the_broker(secure_env: dict[str, str]) -> None:
    added = _edgeloop("device", "add", "site-a", "cam-1", env=secure_env)
    assert added.returncode == 0 and "password (shown once)" in added.stdout, added.stdout + added.stderr
    listed = _edgeloop("device", "list", "--json", env=secure_env)
    assert listed.returncode == 0 and '"device": "cam-1"' in listed.stdout, listed.stdout + listed.stderr
    status = _edgeloop("infra", "status", "--only", "mqtts", env=secure_env)
    assert status.returncode == 0 and "mqtts" in status.stdout and "running" in status.stdout, status.stdout
