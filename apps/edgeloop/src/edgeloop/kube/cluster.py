"""``up``, ``down`` and ``status`` of the local control plane (the CLI and the test fixtures call these).

``up`` is idempotent: it builds what is missing, starts what is not running, and
reconciles the API objects it owns (KWOK's RBAC, the KubeEdge CRDs, the simulated
edge nodes and their NodeGroups). ``down`` stops, by pid, every process ``up`` started.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import yaml

from edgeloop import processes
from edgeloop.kube import edge, kubeconfig
from edgeloop.kube import node as kube_node
from edgeloop.kube.build import Binaries, binaries_location, ensure_binaries
from edgeloop.kube.components import (
    COMPONENT_NAMES,
    COMPONENTS,
    HOST,
    KWOK_NODE_ANNOTATION,
    PREFERRED_PORTS,
    Component,
    Paths,
    Ports,
)
from edgeloop.kube.errors import KubeError
from edgeloop.kube.layout import infra_dir, kubeconfig_path, read_versions, state_path
from edgeloop.kube.manifests import apply_manifests

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

Echo = Callable[[str], None]
NODES_READY_TIMEOUT = 120.0


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    port: int | None
    rss_bytes: int | None
    log: Path

    @property
    def running(self) -> bool:
        return self.pid is not None


@dataclass(frozen=True)
class NodeStatus:
    name: str
    group: str
    ready: bool
    taints: tuple[str, ...]
    simulated: bool = True  # False: the real node (kubelet + containerd) of `up --real-node`


@dataclass(frozen=True)
class ClusterStatus:
    components: tuple[ComponentStatus, ...]
    kubeconfig: Path
    server: str | None
    kubernetes_version: str
    bin_dir: Path | None
    nodes: tuple[NodeStatus, ...] = field(default=())
    nodes_error: str | None = None

    @property
    def running(self) -> bool:
        return all(component.running for component in self.components)

    @property
    def stopped(self) -> bool:
        return not any(component.running for component in self.components)


def paths() -> Paths:
    return Paths(state_path())


def up(
    topology: edge.Topology | None = None,
    *,
    echo: Echo = print,
    export_kubeconfig: bool = False,
    real_node: str | None = None,
) -> ClusterStatus:
    """Build if needed, start every component not running, reconcile the edge nodes; wait until they are Ready.

    ``real_node``: also run a real node (kubelet + containerd, node.py) in that node group."""
    started_at = time.monotonic()
    state = paths()
    with _state_lock(state):
        binaries = ensure_binaries(echo)
        versions = binaries.versions
        echo(
            f"Kubernetes {versions.kubernetes} (etcd {versions.etcd}, KWOK {versions.kwok}, helm {versions.helm}) "
            f"from {binaries.directory}"
        )
        state.pki.ensure()
        saved = _load_state(state)
        topology = topology or _saved_topology(saved) or edge.Topology()
        ports = _start_components(binaries, state, saved, echo)
        _save_state(state, ports, topology, binaries)
        with _api_client() as api, _api_errors("setting up the edge nodes and CRDs"):
            # A real node already running keeps its node group (and its place in it) across a plain `up`.
            real = real_node or kube_node.running_group()
            _apply_cluster_objects(api, topology, echo, real_group=real)
            ready = _wait_nodes_ready(api, topology, echo)
            if real_node is not None:
                server = f"https://{HOST}:{ports.apiserver}"
                kube_node.up(api, binaries, state.pki, server, real_node, echo)
            if real is not None:
                ready[kube_node.node_name(real)] = True
            _write_node_group_status(api, topology, ready, real_group=real)
            _wait_default_service_account(api)
        if export_kubeconfig:
            _export_user_kubeconfig(state, ports, echo)
        _link_helm(binaries, echo)
    echo(f"control plane up in {time.monotonic() - started_at:.0f} s; kubeconfig: {kubeconfig_path()}")
    return status()


def down(*, purge: bool = False, echo: Echo = print) -> list[str]:
    """Stop every process ``up`` started (by pid, newest first); with purge also delete .edgeloop/kube."""
    state = paths()
    stopped: list[str] = []
    with _state_lock(state):
        marker = str(state.root)
        _stop_real_node(state, echo, stopped)
        for component in reversed(COMPONENTS):
            running = processes.owned_process(state.pid(component.name), marker)
            if running is not None:
                outcome = processes.terminate(running)
                echo(f"{component.name} (pid {running.pid}): {outcome}")
                stopped.append(component.name)
            state.pid(component.name).unlink(missing_ok=True)
        _remove_user_kubeconfig(state, echo)
    if not stopped:
        echo("no control plane process was running")
    if purge:
        shutil.rmtree(state.root, ignore_errors=True)
        echo(f"deleted {state.root} (etcd data, certificates, logs)")
    return stopped


def status(*, with_nodes: bool = True) -> ClusterStatus:
    state = paths()
    saved = _load_state(state)
    ports = saved.get("ports", {})
    marker = str(state.root)
    components = []
    for component in COMPONENTS:
        running = processes.owned_process(state.pid(component.name), marker)
        components.append(
            ComponentStatus(
                name=component.name,
                pid=running.pid if running else None,
                port=_saved_port(ports, component.name),
                rss_bytes=_rss(running),
                log=state.log(component.name),
            )
        )
    apiserver_port = _saved_port(ports, "kube-apiserver")
    result = ClusterStatus(
        components=tuple(components),
        kubeconfig=kubeconfig_path(),
        server=f"https://{HOST}:{apiserver_port}" if apiserver_port else None,
        kubernetes_version=read_versions().kubernetes,
        bin_dir=Path(saved["bin_dir"]) if saved.get("bin_dir") else None,
    )
    apiserver_up = any(c.running for c in components if c.name == "kube-apiserver")
    if not (with_nodes and apiserver_up):
        return result
    try:
        with _api_client() as api:
            nodes = tuple(_edge_nodes(api))
    except KubeError as exc:
        return replace(result, nodes_error=str(exc))
    return replace(result, nodes=nodes)


def api_client() -> ApiClient:
    """A kubernetes.client.ApiClient on the admin kubeconfig (the caller closes it)."""
    from kubernetes import config

    if not kubeconfig_path().is_file():
        raise KubeError(f"no kubeconfig at {kubeconfig_path()}: run `edgeloop kube up` first")
    return config.new_client_from_config(config_file=str(kubeconfig_path()))


def helm_path() -> Path:
    """The pinned helm binary (built by ``up``)."""
    return binaries_location().path("helm")


# --- starting -------------------------------------------------------------------------------------------------


def _start_components(binaries: Binaries, state: Paths, saved: dict[str, Any], echo: Echo) -> Ports:
    marker = str(state.root)
    running = {c.name: processes.owned_process(state.pid(c.name), marker) for c in COMPONENTS}
    core_up = running["etcd"] is not None and running["kube-apiserver"] is not None
    if not core_up and any(running.values()):
        # Everything else is configured with etcd's and the API server's ports: restart in order.
        echo("etcd or the API server is not running: restarting the whole control plane")
        for component in reversed(COMPONENTS):
            if (proc := running[component.name]) is not None:
                processes.terminate(proc)
                running[component.name] = None
    ports = _choose_ports(saved.get("ports", {}), {name for name, proc in running.items() if proc is not None})
    _write_kubeconfigs(state, ports)
    started: list[str] = []
    try:
        for component in COMPONENTS:
            if running[component.name] is not None:
                echo(f"{component.name}: running (pid {running[component.name].pid})")  # type: ignore[union-attr]
                continue
            _start_one(component, binaries, state, ports, echo)
            started.append(component.name)
            if component.name == "kube-apiserver":
                with _api_client() as api, _api_errors("granting KWOK its RBAC role"):
                    apply_manifests(api, edge.kwok_rbac())  # before KWOK starts, so it is never refused
    except KubeError:
        for name in reversed(started):
            if (proc := processes.owned_process(state.pid(name), marker)) is not None:
                processes.terminate(proc)
        raise
    return ports


# Which component listens on each port of Ports.
_PORT_OWNERS = {
    "etcd": "etcd",
    "etcd_peer": "etcd",
    "apiserver": "kube-apiserver",
    "controller_manager": "kube-controller-manager",
    "scheduler": "kube-scheduler",
    "kwok": "kwok",
}


def _choose_ports(saved: dict[str, int], running: set[str]) -> Ports:
    """A running component keeps its port; the others get their last port, else the preferred one, else any."""
    chosen: dict[str, int] = {}
    for key, preferred in asdict(PREFERRED_PORTS).items():
        if _PORT_OWNERS[key] in running and key in saved:
            chosen[key] = int(saved[key])
            continue
        taken = set(chosen.values())
        last = int(saved.get(key, preferred))
        chosen[key] = last if last not in taken and processes.port_free(last) else processes.pick_port(preferred, taken)
    return Ports(**chosen)


def _start_one(component: Component, binaries: Binaries, state: Paths, ports: Ports, echo: Echo) -> None:
    port = ports.of(component.name)
    echo(f"starting {component.name} on {HOST}:{port}...")
    started = time.monotonic()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(state.kwok_home if component.name == "kwok" else state.root)}
    state.kwok_home.mkdir(parents=True, exist_ok=True)
    log = state.log(component.name)
    pid = processes.spawn(
        component.argv(binaries, state, ports),
        log_file=log,
        pid_file=state.pid(component.name),
        cwd=state.root,
        env=env,
    )
    deadline = started + component.start_timeout
    while time.monotonic() < deadline:
        if processes.exited(pid):
            state.pid(component.name).unlink(missing_ok=True)
            raise KubeError(f"{component.name} exited while starting; the end of {log}:\n{_tail(log)}")
        if component.healthy(state, ports):
            echo(f"  {component.name} ready in {time.monotonic() - started:.1f} s (pid {pid})")
            return
        time.sleep(0.5)
    raise KubeError(
        f"{component.name} (pid {pid}) did not become healthy within {component.start_timeout:.0f} s; "
        f"the end of {log}:\n{_tail(log)}"
    )


def _write_kubeconfigs(state: Paths, ports: Ports) -> None:
    server = f"https://{HOST}:{ports.apiserver}"
    kubeconfig.write(kubeconfig_path(), kubeconfig.kubeconfig(server, state.pki, "admin"))
    for component, stem in (
        ("kube-controller-manager", "controller-manager"),
        ("kube-scheduler", "scheduler"),
        ("kwok", "kwok"),
    ):
        kubeconfig.write(state.component_kubeconfig(component), kubeconfig.kubeconfig(server, state.pki, stem))


# --- API objects --------------------------------------------------------------------------------------------


@contextmanager
def _api_errors(doing: str) -> Iterator[None]:
    """An API call that fails becomes a KubeError saying what was being done, with the server's reason."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as exc:
        raise KubeError(f"{doing} failed: {exc.status} {exc.reason}: {exc.body}") from exc
    except HTTPError as exc:
        raise KubeError(f"{doing} failed: the API server did not answer ({exc})") from exc


@contextmanager
def _api_client() -> Iterator[ApiClient]:
    client = api_client()
    try:
        yield client
    finally:
        client.close()


def _stop_real_node(state: Paths, echo: Echo, stopped: list[str]) -> None:
    """The real node goes first, while the API server can still take its Node object away."""
    apiserver = processes.owned_process(state.pid("kube-apiserver"), str(state.root))
    if apiserver is not None and kubeconfig_path().is_file():
        with _api_client() as api:
            stopped += kube_node.down(echo, api)
    else:
        stopped += kube_node.down(echo)


def _group_members(topology: edge.Topology, group: str, real_group: str | None) -> list[str]:
    members = topology.node_names(group) if group in topology.groups else []
    return [*members, kube_node.node_name(group)] if group == real_group else members


def _apply_cluster_objects(
    api: ApiClient, topology: edge.Topology, echo: Echo, *, real_group: str | None = None
) -> None:
    apply_manifests(api, edge.kwok_rbac())
    crds = [yaml.safe_load(path.read_text()) for path in sorted((infra_dir() / "crds").glob("*.yaml"))]
    apply_manifests(api, crds)
    _wait_crds_established(api, [crd["metadata"]["name"] for crd in crds])
    wanted = topology.all_nodes()
    ips = topology.internal_ips()
    kubelet_version = read_versions().kubernetes
    apply_manifests(api, [edge.edge_node(name, group, ips[name], kubelet_version) for name, group in wanted.items()])
    groups = list(dict.fromkeys([*topology.groups, *([real_group] if real_group else [])]))
    apply_manifests(api, [edge.node_group(group, _group_members(topology, group, real_group)) for group in groups])
    _delete_unwanted(api, topology, keep_group=real_group)
    echo(
        f"edge nodes: {len(wanted)} in node groups {', '.join(topology.groups)} "
        f"(label {edge.NODE_GROUP_LABEL}, taint {edge.EDGE_TAINT_KEY}:NoSchedule)"
    )


def _wait_crds_established(api: ApiClient, names: list[str], timeout: float = 60.0) -> None:
    from kubernetes.client import ApiextensionsV1Api

    extensions = ApiextensionsV1Api(api)
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            crd = extensions.read_custom_resource_definition(name)
            conditions = {c.type: c.status for c in (crd.status.conditions or [])}
            if conditions.get("Established") == "True":
                pending.discard(name)
        if pending:
            time.sleep(0.5)
    if pending:
        raise KubeError(f"CRDs not Established within {timeout:.0f} s: {', '.join(sorted(pending))}")


def _delete_unwanted(api: ApiClient, topology: edge.Topology, *, keep_group: str | None = None) -> None:
    """Nodes and NodeGroups an earlier `up --groups ...` made that the current topology does not have."""
    from kubernetes.client import CoreV1Api, CustomObjectsApi

    selector = "=".join(edge.MANAGED_BY_LABEL)
    wanted = topology.all_nodes()
    for node in CoreV1Api(api).list_node(label_selector=selector).items:
        if node.metadata.name not in wanted:
            CoreV1Api(api).delete_node(node.metadata.name)
    groups = CustomObjectsApi(api).list_cluster_custom_object(
        "apps.kubeedge.io", "v1alpha1", "nodegroups", label_selector=selector
    )
    for group in groups["items"]:
        if group["metadata"]["name"] not in (*topology.groups, keep_group):
            CustomObjectsApi(api).delete_cluster_custom_object(
                "apps.kubeedge.io", "v1alpha1", "nodegroups", group["metadata"]["name"]
            )


def _edge_nodes(api: ApiClient) -> list[NodeStatus]:
    from kubernetes.client import CoreV1Api
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        nodes = CoreV1Api(api).list_node(label_selector=edge.EDGE_ROLE_LABEL, _request_timeout=10).items
    except (ApiException, HTTPError) as exc:
        raise KubeError(f"listing nodes failed: {exc}") from exc
    return [
        NodeStatus(
            name=node.metadata.name,
            group=(node.metadata.labels or {}).get(edge.NODE_GROUP_LABEL, ""),
            ready=any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or [])),
            taints=tuple(f"{t.key}:{t.effect}" for t in (node.spec.taints or [])),
            simulated=KWOK_NODE_ANNOTATION[0] in (node.metadata.annotations or {}),
        )
        for node in sorted(nodes, key=lambda n: n.metadata.name)
    ]


def _wait_nodes_ready(api: ApiClient, topology: edge.Topology, echo: Echo) -> dict[str, bool]:
    """Until every simulated node is Ready and no longer carries the not-ready taint (schedulable)."""
    wanted = topology.all_nodes()
    deadline = time.monotonic() + NODES_READY_TIMEOUT
    while True:
        nodes = {n.name: n for n in _edge_nodes(api) if n.name in wanted}
        ready = {name: name in nodes and nodes[name].ready for name in wanted}
        schedulable = all(
            not any(t.startswith("node.kubernetes.io/not-ready") for t in nodes[name].taints)
            for name in wanted
            if name in nodes
        )
        if all(ready.values()) and schedulable:
            echo(f"edge nodes Ready: {', '.join(sorted(wanted))}")
            return ready
        if time.monotonic() > deadline:
            waiting = sorted(name for name, is_ready in ready.items() if not is_ready)
            raise KubeError(
                f"edge nodes not Ready within {NODES_READY_TIMEOUT:.0f} s: {', '.join(waiting) or 'not-ready taint'}; "
                f"see {paths().log('kwok')} and {paths().log('kube-controller-manager')}"
            )
        time.sleep(0.5)


def _write_node_group_status(
    api: ApiClient, topology: edge.Topology, ready: dict[str, bool], *, real_group: str | None = None
) -> None:
    from kubernetes.client import CustomObjectsApi

    custom = CustomObjectsApi(api)
    for group in dict.fromkeys([*topology.groups, *([real_group] if real_group else [])]):
        members = {name: ready.get(name, False) for name in _group_members(topology, group, real_group)}
        custom.patch_cluster_custom_object_status(
            "apps.kubeedge.io", "v1alpha1", "nodegroups", group, edge.node_group_status(group, members)
        )


def _wait_default_service_account(api: ApiClient, timeout: float = 60.0) -> None:
    """The controller manager's ServiceAccount controller has run: pods can be created in new namespaces."""
    from kubernetes.client import CoreV1Api
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            CoreV1Api(api).read_namespaced_service_account("default", "default")
            return
        except ApiException as exc:
            if exc.status != 404:
                raise KubeError(f"reading ServiceAccount default/default failed: {exc}") from exc
        time.sleep(0.5)
    raise KubeError(f"ServiceAccount default/default not created within {timeout:.0f} s: is the controller manager up?")


# --- the user's environment ---------------------------------------------------------------------------------


def _export_user_kubeconfig(state: Paths, ports: Ports, echo: Echo) -> None:
    target = kubeconfig.user_kubeconfig_path()
    if target is None:
        echo(f"KUBECONFIG is set, so it is left alone: export KUBECONFIG={kubeconfig_path()} to use this cluster")
        return
    server = f"https://{HOST}:{ports.apiserver}"
    kubeconfig.merge_context(target, kubeconfig.kubeconfig(server, state.pki, "admin"))
    echo(f'context "{kubeconfig.CONTEXT}" merged into {target} and made current (undone by `edgeloop kube down`)')


def _remove_user_kubeconfig(state: Paths, echo: Echo) -> None:
    target = kubeconfig.user_kubeconfig_path()
    saved_port = _saved_port(_load_state(state).get("ports", {}), "kube-apiserver")
    if target is None or saved_port is None or not target.is_file():
        return
    config = yaml.safe_load(target.read_text()) or {}
    ours = f"https://{HOST}:{saved_port}"
    servers = {c.get("name"): c.get("cluster", {}).get("server") for c in config.get("clusters") or []}
    if servers.get(kubeconfig.CONTEXT) == ours and kubeconfig.remove_context(target):
        echo(f'context "{kubeconfig.CONTEXT}" removed from {target}')


def _link_helm(binaries: Binaries, echo: Echo) -> None:
    """Put the pinned helm on the PATH of this virtualenv (where `edgeloop` itself is)."""
    if sys.prefix == sys.base_prefix:
        return
    link = Path(sysconfig.get_path("scripts")) / "helm"
    target = binaries.path("helm")
    if link.is_symlink() and link.resolve() == target.resolve():
        return
    if link.exists() and not link.is_symlink():
        echo(f"{link} exists and is not a link; not replacing it (the pinned helm is {target})")
        return
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    echo(f"helm {binaries.versions.helm}: {link} -> {target}")


# --- state ------------------------------------------------------------------------------------------------


@contextmanager
def _state_lock(state: Paths) -> Iterator[None]:
    """One `up`/`down` at a time per checkout (a test session beside a developer's shell)."""
    state.root.mkdir(parents=True, exist_ok=True)
    with (state.root / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _load_state(state: Paths) -> dict[str, Any]:
    path = state.root / "cluster.json"
    if not path.is_file():
        return {}
    loaded = json.loads(path.read_text())
    return loaded if isinstance(loaded, dict) else {}


def _save_state(state: Paths, ports: Ports, topology: edge.Topology, binaries: Binaries) -> None:
    record = {
        "ports": asdict(ports),
        "topology": {"groups": list(topology.groups), "nodes_per_group": topology.nodes_per_group},
        "bin_dir": str(binaries.directory),
        "kubernetes": binaries.versions.kubernetes,
    }
    (state.root / "cluster.json").write_text(json.dumps(record, indent=2) + "\n")


def _saved_topology(saved: dict[str, Any]) -> edge.Topology | None:
    topology = saved.get("topology")
    if not topology:
        return None
    return edge.Topology(tuple(topology["groups"]), int(topology["nodes_per_group"]))


def _saved_port(ports: dict[str, int], component: str) -> int | None:
    key = component.removeprefix("kube-").replace("-", "_")
    value = ports.get(key)
    return int(value) if value is not None else None


def _rss(proc: psutil.Process | None) -> int | None:
    if proc is None:
        return None
    with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        return int(proc.memory_info().rss)
    return None


def _tail(path: Path, lines: int = 25) -> str:
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


__all__ = [
    "COMPONENT_NAMES",
    "ClusterStatus",
    "ComponentStatus",
    "NodeStatus",
    "api_client",
    "down",
    "helm_path",
    "paths",
    "status",
    "up",
]
