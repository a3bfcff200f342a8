"""docker-compose.yml and the Helm chart's values turn Kafka's SASL_SSL and PostgreSQL's TLS on by default, with no
password of ours in either file (docs/security.md, "Kafka and PostgreSQL over TLS")."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from edgeloop_common.settings import CommonSettings

REPO = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
REQUIRED = re.compile(r"^\$\{EDGELOOP_(KAFKA|POSTGRES)_PASSWORD:\?[^}]+\}$")


def _users_of_kafka() -> dict[str, dict[str, str]]:
    return {
        name: service["environment"]
        for name, service in COMPOSE["services"].items()
        if "EDGELOOP_KAFKA_BOOTSTRAP_SERVERS" in (service.get("environment") or {})
    }


def test_every_service_reaches_kafka_over_sasl_ssl_and_postgres_with_verify_full() -> None:
    users = _users_of_kafka()
    assert {"ingest", "registry", "trainer", "deployer"} <= set(users)
    for name, env in users.items():
        settings = CommonSettings(
            **{
                key.removeprefix("EDGELOOP_").lower(): value
                for key, value in env.items()
                if key.startswith("EDGELOOP_") and key.removeprefix("EDGELOOP_").lower() in CommonSettings.model_fields
            }
        )
        auth = settings.kafka_auth()
        assert (auth.security_protocol, auth.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512"), name
        assert str(auth.ca_file) == "/run/edgeloop-tls/ca.pem", name
        assert "edgeloop-tls:/run/edgeloop-tls:ro" in COMPOSE["services"][name]["volumes"], name
        assert settings.database_url.endswith("?sslmode=verify-full&sslrootcert=/run/edgeloop-tls/ca.pem"), name
        assert REQUIRED.match(env["EDGELOOP_KAFKA_PASSWORD"]), f"{name}: the Kafka password must be required"


def test_the_servers_refuse_plain_text_and_no_password_is_written_in_the_file() -> None:
    kafka = COMPOSE["services"]["kafka"]["environment"]
    # The only plain-text listener is the broker's own loopback.
    listeners = dict(item.split("://") for item in kafka["KAFKA_LISTENERS"].split(","))
    assert listeners["INTERNAL"].startswith("127.0.0.1:")
    assert "SECURE:SASL_SSL" in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    postgres = COMPOSE["services"]["postgres"]
    assert "ssl=on" in postgres["command"]
    hba = (REPO / "infra/postgres/compose-pg_hba.conf").read_text()
    assert re.search(r"^hostnossl\s+all\s+all\s+all\s+reject$", hba, re.M)
    assert REQUIRED.match(postgres["environment"]["POSTGRES_PASSWORD"])
    assert REQUIRED.match(kafka["EDGELOOP_KAFKA_PASSWORD"])
    text = (REPO / "docker-compose.yml").read_text()
    assert "edgeloop:edgeloop@" not in text and "POSTGRES_PASSWORD: edgeloop" not in text


def test_the_chart_values_name_secrets_and_hold_no_password() -> None:
    values = yaml.safe_load((REPO / "helm/edgeloop/values.yaml").read_text())["global"]
    assert values["kafka"]["securityProtocol"] == "SASL_SSL"
    assert values["kafka"]["credentialsSecret"] and values["tlsCaSecret"]
    assert "password" not in yaml.safe_dump(values).lower()
