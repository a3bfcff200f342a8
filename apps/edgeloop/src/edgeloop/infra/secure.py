"""``edgeloop infra up --secure``: TLS and credentials for the local Kafka and PostgreSQL.

What it keeps under ``.edgeloop/secure/`` (made once, reused by every later start):

* a local CA and one server certificate for 127.0.0.1 and localhost (:func:`edgeloop.secure_mqtt.make_tls_material`),
  shared by Kafka's SASL_SSL listener and PostgreSQL's TLS;
* ``credentials.json``: the generated passwords (Kafka's SCRAM user, PostgreSQL's TLS role), mode 0600;
* a client certificate for PostgreSQL's certificate-authenticated role;
* what clients need, written after the servers answer: ``secure.env`` (the ``EDGELOOP_*`` settings of a service)
  and ``kcat.conf`` (``kcat -F``).

The secure listeners sit beside the plain ones on the same servers (Kafka: SASL_SSL on its own port; PostgreSQL:
TLS on the same port, the TLS roles refused in plain text by pg_hba), so the development stack serves both. Once
made, secure mode is remembered: later starts (``infra up``, a test's ``infra.start("kafka")``) keep the TLS
listeners until ``.edgeloop/secure/`` is removed.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edgeloop.infra.errors import InfraError
from edgeloop.secure_mqtt import TlsMaterial, generate_password, issue_client_certificate, make_tls_material

KAFKA_USER = "edgeloop"
KAFKA_MECHANISM: Final = "SCRAM-SHA-512"
POSTGRES_TLS_ROLE = "edgeloop_tls"  # password over TLS; refused in plain text
POSTGRES_CERT_ROLE = "edgeloop_tls_cert"  # a client certificate over TLS (its common name), no password
POSTGRES_TLS_DATABASE = "edgeloop_tls"
CA_NAME = "EdgeLoop local infrastructure CA"
# The names the server certificate is made for; a stack listening elsewhere too (a test's servers on the real
# node's bridge, where its pods reach them: tests/kube/test_helm_real_install.py) adds its address.
SERVER_HOSTS: Final = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Credentials:
    kafka_password: str
    postgres_password: str


class SecureLinks:
    """The TLS material and credentials of one state dir (``<state_dir>/secure``)."""

    def __init__(self, state_dir: Path, *, hosts: tuple[str, ...] = SERVER_HOSTS) -> None:
        self.directory = state_dir / "secure"
        self.hosts = hosts  # the server certificate's names (subject alternative names), when it is made

    @property
    def credentials_file(self) -> Path:
        return self.directory / "credentials.json"

    @property
    def env_file(self) -> Path:
        return self.directory / "secure.env"

    @property
    def kcat_file(self) -> Path:
        return self.directory / "kcat.conf"

    @property
    def tls(self) -> TlsMaterial:
        return TlsMaterial(
            self.directory / "ca.pem",
            self.directory / "server.pem",
            self.directory / "server.key",
            self.directory / "ca.key",
        )

    @property
    def kafka_keystore(self) -> Path:
        """Kafka's PEM keystore: the server's private key and certificate in one file."""
        return self.directory / "kafka-keystore.pem"

    @property
    def postgres_client_cert(self) -> tuple[Path, Path]:
        return self.directory / f"{POSTGRES_CERT_ROLE}.pem", self.directory / f"{POSTGRES_CERT_ROLE}.key"

    def enabled(self) -> bool:
        """Whether ``infra up --secure`` ran for this state dir (and its material is complete)."""
        return self.credentials_file.exists() and self.tls.key_file.exists() and self.kafka_keystore.exists()

    def ensure(self, echo: Callable[[str], None] | None = None) -> Credentials:
        """Make what is missing (CA, certificates, passwords); never replace what exists."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        tls = self.tls
        if not (tls.ca_file.exists() and tls.key_file.exists() and tls.ca_key_file and tls.ca_key_file.exists()):
            tls = make_tls_material(self.directory, hosts=self.hosts, ca_name=CA_NAME)
            self.kafka_keystore.unlink(missing_ok=True)  # a new server certificate: a new keystore
            for path in self.postgres_client_cert:
                path.unlink(missing_ok=True)
            if echo is not None:
                echo(f"secure: made a local CA and a server certificate in {self.directory}")
        if not self.kafka_keystore.exists():
            self.kafka_keystore.write_bytes(tls.key_file.read_bytes() + tls.cert_file.read_bytes())
            self.kafka_keystore.chmod(0o600)
        if not all(path.exists() for path in self.postgres_client_cert):
            issue_client_certificate(tls, POSTGRES_CERT_ROLE, self.directory)
        if not self.credentials_file.exists():
            credentials = Credentials(kafka_password=generate_password(), postgres_password=generate_password())
            self.credentials_file.touch(mode=0o600)
            self.credentials_file.write_text(json.dumps(credentials.__dict__, indent=2) + "\n")
        return self.credentials()

    def credentials(self) -> Credentials:
        try:
            values = json.loads(self.credentials_file.read_text())
            return Credentials(kafka_password=values["kafka_password"], postgres_password=values["postgres_password"])
        except (OSError, ValueError, KeyError) as exc:
            raise InfraError(
                f"secure: cannot read {self.credentials_file} ({exc}); remove {self.directory} and run "
                "`edgeloop infra up --secure` again (new passwords and certificates)"
            ) from exc

    # -- what clients read ------------------------------------------------------------------------------------

    def client_environment(self, *, kafka_address: str, postgres_host: str, postgres_port: int) -> dict[str, str]:
        """The ``EDGELOOP_*`` settings of a service that talks to both servers over TLS with credentials."""
        credentials = self.credentials()
        ca_file = self.tls.ca_file
        database_url = (
            f"postgresql+psycopg://{POSTGRES_TLS_ROLE}:{credentials.postgres_password}@{postgres_host}:{postgres_port}"
            f"/{POSTGRES_TLS_DATABASE}?sslmode=verify-full&sslrootcert={ca_file}"
        )
        return {
            "EDGELOOP_KAFKA_BOOTSTRAP_SERVERS": kafka_address,
            "EDGELOOP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "EDGELOOP_KAFKA_SASL_MECHANISM": KAFKA_MECHANISM,
            "EDGELOOP_KAFKA_USERNAME": KAFKA_USER,
            "EDGELOOP_KAFKA_PASSWORD": credentials.kafka_password,
            "EDGELOOP_KAFKA_TLS_CA_FILE": str(ca_file),
            "EDGELOOP_DATABASE_URL": database_url,
        }

    def write_client_files(self, environment: dict[str, str]) -> None:
        """``secure.env`` (shell- and dotenv-readable) and ``kcat.conf``, both 0600: they hold passwords."""
        lines = [
            "# Written by `edgeloop infra up --secure` (docs/security.md): the settings of a service that reaches the",
            "# local Kafka over SASL_SSL (SCRAM-SHA-512) and PostgreSQL over TLS (verify-full). Use it with",
            f"#   set -a; . {self.env_file}; set +a",
            *(f"{key}={shlex.quote(value)}" for key, value in environment.items()),
        ]
        _write_private(self.env_file, "\n".join(lines) + "\n")
        kcat = {
            "bootstrap.servers": environment["EDGELOOP_KAFKA_BOOTSTRAP_SERVERS"],
            "security.protocol": "sasl_ssl",
            "sasl.mechanisms": KAFKA_MECHANISM,
            "sasl.username": KAFKA_USER,
            "sasl.password": environment["EDGELOOP_KAFKA_PASSWORD"],
            "ssl.ca.location": str(self.tls.ca_file),
        }
        _write_private(self.kcat_file, "".join(f"{key}={value}\n" for key, value in kcat.items()))

    def read_client_environment(self) -> dict[str, str]:
        """``secure.env`` back as a dict (what tests and scripts use); empty when it was not written."""
        try:
            text = self.env_file.read_text()
        except FileNotFoundError:
            return {}
        environment: dict[str, str] = {}
        for line in text.splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition("=")
                environment[key] = shlex.split(value)[0] if value else ""
        return environment


def _write_private(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def write_server_certificates(
    directory: Path, hosts: tuple[str, ...], kafka_uid: int | None = None, postgres_uid: int | None = None
) -> bool:
    """For a deployment (``edgeloop infra certs``: compose's tls-certs job): a CA and a server certificate for
    ``hosts``, the key as Kafka's PEM keystore (owned by kafka_uid) and as PostgreSQL's key (owned by
    postgres_uid; each server insists on a key only it can read). False when they were there already."""
    if (directory / "ca.pem").exists() and (directory / "kafka-keystore.pem").exists():
        return False
    if not hosts:
        raise InfraError("certs: name at least one host")
    tls = make_tls_material(directory, hosts=hosts, ca_name="EdgeLoop deployment CA")
    key = tls.key_file.read_bytes()
    keystore, postgres_key = directory / "kafka-keystore.pem", directory / "postgres.key"
    _write_private(keystore, (key + tls.cert_file.read_bytes()).decode())
    _write_private(postgres_key, key.decode())
    for path, uid in ((keystore, kafka_uid), (postgres_key, postgres_uid)):
        if uid is not None:
            os.chown(path, uid, uid)
    (directory / "ca.pem").chmod(0o644)
    (directory / "server.pem").chmod(0o644)
    directory.chmod(0o755)
    return True
