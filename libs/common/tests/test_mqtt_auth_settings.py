"""CommonSettings' MQTT identity and TLS (docs/security.md), and what AsyncMqttClient makes of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from edgeloop_common.mqtt_asyncio import AsyncMqttClient
from edgeloop_common.mqtt_auth import MqttAuth
from edgeloop_common.settings import CommonSettings


def test_anonymous_plain_text_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("USERNAME", "PASSWORD", "TLS", "TLS_CA_FILE", "TLS_CERT_FILE", "TLS_KEY_FILE"):
        monkeypatch.delenv(f"EDGELOOP_MQTT_{name}", raising=False)
    auth = CommonSettings().mqtt_auth()
    assert auth == MqttAuth()
    assert not auth.uses_tls


def test_identity_and_tls_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGELOOP_MQTT_USERNAME", "ingest")
    monkeypatch.setenv("EDGELOOP_MQTT_PASSWORD", "s3cret")
    monkeypatch.setenv("EDGELOOP_MQTT_TLS_CA_FILE", str(tmp_path / "ca.pem"))
    settings = CommonSettings()
    auth = settings.mqtt_auth()
    assert (auth.username, auth.password, auth.ca_file) == ("ingest", "s3cret", tmp_path / "ca.pem")
    assert auth.uses_tls  # a CA file alone turns TLS on
    assert "s3cret" not in repr(auth) and "s3cret" not in repr(settings)


def test_the_client_logs_in_with_the_credentials() -> None:
    client = AsyncMqttClient("127.0.0.1", 1, auth=MqttAuth(username="site-a/cam-1", password="pw"))
    assert client._client._username == b"site-a/cam-1"  # paho keeps them to send in CONNECT
    assert client._client._password == b"pw"
    assert client._client._ssl is False
