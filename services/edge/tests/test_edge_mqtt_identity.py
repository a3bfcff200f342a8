"""The edge agent's identity on its site broker: its own EDGELOOP_EDGE_MQTT_* or the shared EDGELOOP_MQTT_*."""

from __future__ import annotations

from pathlib import Path

from edgeloop_common.settings import CommonSettings
from edgeloop_edge.settings import Settings
from pydantic import SecretStr


def test_the_shared_identity_when_the_agent_has_none() -> None:
    common = CommonSettings(mqtt_username="shared", mqtt_password=SecretStr("pw"), mqtt_tls=True)
    auth = Settings(site="site-a", common=common).resolved_mqtt_auth()
    assert (auth.username, auth.password, auth.uses_tls) == ("shared", "pw", True)


def test_the_agents_own_identity_on_its_site_broker(tmp_path: Path) -> None:
    settings = Settings(
        site="site-a",
        mqtt_username="edge-site-a",
        mqtt_password=SecretStr("edge-pw"),
        mqtt_tls_ca_file=tmp_path / "site-ca.pem",
        common=CommonSettings(mqtt_username="ingest", mqtt_password=SecretStr("other")),
    )
    auth = settings.resolved_mqtt_auth()
    assert (auth.username, auth.password, auth.ca_file) == ("edge-site-a", "edge-pw", tmp_path / "site-ca.pem")
    assert auth.uses_tls
