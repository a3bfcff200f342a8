"""Kafka over SASL_SSL (SCRAM-SHA-512) and PostgreSQL over TLS, as ``edgeloop infra up --secure`` serves them.

The services' own code (the bus, the registry's SQL) talks to the secure listeners by configuration only: the
``EDGELOOP_*`` variables of ``.edgeloop/secure/secure.env``. The links are verified: a plain-text client, a
wrong password and a client that does not trust the local CA are refused.

The secure listeners of the shared stack are used when ``infra up --secure`` started them (``make test``);
otherwise this module starts its own Kafka and PostgreSQL with ``--secure`` in a temporary state dir on free ports
(about 40 s on two cores), and stops them at the end.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError
from edgeloop import infra
from edgeloop.infra import api
from edgeloop.infra.secure import POSTGRES_CERT_ROLE, POSTGRES_TLS_DATABASE, POSTGRES_TLS_ROLE, SecureLinks
from edgeloop_common import topics
from edgeloop_common.bus.base import BusUnavailableError, EventContext
from edgeloop_common.bus.factory import create_bus
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.events import TelemetryReceived
from edgeloop_common.kafka_auth import PLAINTEXT, KafkaAuth
from edgeloop_common.settings import CommonSettings
from edgeloop_registry.app import create_app
from edgeloop_registry.settings import Settings as RegistrySettings
from sqlalchemy import make_url

from tests.helpers import FAST_GROUP, delete_topics, eventually, free_port, fresh_postgres_schema, read_topic_records

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SecureStack:
    environment: dict[str, str]  # secure.env: what a service is given
    kafka_plain: str  # the plain listener of the same broker (topic clean-up)
    secure_dir: Path

    @property
    def kafka_secure(self) -> str:
        return self.environment["EDGELOOP_KAFKA_BOOTSTRAP_SERVERS"]

    @property
    def ca_file(self) -> Path:
        return Path(self.environment["EDGELOOP_KAFKA_TLS_CA_FILE"])

    @property
    def database_url(self) -> str:
        return self.environment["EDGELOOP_DATABASE_URL"]

    def kafka_auth(self, *, password: str | None = None) -> KafkaAuth:
        return KafkaAuth(
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            username=self.environment["EDGELOOP_KAFKA_USERNAME"],
            password=password or self.environment["EDGELOOP_KAFKA_PASSWORD"],
            ca_file=self.ca_file,
        )


def _edgeloop(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeloop.main", *arguments],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def secure_stack() -> Iterator[SecureStack]:
    shared = infra.secure_client_environment()
    if shared is not None:
        kafka = api.component("kafka")
        yield SecureStack(shared, kafka.address, SecureLinks(kafka.state_dir).directory)
        return
    # Not under pytest's 0700 tmp dir: PostgreSQL runs as its own user (when root starts it) and must reach it.
    home = Path(tempfile.mkdtemp(prefix="edgeloop-secure-"))
    home.chmod(0o755)
    (home / "infra").symlink_to(REPO_ROOT / "infra")
    ports = {name: free_port() for name in ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "KAFKA_SECURE_PORT")}
    env = {"EDGELOOP_HOME": str(home)} | {f"EDGELOOP_INFRA_{key}": str(port) for key, port in ports.items()}
    env["EDGELOOP_INFRA_POSTGRES_PORT"] = str(free_port())
    started = _edgeloop("infra", "up", "--secure", "--only", "kafka,postgres", env=env)
    try:
        assert started.returncode == 0, f"`infra up --secure` failed:\n{started.stdout}\n{started.stderr}"
        assert "secure.env" in started.stdout, started.stdout  # it tells the user how to use it
        links = SecureLinks(home / ".edgeloop")
        yield SecureStack(links.read_client_environment(), f"127.0.0.1:{ports['KAFKA_PORT']}", links.directory)
    finally:
        stopped = _edgeloop("infra", "down", "--only", "kafka,postgres", env=env)
        assert stopped.returncode == 0, stopped.stderr
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def secure_settings(secure_stack: SecureStack, monkeypatch: pytest.MonkeyPatch) -> CommonSettings:
    """A service's shared settings read from the environment secure.env gives it: nothing else is set."""
    for key, value in secure_stack.environment.items():
        monkeypatch.setenv(key, value)
    return CommonSettings(mode="distributed", topic_prefix=f"test-{uuid.uuid4().hex[:10]}.")


@pytest.fixture
async def prefix_cleanup(secure_stack: SecureStack, secure_settings: CommonSettings) -> AsyncIterator[str]:
    yield secure_settings.topic_prefix
    await delete_topics(secure_stack.kafka_secure, secure_settings.topic_prefix, auth=secure_settings.kafka_auth())


def telemetry(seq: int) -> TelemetryReceived:
    now = datetime.now(UTC)
    return TelemetryReceived(
        device_id="pump-1",
        site_id="site-a",
        received_at=now,
        measured_at=now,
        readings={"seq": seq},
        mqtt_topic="dt/edgeloop/site-a/pump-1/telemetry",
    )


# -- Kafka -----------------------------------------------------------------------------------------------------


async def test_the_bus_publishes_and_consumes_over_sasl_ssl_with_scram(
    secure_stack: SecureStack, secure_settings: CommonSettings, prefix_cleanup: str
) -> None:
    assert secure_settings.kafka_auth().security_protocol == "SASL_SSL"
    bus = create_bus(secure_settings, source="ingest")
    assert isinstance(bus, KafkaBus) and bus.auth.uses_tls and bus.auth.uses_sasl
    received: list[tuple[TelemetryReceived, EventContext]] = []

    async def handle(event: TelemetryReceived, context: EventContext) -> None:
        received.append((event, context))

    bus.subscribe(TelemetryReceived, handle, group="secure-test")
    await bus.start()
    try:
        event_id = await bus.publish(telemetry(1))
        await eventually(lambda: len(received) == 1, what="the event consumed over SASL_SSL", timeout_s=30)
    finally:
        await bus.stop()
    [(event, context)] = received
    assert context.event_id == event_id and event.readings == {"seq": 1}
    # What an operator reading the topic over the same secure listener sees.
    topic = f"{prefix_cleanup}{topics.TELEMETRY_RECEIVED}"
    [record] = await read_topic_records(secure_stack.kafka_secure, topic, count=1, auth=secure_settings.kafka_auth())
    assert dict(record.headers)["ce_id"] == event_id.encode()


async def _list_topics(bootstrap: str, auth: KafkaAuth) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, **auth.client_options())
    try:
        async with asyncio.timeout(20):
            await admin.start()
            return list(await admin.list_topics())
    finally:
        await admin.close()


async def test_a_plain_text_client_on_the_secure_listener_is_refused(secure_stack: SecureStack) -> None:
    assert await _list_topics(secure_stack.kafka_secure, secure_stack.kafka_auth())  # the same call, secured, works
    with pytest.raises((KafkaConnectionError, TimeoutError)):
        await _list_topics(secure_stack.kafka_secure, PLAINTEXT)
    # TLS without credentials: the listener wants SASL too.
    with pytest.raises((KafkaConnectionError, TimeoutError)):
        await _list_topics(secure_stack.kafka_secure, KafkaAuth(security_protocol="SSL", ca_file=secure_stack.ca_file))


async def test_a_wrong_password_is_refused_and_the_bus_says_why(secure_stack: SecureStack) -> None:
    wrong = secure_stack.kafka_auth(password="not-the-password")
    with pytest.raises(KafkaError):
        await _list_topics(secure_stack.kafka_secure, wrong)
    bus = KafkaBus(
        bootstrap_servers=secure_stack.kafka_secure,
        source="ingest",
        auth=wrong,
        topic_prefix=f"test-{uuid.uuid4().hex[:10]}.",
        create_topics=False,
        publish_timeout_s=5.0,
        **FAST_GROUP,
    )
    try:
        with pytest.raises(BusUnavailableError) as refused:
            await bus.publish(telemetry(2))
    finally:
        await bus.stop()
    assert "unreachable" in str(refused.value)


async def test_a_client_that_does_not_trust_the_local_ca_is_refused(secure_stack: SecureStack) -> None:
    # The system's trust store does not hold the local CA: the broker's certificate is not verified, no login.
    untrusting = KafkaAuth(
        security_protocol="SASL_SSL",
        username=secure_stack.environment["EDGELOOP_KAFKA_USERNAME"],
        password=secure_stack.environment["EDGELOOP_KAFKA_PASSWORD"],
    )
    with pytest.raises((KafkaConnectionError, TimeoutError)):
        await _list_topics(secure_stack.kafka_secure, untrusting)


def test_sasl_without_a_password_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeloop_common.settings import ConfigurationError

    monkeypatch.setenv("EDGELOOP_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("EDGELOOP_KAFKA_USERNAME", "edgeloop")
    with pytest.raises(ConfigurationError, match="EDGELOOP_KAFKA_PASSWORD"):
        CommonSettings().kafka_auth()


# -- PostgreSQL ------------------------------------------------------------------------------------------------


async def test_the_registry_works_over_postgres_tls_verify_full(
    secure_stack: SecureStack, secure_settings: CommonSettings, prefix_cleanup: str
) -> None:
    url = make_url(secure_stack.database_url)
    assert url.query["sslmode"] == "verify-full" and url.username == POSTGRES_TLS_ROLE
    with fresh_postgres_schema(secure_stack.database_url, prefix="secure") as schema_url:
        settings = RegistrySettings(
            outbox_poll_interval_s=0.2, common=secure_settings.model_copy(update={"database_url": schema_url})
        )
        app = create_app(settings)  # Kafka over SASL_SSL and PostgreSQL over TLS: the configuration only
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry") as http,
        ):
            ready = await http.get("/readyz")
            assert ready.json() == {"ready": True, "checks": {"database": "ok", "bus": "ok"}}, ready.text
            created = await http.post("/v1/models", json={"name": "catdog", "description": "over TLS"})
            assert created.status_code == 201, created.text
            assert (await http.get("/v1/models/catdog")).json()["description"] == "over TLS"
    with psycopg.connect(_libpq(secure_stack.database_url)) as connection:
        assert connection.pgconn.ssl_in_use
        row = connection.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row is not None and row[0] is True and row[1].startswith("TLSv1.")


def test_a_plain_text_postgres_connection_as_the_tls_role_is_refused(secure_stack: SecureStack) -> None:
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(_libpq(secure_stack.database_url), sslmode="disable", connect_timeout=5)


def test_postgres_verify_full_refuses_a_server_it_cannot_verify(secure_stack: SecureStack, tmp_path: Path) -> None:
    from edgeloop.secure_mqtt import make_tls_material

    other_ca = make_tls_material(tmp_path, ca_name="Some other CA").ca_file
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(_libpq(secure_stack.database_url), sslrootcert=str(other_ca), connect_timeout=5)


def test_a_client_certificate_logs_in_without_a_password(secure_stack: SecureStack) -> None:
    url = make_url(secure_stack.database_url)
    cert, key = (secure_stack.secure_dir / f"{POSTGRES_CERT_ROLE}.{suffix}" for suffix in ("pem", "key"))
    common: dict[str, Any] = {"host": url.host, "port": url.port, "dbname": POSTGRES_TLS_DATABASE, "connect_timeout": 5}
    tls: dict[str, Any] = {"sslmode": "verify-full", "sslrootcert": str(secure_stack.ca_file)}
    with psycopg.connect(user=POSTGRES_CERT_ROLE, sslcert=str(cert), sslkey=str(key), **common, **tls) as connection:
        assert connection.execute("SELECT session_user, current_user").fetchone() == (
            POSTGRES_CERT_ROLE,
            POSTGRES_TLS_ROLE,  # it acts as the TLS role: the same tables
        )
    with pytest.raises(psycopg.OperationalError, match="certificate"):
        psycopg.connect(user=POSTGRES_CERT_ROLE, **common, **tls)  # no certificate, no login


def _libpq(sqlalchemy_url: str) -> str:
    """The same URL for psycopg itself (no ``+psycopg`` driver suffix)."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)
