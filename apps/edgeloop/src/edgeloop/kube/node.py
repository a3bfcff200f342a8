"""A real edge node beside the simulated ones: containerd + kubelet + kube-proxy (``edgeloop kube up --real-node``).

The kubelet and kube-proxy are built from the same pinned build module as the control plane (build.py); the
container runtime is Debian's containerd 1.6 with runc and the bridge CNI of containernetworking-plugins, each run
with its own config, root, state and socket under ``.edgeloop/kube/node`` so it never meets a system containerd.
No registry is reachable here: the sandbox ("pause") image is a small static Go program (infra/kube/pause) packed
with umoci and imported, and workloads use images built by ``edgeloop images build``.

What the machine forced (measured): cgroups are hybrid v1, so ``cgroupDriver: cgroupfs``, ``failCgroupV1: false``
and no QoS cgroup tree; the sandbox may not lower oom_score_adj, so containerd has ``restrict_oom_score_adj`` and
the kubelet keeps its own score (``oomScoreAdj: 0``).

The node registers as ``edge-<group>-kubelet``; the kubelet may not set ``node-role.kubernetes.io/*`` labels on
itself (NodeRestriction), so ``up`` labels it as an edge node of its group, like the simulated ones, with the admin
identity, and lists it in the group's NodeGroup.

Pods reach the API server through the ``kubernetes`` Service (10.96.0.1:443, what in-cluster clients read from
their environment). The control plane listens on 127.0.0.1 only, which inside a pod is the pod itself, so the node
runs ``api-forward``: Debian's socat listening on the host's address (as the cluster DNS does) and passing each
connection through, TLS untouched, to the API server on loopback; an EndpointSlice makes it the Service's endpoint.
The API server's certificate already names 10.96.0.1, so a pod's client verifies it as in any cluster.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import yaml

from edgeloop import processes
from edgeloop.kube import edge, kubeconfig
from edgeloop.kube.build import Binaries
from edgeloop.kube.components import HOST
from edgeloop.kube.errors import KubeError
from edgeloop.kube.layout import state_path
from edgeloop.kube.manifests import apply_manifests
from edgeloop.kube.pki import Pki, node_cert

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

Echo = Callable[[str], None]

DEFAULT_GROUP = "site-real"
# Pods of the real node get addresses from here (the bridge's host-local IPAM); it must not meet the host's routes.
POD_CIDR = "10.85.0.0/24"
BRIDGE = "edgeloop0"
CNI_BIN_DIR = Path("/usr/lib/cni")
# The locally built sandbox image (infra/kube/pause), named as no registry could serve it.
PAUSE_IMAGE = "edgeloop.local/pause:1"
RUNC = "/usr/sbin/runc"
NODE_READY_TIMEOUT = 180.0
PROCESS_NAMES = ("containerd", "kubelet", "kube-proxy", "dns", "api-forward")
# Cluster DNS (infra/kube/dns, see its main.go): the kube-dns Service at the address kubeadm clusters give it,
# its endpoint the dns process on the host; pods get it as their nameserver from the kubelet (clusterDNS).
CLUSTER_DNS_IP = "10.96.0.10"
DNS_SERVICE = ("kube-system", "kube-dns")
# The API server's Service (made by the API server itself) and the EndpointSlice naming api-forward as its endpoint.
API_SERVICE = ("default", "kubernetes")
API_ENDPOINTS = "kubernetes-host"


@dataclass(frozen=True)
class Requirement:
    program: str
    package: str
    location: str | None = None


# Debian packages the real node and the image build use; `edgeloop kube up --real-node` installs what is missing.
PACKAGES = (
    Requirement("containerd", "containerd"),
    Requirement("runc", "runc"),
    # Found by its file: the plugins are not on PATH, and iproute2's /usr/sbin/bridge would pass for "bridge".
    Requirement("loopback", "containernetworking-plugins", str(CNI_BIN_DIR / "loopback")),
    Requirement("debootstrap", "debootstrap"),
    Requirement("umoci", "umoci"),
    Requirement("iptables", "iptables"),
    # api-forward: pods reach the API server (on 127.0.0.1) through it.
    Requirement("socat", "socat"),
)


def ensure_packages(echo: Echo) -> None:
    from edgeloop.infra.errors import InfraError
    from edgeloop.infra.packages import Requirement as InfraRequirement
    from edgeloop.infra.packages import ensure_installed

    requirements = [InfraRequirement(r.program, r.package, (r.location,) if r.location else ()) for r in PACKAGES]
    try:
        ensure_installed(requirements, echo)
    except InfraError as exc:
        raise KubeError(str(exc)) from exc


@dataclass(frozen=True)
class NodePaths:
    """Everything the real node writes, under ``.edgeloop/kube/node``."""

    root: Path

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd" / "config.toml"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def record(self) -> Path:
        return self.root / "node.json"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def pid(self, name: str) -> Path:
        return self.root / "pids" / f"{name}.pid"


def node_paths() -> NodePaths:
    return NodePaths(state_path() / "node")


def node_name(group: str) -> str:
    return f"edge-{group}-kubelet"


def containerd_address() -> Path:
    return node_paths().containerd_socket


def containerd_running() -> bool:
    return _running("containerd") is not None


def running_group() -> str | None:
    """The node group of the real node when its kubelet runs (``up`` keeps that NodeGroup), else None."""
    paths = node_paths()
    if _running("kubelet") is None or not paths.record.is_file():
        return None
    return str(json.loads(paths.record.read_text())["group"])


def _running(name: str) -> psutil.Process | None:
    paths = node_paths()
    return processes.owned_process(paths.pid(name), str(paths.root))


# --- configuration ----------------------------------------------------------------------------------------------


def containerd_config(paths: NodePaths) -> str:
    base = paths.root / "containerd"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{base / "root"}"
state = "{base / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{paths.containerd_socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base / "opt"}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # The sandbox we run in may not lower oom_score_adj; without this every container start fails.
  restrict_oom_score_adj = true
  enable_selinux = false

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  # crun fails on these hybrid cgroup-v1 hosts; runc works. cgroupfs, as the kubelet's cgroupDriver.
  BinaryName = "{RUNC}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{paths.cni_conf_dir}"
"""


def cni_config(paths: NodePaths) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "edgeloop",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(paths.root / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(paths: NodePaths, pki: Pki, ports: dict[str, int], group: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "port": ports["kubelet"],
        "readOnlyPort": 0,
        "healthzBindAddress": HOST,
        "healthzPort": ports["kubelet_healthz"],
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki.ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        # Hybrid cgroup v1 (no systemd here): cgroupfs, no QoS tree, nothing enforced on node allocatable.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        # The sandbox cannot lower the score (the kubelet's default is -999).
        "oomScoreAdj": 0,
        "registerWithTaints": [{"key": edge.EDGE_TAINT_KEY, "effect": "NoSchedule"}],
        "podLogsDir": str(paths.root / "pod-logs"),
        "volumePluginDir": str(paths.root / "volume-plugins"),
        "resolvConf": "/etc/resolv.conf",
        "clusterDomain": "cluster.local",
        "clusterDNS": [CLUSTER_DNS_IP],
        "localStorageCapacityIsolation": False,
        # The disk is shared with the other engineers' builds; evict only when it is really full.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 98,
        "serializeImagePulls": False,
        "maxPods": 110,
        "staticPodPath": "",
        "protectKernelDefaults": False,
    }


def kube_proxy_config(paths: NodePaths, ports: dict[str, int], name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(paths.root / "kube-proxy.kubeconfig")},
        "hostnameOverride": name,
        "mode": "iptables",
        "nodePortAddresses": ["primary"],
        "clusterCIDR": POD_CIDR,
        "bindAddress": HOST,
        "healthzBindAddress": f"{HOST}:{ports['kube_proxy_healthz']}",
        "metricsBindAddress": f"{HOST}:{ports['kube_proxy_metrics']}",
        # The sandbox's sysctls are read-only: leave nf_conntrack_max and its timeouts as they are.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def host_ip() -> str:
    """The address the host reaches the outside with: the node's InternalIP (the API server calls the kubelet there)."""
    result = subprocess.run(["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True, check=False)
    words = result.stdout.split()
    if "src" in words:
        return words[words.index("src") + 1]
    return HOST


# --- up and down -----------------------------------------------------------------------------------------------


def up(api: ApiClient, binaries: Binaries, pki: Pki, server: str, group: str, echo: Echo) -> str:
    """Start containerd, the pause image, the kubelet and kube-proxy (each unless running); label the node and wait
    until it is Ready. Returns the node's name."""
    from edgeloop.images import ImageName, import_image

    ensure_packages(echo)
    paths = node_paths()
    name = node_name(group)
    for directory in ("containerd", "cni/net.d", "kubelet", "logs", "pids", "pod-logs", "volume-plugins"):
        (paths.root / directory).mkdir(parents=True, exist_ok=True)
    saved = json.loads(paths.record.read_text()) if paths.record.is_file() else {}
    if saved.get("group") not in (None, group) and _running("kubelet") is not None:
        raise KubeError(
            f"the real node already runs in node group {saved['group']}; `edgeloop kube down` first to move it"
        )
    ports = _ports(saved.get("ports", {}))
    pki.ensure_cert(node_cert(name))
    kubeconfig.write(paths.root / "kubelet.kubeconfig", kubeconfig.kubeconfig(server, pki, f"kubelet-{name}"))
    kubeconfig.write(paths.root / "kube-proxy.kubeconfig", kubeconfig.kubeconfig(server, pki, "kube-proxy"))
    if _running("containerd") is None:
        _remove_pod_networks(paths, echo)  # what a node that was not stopped cleanly (or another checkout's) left
    _write_if_changed(paths.containerd_config, containerd_config(paths))
    _write_if_changed(paths.cni_conf_dir / "10-edgeloop.conflist", json.dumps(cni_config(paths), indent=2) + "\n")
    _write_if_changed(paths.root / "kubelet-config.yaml", yaml.safe_dump(kubelet_config(paths, pki, ports, group)))
    _write_if_changed(paths.root / "kube-proxy-config.yaml", yaml.safe_dump(kube_proxy_config(paths, ports, name)))
    paths.record.write_text(json.dumps({"group": group, "name": name, "ports": ports}, indent=2) + "\n")

    _start("containerd", ["containerd", "--config", str(paths.containerd_config)], paths, echo, _containerd_up, 60)
    pause = _pause_image(binaries, echo)
    import_image(pause.layout, pause.tag, ImageName("edgeloop.local/pause", "1"), paths.containerd_socket, echo=echo)
    kubelet = [
        str(binaries.path("kubelet")),
        f"--config={paths.root / 'kubelet-config.yaml'}",
        f"--kubeconfig={paths.root / 'kubelet.kubeconfig'}",
        f"--root-dir={paths.kubelet_dir}",
        f"--cert-dir={paths.root / 'kubelet-pki'}",
        f"--hostname-override={name}",
        f"--node-ip={host_ip()}",
        # Labels outside kubernetes.io the kubelet may set itself; the edge role labels are set by `up` below.
        f"--node-labels={edge.NODE_GROUP_LABEL}={group}",
        "--v=1",
    ]
    _start("kubelet", kubelet, paths, echo, _http_ok(ports["kubelet_healthz"], "/healthz"), 120)
    proxy = [str(binaries.path("kube-proxy")), f"--config={paths.root / 'kube-proxy-config.yaml'}", "--v=1"]
    _start("kube-proxy", proxy, paths, echo, _http_ok(ports["kube_proxy_healthz"], "/livez"), 120)
    address = host_ip()
    dns = [
        str(binaries.path("edgeloop-dns")),
        # kube-proxy's identity (system:node-proxier) may list and watch Services: all the DNS needs.
        f"--kubeconfig={paths.root / 'kube-proxy.kubeconfig'}",
        f"--listen={address}:{ports['dns']}",
    ]
    _start("dns", dns, paths, echo, _tcp_open(address, ports["dns"]), 60)
    apply_manifests(api, dns_objects(address, ports["dns"]))
    _start("api-forward", api_forward_argv(paths, address, ports["api_forward"], server), paths, echo,
           _tcp_open(address, ports["api_forward"]), 30)  # fmt: skip
    apply_manifests(api, [api_endpoints(address, ports["api_forward"])])
    _label_and_wait(api, name, group, echo)
    return name


def api_forward_argv(paths: NodePaths, address: str, port: int, server: str) -> list[str]:
    """socat passing each connection to ``address:port`` through to the API server (``server``, on loopback)."""
    upstream = urllib.parse.urlsplit(server)
    return [
        "socat",
        # its own log file (it names paths.root, by which owned_process knows the process is the node's)
        "-lf", str(paths.root / "logs" / "api-forward.socat.log"),
        f"TCP-LISTEN:{port},bind={address},reuseaddr,fork",
        f"TCP:{upstream.hostname}:{upstream.port}",
    ]  # fmt: skip


def api_endpoints(address: str, port: int) -> dict[str, Any]:
    """The ``kubernetes`` Service's EndpointSlice: api-forward. (The API server does not reconcile that Service's
    endpoints here: ``--endpoint-reconciler-type=none``, its own address being loopback.)"""
    namespace, service = API_SERVICE
    return _host_endpoints(
        API_ENDPOINTS, namespace, service, address, [{"name": "https", "protocol": "TCP", "port": port}]
    )


def _host_endpoints(
    name: str, namespace: str, service: str, address: str, ports: list[dict[str, Any]]
) -> dict[str, Any]:
    """An EndpointSlice naming a process on the host as ``service``'s one endpoint (a Service without selector)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "edgeloop-kube",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": ports,
    }


def dns_objects(address: str, port: int) -> list[dict[str, Any]]:
    """The kube-dns Service (no selector: its endpoint is a host process) and the EndpointSlice naming it."""
    namespace, service = DNS_SERVICE
    managed_key, managed_value = edge.MANAGED_BY_LABEL
    ports = [("dns", "UDP"), ("dns-tcp", "TCP")]
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": service, "namespace": namespace, "labels": {managed_key: managed_value}},
            "spec": {
                "clusterIP": CLUSTER_DNS_IP,
                "ports": [{"name": n, "protocol": p, "port": 53, "targetPort": port} for n, p in ports],
            },
        },
        _host_endpoints(
            f"{service}-host", namespace, service, address, [{"name": n, "protocol": p, "port": port} for n, p in ports]
        ),
    ]


def down(echo: Echo, api: ApiClient | None = None) -> list[str]:
    """Stop kube-proxy and the kubelet, remove the node's containers, stop containerd; delete the Node object when
    the API server still answers, so a cluster without the real node shows no NotReady leftover."""
    paths = node_paths()
    stopped: list[str] = []
    name = json.loads(paths.record.read_text()).get("name") if paths.record.is_file() else None
    for process_name in ("api-forward", "dns", "kube-proxy", "kubelet"):
        if (proc := _running(process_name)) is not None:
            echo(f"{process_name} (pid {proc.pid}): {processes.terminate(proc)}")
            stopped.append(process_name)
        paths.pid(process_name).unlink(missing_ok=True)
    if "kube-proxy" in stopped:
        _cleanup_kube_proxy_rules(echo)
    if (proc := _running("containerd")) is not None:
        _remove_containers(paths, echo)
        echo(f"containerd (pid {proc.pid}): {processes.terminate(proc)}")
        stopped.append("containerd")
    paths.pid("containerd").unlink(missing_ok=True)
    if stopped:
        _remove_pod_networks(paths, echo)
        _unmount_under(paths.root, echo)
        _remove_kubelet_rules()
    if api is not None and name:
        from kubernetes.client import CoreV1Api, DiscoveryV1Api
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        with suppress(ApiException, HTTPError):
            CoreV1Api(api).delete_node(name, _request_timeout=10)
            echo(f"node {name} deleted")
        with suppress(ApiException, HTTPError):
            CoreV1Api(api).delete_namespaced_service(DNS_SERVICE[1], DNS_SERVICE[0], _request_timeout=10)
        with suppress(ApiException, HTTPError):
            DiscoveryV1Api(api).delete_namespaced_endpoint_slice(API_ENDPOINTS, API_SERVICE[0], _request_timeout=10)
    return stopped


def _ports(saved: dict[str, int]) -> dict[str, int]:
    preferred = {
        "kubelet": 10250,
        "kubelet_healthz": 10248,
        "kube_proxy_healthz": 10256,
        "kube_proxy_metrics": 10249,
        "dns": 1053,
        "api_forward": 16443,
    }
    owners = {
        "kubelet": "kubelet",
        "kubelet_healthz": "kubelet",
        "kube_proxy_healthz": "kube-proxy",
        "kube_proxy_metrics": "kube-proxy",
        "dns": "dns",
        "api_forward": "api-forward",
    }
    chosen: dict[str, int] = {}
    for key, port in preferred.items():
        if _running(owners[key]) is not None and key in saved:
            chosen[key] = int(saved[key])
            continue
        last = int(saved.get(key, port))
        taken = set(chosen.values())
        free = last not in taken and processes.port_free(last, "0.0.0.0")
        chosen[key] = last if free else processes.pick_port(port, taken, "0.0.0.0")
    return chosen


def _start(
    name: str, argv: list[str], paths: NodePaths, echo: Echo, healthy: Callable[[], bool], timeout: float
) -> None:
    if (proc := _running(name)) is not None:
        echo(f"{name}: running (pid {proc.pid})")
        return
    echo(f"starting {name}...")
    started = time.monotonic()
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(paths.root)}
    log = paths.log(name)
    # Every argv names paths.root (owned_process finds our processes by it); containerd's does via --config.
    pid = processes.spawn(argv, log_file=log, pid_file=paths.pid(name), cwd=paths.root, env=env)
    deadline = started + timeout
    while time.monotonic() < deadline:
        if processes.exited(pid):
            paths.pid(name).unlink(missing_ok=True)
            raise KubeError(f"{name} exited while starting; the end of {log}:\n{_tail(log)}")
        if healthy():
            echo(f"  {name} ready in {time.monotonic() - started:.1f} s (pid {pid})")
            return
        time.sleep(0.5)
    raise KubeError(f"{name} (pid {pid}) not healthy within {timeout:.0f} s; the end of {log}:\n{_tail(log)}")


def _containerd_up() -> bool:
    result = subprocess.run(
        ["ctr", "--address", str(containerd_address()), "version"], capture_output=True, timeout=10, check=False
    )
    return result.returncode == 0


def _http_ok(port: int, path: str) -> Callable[[], bool]:
    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=3) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    return healthy


def _write_if_changed(path: Path, content: str) -> None:
    """kube-proxy exits when its config file is written to, even with the same content: leave it alone then."""
    if not path.is_file() or path.read_text() != content:
        path.write_text(content)


def _tcp_open(address: str, port: int) -> Callable[[], bool]:
    def healthy() -> bool:
        try:
            with socket.create_connection((address, port), timeout=2):
                return True
        except OSError:
            return False

    return healthy


def _pause_image(binaries: Binaries, echo: Echo) -> Any:
    """The sandbox image: the pause binary alone, in the images cache's OCI layout (built once per binary)."""
    from edgeloop.images import build_single_binary_image

    return build_single_binary_image(binaries.path("pause"), "/pause", echo=echo)


def _label_and_wait(api: ApiClient, name: str, group: str, echo: Echo) -> None:
    """Edge labels as on the simulated nodes, then until Ready and schedulable (CNI up, no not-ready taint)."""
    from kubernetes.client import CoreV1Api
    from kubernetes.client.exceptions import ApiException

    core = CoreV1Api(api)
    deadline = time.monotonic() + NODE_READY_TIMEOUT
    labelled = False
    while True:
        try:
            node = core.read_node(name)
        except ApiException as exc:
            if exc.status != 404:
                raise KubeError(f"reading node {name} failed: {exc.status} {exc.reason}") from exc
            node = None
        if node is not None and not labelled:
            labels = {edge.EDGE_ROLE_LABEL: "", edge.AGENT_ROLE_LABEL: "", edge.NODE_GROUP_LABEL: group}
            core.patch_node(name, {"metadata": {"labels": labels}})
            labelled = True
        if node is not None:
            ready = any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))
            not_ready_taint = any(t.key.startswith("node.kubernetes.io/") for t in (node.spec.taints or []))
            if ready and not not_ready_taint and labelled:
                echo(f"real node {name} Ready (node group {group}, kubelet + containerd, pods in {POD_CIDR})")
                return
        if time.monotonic() > deadline:
            log = node_paths().log("kubelet")
            raise KubeError(
                f"real node {name} not Ready within {NODE_READY_TIMEOUT:.0f} s; the end of {log}:\n{_tail(log)}"
            )
        time.sleep(1)


def _remove_containers(paths: NodePaths, echo: Echo) -> None:
    """Kill and delete every task in containerd's k8s.io namespace, so no container outlives the node."""
    ctr = ["ctr", "--address", str(paths.containerd_socket), "-n", "k8s.io"]

    def listed() -> list[str]:
        shown = subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True, timeout=30, check=False)
        return shown.stdout.split()

    tasks = listed()
    for task in tasks:
        subprocess.run([*ctr, "tasks", "kill", "-s", "SIGKILL", task], capture_output=True, timeout=30, check=False)
    # containerd's CRI plugin deletes most killed tasks itself: delete only those still listed, until none is (a
    # task asked for by name after that is "not found", which once cost 10 s a container in retries).
    deadline = time.monotonic() + 20
    while (left := listed()) and time.monotonic() < deadline:
        for task in left:
            subprocess.run([*ctr, "tasks", "delete", task], capture_output=True, timeout=30, check=False)
        time.sleep(0.2)
    if left:
        echo(f"{len(left)} container task(s) of the real node still listed after SIGKILL: {', '.join(left)}")
    if tasks:
        echo(f"removed {len(tasks)} container(s) of the real node")


def _remove_pod_networks(paths: NodePaths, echo: Echo) -> None:
    """Remove what the bridge CNI made for the node's pods: their veths on the bridge, their network namespaces
    (containerd's ``cni-*``) and the IPAM's leases. Killing the containers leaves all three, and the bridge is the
    host's, not the checkout's: a node started later (here, or from another checkout with IPAM leases of its own)
    hands a pod an address a dead pod's namespace still holds on the same bridge, and connections to the new pod
    are refused (found by a fresh-clone CI run: the chart's model server never answered its startup probe)."""
    listed = subprocess.run(
        ["ip", "-o", "link", "show", "master", BRIDGE], capture_output=True, text=True, timeout=30, check=False
    )
    links = [line.split(":")[1].strip().split("@")[0] for line in listed.stdout.splitlines() if ":" in line]
    for link in links:
        subprocess.run(["ip", "link", "delete", link], capture_output=True, timeout=30, check=False)
    namespaces = sorted(Path("/var/run/netns").glob("cni-*")) if Path("/var/run/netns").is_dir() else []
    for namespace in namespaces:
        deleted = subprocess.run(["ip", "netns", "delete", namespace.name], capture_output=True, timeout=30)
        if deleted.returncode != 0:
            # A mount this process cannot detach (another mount namespace holds it): the namespace stays, empty
            # once its veth is gone, which is what matters.
            with suppress(OSError):
                namespace.unlink(missing_ok=True)
    shutil.rmtree(paths.root / "cni" / "ipam", ignore_errors=True)
    if links or namespaces:
        echo(f"removed {len(links)} pod network link(s) and {len(namespaces)} network namespace(s) of the real node")


def _unmount_under(root: Path, echo: Echo) -> None:
    """The kubelet bind-mounts its root dir onto itself (and pods' volumes below it): undo that, deepest first."""
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == str(root) or point.startswith(f"{root}/"):
            points.append(point)
    for point in sorted(points, key=lambda p: p.count("/"), reverse=True):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if points:
        echo(f"unmounted {len(points)} mount(s) under {root}")


# What the kubelet adds to the host's iptables and never removes (kube-proxy's own go with its --cleanup).
KUBELET_CHAINS = {
    "filter": ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-PROXY-CANARY"),
    "nat": ("KUBE-KUBELET-CANARY", "KUBE-PROXY-CANARY", "KUBE-MARK-MASQ"),
    "mangle": ("KUBE-KUBELET-CANARY", "KUBE-PROXY-CANARY", "KUBE-IPTABLES-HINT"),
}


def _remove_kubelet_rules() -> None:
    for builtin in ("INPUT", "OUTPUT"):
        while subprocess.run(["iptables", "-D", builtin, "-j", "KUBE-FIREWALL"], capture_output=True).returncode == 0:
            pass
    for table, chains in KUBELET_CHAINS.items():
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True, check=False)
            subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True, check=False)


def _cleanup_kube_proxy_rules(echo: Echo) -> None:
    """kube-proxy leaves its KUBE-* iptables chains behind; its --cleanup mode removes them."""
    from edgeloop.kube.build import binaries_location

    binary = binaries_location().path("kube-proxy")
    if binary.is_file():
        subprocess.run([str(binary), "--cleanup"], capture_output=True, timeout=60, check=False)
        echo("kube-proxy's iptables rules removed")


def _tail(path: Path, lines: int = 25) -> str:
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


__all__ = [
    "DEFAULT_GROUP",
    "PAUSE_IMAGE",
    "POD_CIDR",
    "containerd_address",
    "containerd_running",
    "down",
    "ensure_packages",
    "node_name",
    "node_paths",
    "running_group",
    "up",
]
