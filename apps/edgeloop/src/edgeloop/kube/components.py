"""The five processes of the local control plane: their command lines and health checks.

Everything listens on 127.0.0.1 only. etcd speaks TLS with client certificates;
the API server authenticates with x509 client certificates and ServiceAccount
tokens and authorizes with Node + RBAC, so RBAC tests see a real refusal.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeloop.kube.build import Binaries
from edgeloop.kube.layout import infra_dir
from edgeloop.kube.pki import Pki

HOST = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# KWOK manages the nodes carrying this annotation (and only those).
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
# The lease a simulated node renews, as a kubelet does; the node controller marks a
# node NotReady when it is not renewed within --node-monitor-grace-period.
NODE_LEASE_SECONDS = 40


@dataclass(frozen=True)
class Paths:
    """The files of one running control plane, all under ``.edgeloop/kube``."""

    root: Path

    @property
    def pki(self) -> Pki:
        return Pki(self.root / "pki")

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    def log(self, component: str) -> Path:
        return self.root / "logs" / f"{component}.log"

    def pid(self, component: str) -> Path:
        return self.root / "pids" / f"{component}.pid"

    def component_kubeconfig(self, component: str) -> Path:
        return self.root / "kubeconfigs" / f"{component}.kubeconfig"

    def serving_certs(self, component: str) -> Path:
        return self.root / "serving-certs" / component

    @property
    def kwok_home(self) -> Path:
        # KWOK also reads ~/.kwok/kwok.yaml when it exists; a HOME of its own keeps a user's file out.
        return self.root / "kwok-home"


@dataclass(frozen=True)
class Ports:
    etcd: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    def of(self, component: str) -> int:
        return int(getattr(self, component.replace("kube-", "").replace("-", "_")))


PREFERRED_PORTS = Ports(
    etcd=12379, etcd_peer=12380, apiserver=6443, controller_manager=10257, scheduler=10259, kwok=10247
)


@dataclass(frozen=True)
class Component:
    """One process: how to start it and how to tell it is serving."""

    name: str
    argv: Callable[[Binaries, Paths, Ports], list[str]]
    healthy: Callable[[Paths, Ports], bool]
    start_timeout: float


def etcd_argv(binaries: Binaries, paths: Paths, ports: Ports) -> list[str]:
    pki = paths.pki
    client = f"https://{HOST}:{ports.etcd}"
    peer = f"http://{HOST}:{ports.etcd_peer}"
    return [
        str(binaries.path("etcd")),
        "--name=edgeloop",
        f"--data-dir={paths.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=edgeloop={peer}",
        f"--cert-file={pki.cert('etcd-server')}",
        f"--key-file={pki.key('etcd-server')}",
        f"--trusted-ca-file={pki.ca_cert}",
        "--client-cert-auth=true",
        # A disposable test cluster: skipping fsync spares the disk other engineers share.
        # After a machine crash, `edgeloop kube down --purge` starts from scratch.
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]


def apiserver_argv(binaries: Binaries, paths: Paths, ports: Ports) -> list[str]:
    pki = paths.pki
    return [
        str(binaries.path("kube-apiserver")),
        f"--bind-address={HOST}",
        f"--advertise-address={HOST}",
        f"--secure-port={ports.apiserver}",
        f"--etcd-servers=https://{HOST}:{ports.etcd}",
        f"--etcd-cafile={pki.ca_cert}",
        f"--etcd-certfile={pki.cert('apiserver-etcd-client')}",
        f"--etcd-keyfile={pki.key('apiserver-etcd-client')}",
        f"--tls-cert-file={pki.cert('apiserver')}",
        f"--tls-private-key-file={pki.key('apiserver')}",
        f"--client-ca-file={pki.ca_cert}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.service_account_public_key}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        f"--requestheader-client-ca-file={pki.ca_cert}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.cert('front-proxy-client')}",
        f"--proxy-client-key-file={pki.key('front-proxy-client')}",
        # A loopback address may not be an Endpoints address, so the `kubernetes` Service's endpoints are not
        # reconciled: the real node (node.py, api-forward) gives it the one pods reach.
        "--endpoint-reconciler-type=none",
        # How the API server authenticates to a real node's kubelet (logs, exec); the simulated ones have none.
        f"--kubelet-client-certificate={pki.cert('apiserver-kubelet-client')}",
        f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
        # The real node's name is no DNS name here: reach its kubelet at the InternalIP it reports.
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        "--profiling=false",
        f"--cert-dir={paths.serving_certs('kube-apiserver')}",
    ]


def controller_manager_argv(binaries: Binaries, paths: Paths, ports: Ports) -> list[str]:
    pki = paths.pki
    kubeconfig = paths.component_kubeconfig("kube-controller-manager")
    return [
        str(binaries.path("kube-controller-manager")),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={HOST}",
        f"--secure-port={ports.controller_manager}",
        f"--cert-dir={paths.serving_certs('kube-controller-manager')}",
        "--leader-elect=false",
        # Each controller acts as its own ServiceAccount, under the RBAC roles Kubernetes bootstraps.
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.service_account_key}",
        f"--root-ca-file={pki.ca_cert}",
        f"--cluster-signing-cert-file={pki.ca_cert}",
        f"--cluster-signing-key-file={pki.key('ca')}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--profiling=false",
    ]


def scheduler_argv(binaries: Binaries, paths: Paths, ports: Ports) -> list[str]:
    kubeconfig = paths.component_kubeconfig("kube-scheduler")
    return [
        str(binaries.path("kube-scheduler")),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={HOST}",
        f"--secure-port={ports.scheduler}",
        f"--cert-dir={paths.serving_certs('kube-scheduler')}",
        "--leader-elect=false",
        "--profiling=false",
    ]


def kwok_argv(binaries: Binaries, paths: Paths, ports: Ports) -> list[str]:
    key, value = KWOK_NODE_ANNOTATION
    return [
        str(binaries.path("kwok")),
        f"--kubeconfig={paths.component_kubeconfig('kwok')}",
        f"--config={infra_dir() / 'kwok' / 'stages.yaml'}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={key}={value}",
        f"--server-address={HOST}:{ports.kwok}",
        # Simulated edge nodes have no pod network: pods get addresses from this range.
        f"--cidr={POD_CIDR}",
        f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
    ]


def _etcd_healthy(paths: Paths, ports: Ports) -> bool:
    pki = paths.pki
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.cert("apiserver-etcd-client")), str(pki.key("apiserver-etcd-client")))
    return _get_ok(f"https://{HOST}:{ports.etcd}/health", context)


def _apiserver_ready(paths: Paths, ports: Ports) -> bool:
    pki = paths.pki
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.cert("admin")), str(pki.key("admin")))
    return _get_ok(f"https://{HOST}:{ports.apiserver}/readyz", context)


def _self_signed_healthz(component: str) -> Callable[[Paths, Ports], bool]:
    def healthy(_paths: Paths, ports: Ports) -> bool:
        # The controller manager and scheduler serve /healthz with a certificate they sign themselves.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return _get_ok(f"https://{HOST}:{ports.of(component)}/healthz", context)

    return healthy


def _kwok_healthy(_paths: Paths, ports: Ports) -> bool:
    return _get_ok(f"http://{HOST}:{ports.kwok}/healthz", None)


def _get_ok(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
        return False


COMPONENTS: tuple[Component, ...] = (
    Component("etcd", etcd_argv, _etcd_healthy, start_timeout=60),
    # The first start also bootstraps RBAC roles and priority levels; on 2 busy cores that takes a while.
    Component("kube-apiserver", apiserver_argv, _apiserver_ready, start_timeout=240),
    Component("kube-controller-manager", controller_manager_argv, _self_signed_healthz("controller-manager"), 120),
    Component("kube-scheduler", scheduler_argv, _self_signed_healthz("scheduler"), 120),
    Component("kwok", kwok_argv, _kwok_healthy, start_timeout=60),
)
COMPONENT_NAMES = tuple(component.name for component in COMPONENTS)
