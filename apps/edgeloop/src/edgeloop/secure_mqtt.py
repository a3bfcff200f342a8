"""A secured Mosquitto: no anonymous clients, every device and service its own identity, TLS optional.

The broker runs Mosquitto's dynamic-security plugin (docs/security.md, "Device identity on MQTT"): clients,
roles and ACLs live in one JSON file the plugin owns, changed at run time over MQTT by an admin identity
(:mod:`edgeloop.device_identity`). This module makes what such a broker needs and starts one:

* :func:`write_dynsec_config`: the plugin's first file, holding only the admin (its password hashed as the
  plugin does: PBKDF2-HMAC-SHA512, 101 iterations, as ``mosquitto_ctrl dynsec init`` writes it);
* :func:`make_tls_material`: a local CA and a server certificate signed by it (for the TLS listener);
* :func:`render_config`: the broker's configuration (``allow_anonymous false``, the plugin, a plain and/or a
  TLS listener);
* :class:`SecureBroker`: a broker of our own on the ports given (tests start one per test module; the shared
  development broker of ``edgeloop infra up`` stays anonymous);
* :func:`count_refusals`: what the broker refused, counted from its log.
"""

from __future__ import annotations

import base64
import datetime
import getpass
import hashlib
import ipaddress
import json
import re
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DYNSEC_PLUGIN_PATHS = (
    Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"),
    Path("/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so"),
    Path("/usr/lib/mosquitto_dynamic_security.so"),
    Path("/usr/local/lib/mosquitto_dynamic_security.so"),
)
DYNSEC_ITERATIONS = 101  # what mosquitto_ctrl writes; the plugin reads the count from the file
ADMIN_ROLE = "dynsec-admin"
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"


class SecureBrokerError(RuntimeError):
    """The secured broker cannot be set up or started; the message says why."""


def find_dynsec_plugin() -> Path:
    for path in DYNSEC_PLUGIN_PATHS:
        if path.exists():
            return path
    raise SecureBrokerError(
        "Mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) is not installed: "
        "apt-get install mosquitto"
    )


def generate_password() -> str:
    """A password for a device or a service: 24 random URL-safe characters (~143 bits)."""
    return secrets.token_urlsafe(18)


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = DYNSEC_ITERATIONS
) -> dict[str, object]:
    """The ``password``/``salt``/``iterations`` fields of a dynamic-security client."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


@dataclass(frozen=True)
class DynsecClient:
    """A client the plugin's first file holds besides the admin (a service identity made before the broker starts:
    docker-compose.yml's mqtt-identities job), with a role of its own granting ``acls``."""

    username: str
    password: str
    rolename: str
    acls: tuple[dict[str, object], ...]
    text_name: str = ""


def write_dynsec_config(
    path: Path, admin_username: str, admin_password: str, clients: tuple[DynsecClient, ...] = ()
) -> None:
    """The plugin's initial file: the admin, allowed only the plugin's control topics, ``clients`` with their roles,
    and default access denied for everything a role does not grant (publishing, subscribing)."""
    admin_acls = [
        {"acltype": acltype, "topic": "$CONTROL/dynamic-security/#", "allow": True}
        for acltype in ("publishClientSend", "publishClientReceive", "subscribePattern")
    ]
    config = {
        "clients": [
            {
                "username": admin_username,
                "textName": "EdgeLoop device-identity admin",
                "roles": [{"rolename": ADMIN_ROLE}],
            }
            | hash_password(admin_password)
        ]
        + [
            {"username": c.username, "textName": c.text_name, "roles": [{"rolename": c.rolename}]}
            | hash_password(c.password)
            for c in clients
        ],
        "roles": [{"rolename": ADMIN_ROLE, "acls": admin_acls}]
        + [{"rolename": c.rolename, "acls": list(c.acls)} for c in clients],
        "groups": [],
        # A client receives what it subscribed to; a role must grant every publish and subscription.
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)


@dataclass(frozen=True)
class TlsMaterial:
    ca_file: Path
    cert_file: Path
    key_file: Path
    ca_key_file: Path | None = None  # kept to issue client certificates (issue_client_certificate)


def make_tls_material(
    directory: Path,
    *,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    ca_name: str = "EdgeLoop local MQTT CA",
) -> TlsMaterial:
    """A CA (``ca.pem``) and a server certificate for ``hosts`` signed by it (``server.pem``, ``server.key``),
    valid for a year. Clients verify the broker with ``ca.pem``. (``edgeloop infra up --secure`` makes the CA of
    the local Kafka and PostgreSQL here too, named by ``ca_name``.)"""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    material = TlsMaterial(
        directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "ca.key"
    )
    material.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    material.cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    material.key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    material.key_file.chmod(0o600)
    assert material.ca_key_file is not None
    material.ca_key_file.write_bytes(
        ca_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    material.ca_key_file.chmod(0o600)
    return material


def issue_server_certificate(
    ca_file: Path, ca_key_file: Path, hosts: tuple[str, ...], cert_file: Path, key_file: Path
) -> None:
    """A server certificate for ``hosts`` (DNS names or IP addresses) signed by an existing CA, valid for a year:
    the broker's in docker-compose.yml, signed by the CA the tls-certs job made for Kafka and PostgreSQL."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise SecureBrokerError("a server certificate needs at least one host name")
    ca_cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise SecureBrokerError(f"{ca_key_file}: an EC key was expected (as make_tls_material writes)")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_file.unlink(missing_ok=True)
    key_file.touch(mode=0o600)
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def issue_client_certificate(material: TlsMaterial, common_name: str, directory: Path) -> tuple[Path, Path]:
    """A client certificate for ``common_name`` (a device's username, ``site/device``) signed by the local CA:
    ``(cert_file, key_file)``. On a listener with ``require_certificate`` and ``use_identity_as_username`` the
    broker takes the name as the username, and the dynamic-security client of that name gives the rights."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if material.ca_key_file is None:
        raise SecureBrokerError("the CA's key is not at hand: client certificates need make_tls_material's CA")
    ca_cert = x509.load_pem_x509_certificate(material.ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key(material.ca_key_file.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    stem = common_name.replace("/", "_")
    cert_file, key_file = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def render_config(
    *,
    dynsec_file: Path,
    port: int | None,
    tls_port: int | None = None,
    tls: TlsMaterial | None = None,
    cert_port: int | None = None,
    host: str = "127.0.0.1",
    log_denied_publishes: bool = True,
) -> str:
    """The configuration of a secured broker. ``port``: a plain-text listener (None: none, TLS only);
    ``tls_port`` with ``tls``: a TLS listener; ``cert_port`` with ``tls``: a TLS listener where a client proves
    who it is with a certificate signed by the CA, its common name being its username.
    ``log_denied_publishes`` turns on Mosquitto's debug log, the only level at which 2.0 logs a publish its ACL
    denied (every packet is logged then: a test or audit setting)."""
    if port is None and tls_port is None and cert_port is None:
        raise SecureBrokerError("a secured broker needs a listener: give port, tls_port, cert_port")
    if (tls_port is not None or cert_port is not None) and tls is None:
        raise SecureBrokerError("a TLS listener needs its certificate (make_tls_material)")
    lines = [
        "# A secured EdgeLoop broker (edgeloop.secure_mqtt; docs/security.md). Generated: edit the code.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"plugin {find_dynsec_plugin()}",
        f"plugin_opt_config_file {dynsec_file}",
        # Started as root, Mosquitto switches to the user named here; the plugin must write its file as that user.
        f"user {getpass.getuser()}",
        "persistence false",
        "max_inflight_messages 1000",
        "max_queued_messages 100000",
        "set_tcp_nodelay true",
    ]
    if port is not None:
        lines += [f"listener {port} {host}"]
    if tls_port is not None and tls is not None:
        lines += [
            f"listener {tls_port} {host}",
            f"cafile {tls.ca_file}",
            f"certfile {tls.cert_file}",
            f"keyfile {tls.key_file}",
            "tls_version tlsv1.2",
        ]
    if cert_port is not None and tls is not None:
        lines += [
            f"listener {cert_port} {host}",
            f"cafile {tls.ca_file}",
            f"certfile {tls.cert_file}",
            f"keyfile {tls.key_file}",
            "tls_version tlsv1.2",
            "require_certificate true",
            # The certificate's common name is the username; no password is asked, the plugin's ACLs still apply.
            "use_identity_as_username true",
        ]
    lines += ["log_dest stderr", "connection_messages true", "log_timestamp true"]
    lines += (
        ["log_type all"]
        if log_denied_publishes
        else [f"log_type {kind}" for kind in ("error", "warning", "notice", "information")]
    )
    return "\n".join(lines) + "\n"


# What Mosquitto 2.0 logs for a refusal: a CONNECT with unknown or wrong credentials, or by a removed client
# ("Client <unknown> disconnected, not authorised."), and a PUBLISH its ACL denied (debug level only).
_CONNECT_REFUSED = re.compile(r"disconnected, not authori[sz]ed")
_PUBLISH_DENIED = re.compile(r"Denied PUBLISH from (?P<client>\S+) \(.*'(?P<topic>[^']*)', \.\.\.")


@dataclass(frozen=True)
class RefusalCounts:
    connections: int
    """CONNECTs refused: unknown username, wrong password, removed or disabled client."""
    publishes: int
    """PUBLISHes the ACL denied (a device publishing as another, on a topic not its own)."""
    denied_topics: tuple[str, ...] = ()


def count_refusals(log_text: str) -> RefusalCounts:
    """Count what the broker refused from its log (``log_type all`` for the denied publishes)."""
    connections = len(_CONNECT_REFUSED.findall(log_text))
    topics = tuple(match["topic"] for match in _PUBLISH_DENIED.finditer(log_text))
    return RefusalCounts(connections=connections, publishes=len(topics), denied_topics=topics)


@dataclass
class SecureBroker:
    """A secured Mosquitto of our own under ``workdir``: :meth:`start`, then :meth:`stop`.

    ``port`` (plain text) and/or ``tls_port`` (TLS with a fresh local CA, ``tls.ca_file`` for clients) and/or
    ``cert_port`` (TLS, client certificates as the identity: :func:`issue_client_certificate`).
    The admin identity (``admin_username``/``admin_password``) is created in the plugin's file before the
    start; everything else is added over MQTT (:class:`edgeloop.device_identity.DynsecAdmin`).
    """

    workdir: Path
    port: int | None
    tls_port: int | None = None
    cert_port: int | None = None
    host: str = "127.0.0.1"
    admin_username: str = "edgeloop-admin"
    admin_password: str = ""
    tls: TlsMaterial | None = None
    _process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def dynsec_file(self) -> Path:
        return self.workdir / "dynamic-security.json"

    def start(self, timeout_s: float = 10.0) -> SecureBroker:
        mosquitto = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if mosquitto is None:
            raise SecureBrokerError("mosquitto is not installed: apt-get install mosquitto")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.admin_password = self.admin_password or generate_password()
        write_dynsec_config(self.dynsec_file, self.admin_username, self.admin_password)
        if (self.tls_port is not None or self.cert_port is not None) and self.tls is None:
            self.tls = make_tls_material(self.workdir / "tls", hosts=(self.host, "localhost"))
        config = self.workdir / "mosquitto.conf"
        config.write_text(
            render_config(
                dynsec_file=self.dynsec_file,
                port=self.port,
                tls_port=self.tls_port,
                tls=self.tls,
                cert_port=self.cert_port,
                host=self.host,
            )
        )
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [mosquitto, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        for port in (self.port, self.tls_port, self.cert_port):
            while port is not None and not _listening(self.host, port):
                if self._process.poll() is not None:
                    raise SecureBrokerError(f"mosquitto exited ({self._process.returncode}): {self.log_text()[-2000:]}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise SecureBrokerError(f"mosquitto did not listen on {self.host}:{port} within {timeout_s:g}s")
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def refusals(self) -> RefusalCounts:
        return count_refusals(self.log_text())


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
