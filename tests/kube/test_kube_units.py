"""Unit tests of `edgeloop kube`'s pure parts (no control plane needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from edgeloop.kube import edge, kubeconfig
from edgeloop.kube.build import _kubernetes_ldflags
from edgeloop.kube.cluster import _choose_ports
from edgeloop.kube.layout import PinnedVersions, read_versions
from edgeloop.kube.pki import Pki


def test_the_default_topology_is_two_groups_of_two_kubeedge_nodes() -> None:
    topology = edge.Topology()

    nodes = topology.all_nodes()

    assert nodes == {
        "edge-site-a-0": "site-a",
        "edge-site-a-1": "site-a",
        "edge-site-b-0": "site-b",
        "edge-site-b-1": "site-b",
    }
    assert len(set(topology.internal_ips().values())) == 4
    node = edge.edge_node("edge-site-a-0", "site-a", "10.200.0.1", "v1.33.13")
    assert node["metadata"]["labels"][edge.NODE_GROUP_LABEL] == "site-a"
    assert node["metadata"]["labels"]["node-role.kubernetes.io/edge"] == ""
    assert node["spec"]["taints"] == [{"key": "node-role.kubernetes.io/edge", "effect": "NoSchedule"}]


def test_a_pod_bound_for_a_group_selects_its_label_and_tolerates_the_edge_taint() -> None:
    selector = edge.node_selector("site-b")

    assert selector == {"node-role.kubernetes.io/edge": "", "apps.kubeedge.io/belonging-to": "site-b"}
    assert edge.EDGE_TOLERATION == {"key": "node-role.kubernetes.io/edge", "operator": "Exists", "effect": "NoSchedule"}


def test_the_built_servers_report_the_pinned_kubernetes_version() -> None:
    flags = _kubernetes_ldflags(PinnedVersions(kubernetes="v1.33.13", etcd="v3.5.21", kwok="v0.8.0", helm="v3.22.0"))

    assert "-X k8s.io/component-base/version.gitVersion=v1.33.13" in flags
    assert "-X k8s.io/component-base/version.gitMinor=33" in flags


def test_versions_toml_agrees_with_the_build_module() -> None:
    versions = read_versions()
    go_mod = (Path(__file__).resolve().parents[2] / "infra" / "kube" / "go.mod").read_text()

    assert f"k8s.io/kubernetes {versions.kubernetes}" in go_mod
    assert f"go.etcd.io/etcd/server/v3 {versions.etcd}" in go_mod
    major, minor = versions.kubernetes_minor
    assert f"k8s.io/client-go => k8s.io/client-go v0.{minor}." in go_mod
    assert major == 1


def test_ports_prefer_the_last_ones_and_never_collide(monkeypatch: pytest.MonkeyPatch) -> None:
    taken_by_others = {6443, 12379}
    monkeypatch.setattr("edgeloop.processes.port_free", lambda port, host="": port not in taken_by_others)

    ports = _choose_ports({"kwok": 20247}, running=set())

    assert ports.kwok == 20247
    assert ports.apiserver not in taken_by_others
    assert ports.etcd not in taken_by_others
    chosen = [ports.etcd, ports.etcd_peer, ports.apiserver, ports.controller_manager, ports.scheduler, ports.kwok]
    assert len(set(chosen)) == len(chosen)


def test_the_user_kubeconfig_gains_and_loses_only_the_edgeloop_context(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    pki.ensure()
    user_config = tmp_path / "config"
    other = {"name": "prod", "cluster": {"server": "https://prod.example:6443"}}
    user_config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [other],
                "users": [{"name": "prod-admin", "user": {"token": "t"}}],
                "contexts": [{"name": "prod", "context": {"cluster": "prod", "user": "prod-admin"}}],
                "current-context": "prod",
            }
        )
    )

    kubeconfig.merge_context(user_config, kubeconfig.kubeconfig("https://127.0.0.1:6443", pki, "admin"))
    merged = yaml.safe_load(user_config.read_text())
    removed = kubeconfig.remove_context(user_config)
    restored = yaml.safe_load(user_config.read_text())

    assert merged["current-context"] == "edgeloop"
    assert {c["name"] for c in merged["contexts"]} == {"prod", "edgeloop"}
    assert removed
    assert restored["clusters"] == [other]
    assert [c["name"] for c in restored["contexts"]] == ["prod"]
    assert user_config.stat().st_mode & 0o077 == 0  # it holds a private key


def test_a_stopped_real_node_leaves_no_pod_network_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real node's pods' veths on the bridge, their `cni-*` namespaces and the IPAM leases go when the node
    stops: a later node that hands out the same address would otherwise share it with a dead pod's namespace.
    Real links and a real namespace on a bridge of the test's own."""
    import shutil
    import subprocess
    import types
    import uuid

    from edgeloop.kube import node

    if shutil.which("ip") is None:
        pytest.skip("no iproute2")
    if node.containerd_running():
        pytest.skip("a real node is running here: its pods' namespaces are not this test's to remove")
    suffix = uuid.uuid4().hex[:6]
    bridge, host_side, namespace = f"eltb{suffix}", f"eltv{suffix}", f"cni-edgeloop-test-{suffix}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    monkeypatch.setattr(node, "BRIDGE", bridge)
    ip("link", "add", bridge, "type", "bridge")
    try:
        ip("netns", "add", namespace)
        ip("link", "add", host_side, "type", "veth", "peer", "name", f"eltp{suffix}", "netns", namespace)
        ip("link", "set", host_side, "master", bridge)
        leases = tmp_path / "cni" / "ipam" / "edgeloop"
        leases.mkdir(parents=True)
        (leases / "10.85.0.6").write_text("a dead pod's lease")
        said: list[str] = []

        node._remove_pod_networks(types.SimpleNamespace(root=tmp_path), said.append)  # type: ignore[arg-type]

        links = subprocess.run(["ip", "-o", "link", "show", "master", bridge], capture_output=True, text=True)
        assert links.stdout.strip() == ""
        assert namespace not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not (tmp_path / "cni" / "ipam").exists()
        assert said and "1 pod network link(s)" in said[0]
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True)


def test_the_cni_plugins_are_found_by_their_files_not_by_a_bridge_command_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """iproute2's /usr/sbin/bridge on PATH made `kube up --real-node` skip installing the CNI plugins, and every
    pod then failed: 'failed to find plugin "loopback" in path [/usr/lib/cni]'."""
    from edgeloop.infra.packages import Requirement as InfraRequirement
    from edgeloop.kube import node

    for command in ("bridge", "ip"):
        fake = tmp_path / command
        fake.write_text("#!/bin/sh\n")
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    [cni] = [r for r in node.PACKAGES if r.package == "containernetworking-plugins"]
    missing = InfraRequirement(cni.program, cni.package, (str(tmp_path / "no-cni" / "loopback"),))
    assert not missing.present()  # a `bridge` command does not stand for the plugins
    there = InfraRequirement(cni.program, cni.package, (str(tmp_path / "bridge"),))
    assert there.present()  # the plugin's file does
    assert cni.location == str(node.CNI_BIN_DIR / "loopback")
