"""The control plane's certificates, generated locally once and kept in ``.edgeloop/kube/pki``.

One CA signs everything: the API server's and etcd's serving certificates, the
client certificates each component authenticates with (its identity is the
certificate's CN, its groups the O fields, as Kubernetes' x509 authenticator reads
them) and the admin's. The service-account key pair signs and verifies
ServiceAccount tokens. Keys are ECDSA P-256, the service-account key RSA-2048.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=3650)
CA_NAME = "edgeloop-kube-ca"
# The Service IP the API server gets in the default service CIDR (10.96.0.0/16), as in kubeadm clusters.
KUBERNETES_SERVICE_IP = "10.96.0.1"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class CertSpec:
    """One certificate: file stem, subject and what it may be used for."""

    stem: str
    common_name: str
    organizations: tuple[str, ...] = ()
    server: bool = False
    client: bool = False
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = field(default=())


CERTS: tuple[CertSpec, ...] = (
    CertSpec(
        "apiserver",
        "kube-apiserver",
        server=True,
        dns_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ip_addresses=("127.0.0.1", KUBERNETES_SERVICE_IP),
    ),
    CertSpec("etcd-server", "etcd", server=True, client=True, dns_names=("localhost",), ip_addresses=("127.0.0.1",)),
    CertSpec("apiserver-etcd-client", "kube-apiserver-etcd-client", client=True),
    # system:masters: the bootstrap superuser group; this is the kubeconfig a developer uses.
    CertSpec("admin", "edgeloop-admin", organizations=("system:masters",), client=True),
    CertSpec("controller-manager", "system:kube-controller-manager", client=True),
    CertSpec("scheduler", "system:kube-scheduler", client=True),
    # KWOK acts for every simulated node, so it gets its own user and ClusterRole (see objects.py),
    # not a system:node:<name> identity that the Node authorizer would confine to one node.
    CertSpec("kwok", "edgeloop:kwok-controller", client=True),
    # The API server's identity towards aggregated API servers (metrics-server, if a chart installs one);
    # only this CN may assert a user in the X-Remote-* headers (--requestheader-allowed-names).
    CertSpec("front-proxy-client", "front-proxy-client", client=True),
    # The real node (node.py): kube-proxy's identity, bound by Kubernetes' bootstrap RBAC to system:node-proxier;
    # and the API server's towards the kubelet (logs, exec, port-forward), allowed by the kubelet's webhook.
    CertSpec("kube-proxy", "system:kube-proxy", client=True),
    CertSpec(
        "apiserver-kubelet-client", "kube-apiserver-kubelet-client", organizations=("system:masters",), client=True
    ),
)


def node_cert(node: str) -> CertSpec:
    """A kubelet's client certificate: the Node authorizer and NodeRestriction confine it to its own node."""
    return CertSpec(f"kubelet-{node}", f"system:node:{node}", organizations=("system:nodes",), client=True)


class Pki:
    """The files under one pki directory; ``ensure()`` creates whatever is missing."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def cert(self, stem: str) -> Path:
        return self.directory / f"{stem}.crt"

    def key(self, stem: str) -> Path:
        return self.directory / f"{stem}.key"

    @property
    def ca_cert(self) -> Path:
        return self.cert("ca")

    @property
    def service_account_key(self) -> Path:
        return self.key("sa")

    @property
    def service_account_public_key(self) -> Path:
        return self.directory / "sa.pub"

    def ensure(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        if not (self.ca_cert.is_file() and self.key("ca").is_file()):
            self._write_ca()
        ca_key = _load_key(self.key("ca"))
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        for spec in CERTS:
            if not (self.cert(spec.stem).is_file() and self.key(spec.stem).is_file()):
                self._write_signed(spec, ca_cert, ca_key)
        if not (self.service_account_key.is_file() and self.service_account_public_key.is_file()):
            self._write_service_account_keys()

    def ensure_cert(self, spec: CertSpec) -> None:
        """One more certificate signed by the CA (made by ``ensure()``), unless it exists."""
        if self.cert(spec.stem).is_file() and self.key(spec.stem).is_file():
            return
        ca_key = _load_key(self.key("ca"))
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        self._write_signed(spec, ca_cert, ca_key)

    def _write_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_key(self.key("ca"), key)
        self.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _write_signed(self, spec: CertSpec, ca_cert: x509.Certificate, ca_key: PrivateKey) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in spec.organizations]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, spec.common_name))
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if spec.server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if spec.client else []
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,  # ECDSA keys sign; they encipher nothing
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in spec.dns_names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in spec.ip_addresses]
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_key(self.key(spec.stem), key)
        self.cert(spec.stem).write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _write_service_account_keys(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(self.service_account_key, key)
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.service_account_public_key.write_bytes(public)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_key(path: Path, key: PrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)


def _load_key(path: Path) -> PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TypeError(f"{path} holds a {type(key).__name__}, not an EC or RSA key")
    return key
