"""The simulated KubeEdge edge: node groups, their nodes, and the labels, taint and
annotation a workload uses to target them (public: tests and the deployer import these).

A KubeEdge edge node (``keadm join``) carries the role labels
``node-role.kubernetes.io/edge=""`` and ``node-role.kubernetes.io/agent=""`` and the
taint ``node-role.kubernetes.io/edge:NoSchedule``; KubeEdge's NodeGroup controller
labels each member of a group ``apps.kubeedge.io/belonging-to=<group>``. The
simulated nodes carry exactly these, and KWOK (annotation ``kwok.x-k8s.io/node=fake``)
plays their edged: they report Ready and run the pods scheduled on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeloop.kube.components import KWOK_NODE_ANNOTATION

EDGE_ROLE_LABEL = "node-role.kubernetes.io/edge"
AGENT_ROLE_LABEL = "node-role.kubernetes.io/agent"
NODE_GROUP_LABEL = "apps.kubeedge.io/belonging-to"
EDGE_TAINT_KEY = EDGE_ROLE_LABEL
MANAGED_BY_LABEL = ("app.kubernetes.io/managed-by", "edgeloop-kube")
# Documented in infra/kube/kwok/stages.yaml: a pod with this annotation set to "true" runs but never becomes Ready.
FAIL_READINESS_ANNOTATION = "edgeloop.io/fail-readiness"

DEFAULT_GROUPS = ("site-a", "site-b")
DEFAULT_NODES_PER_GROUP = 2

# What a pod spec needs to run on an edge node (of one group, with node_selector(group)).
EDGE_TOLERATION: dict[str, str] = {"key": EDGE_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}


def node_selector(group: str | None = None) -> dict[str, str]:
    """The nodeSelector of a pod bound for the edge: any edge node, or only those of ``group``."""
    selector = {EDGE_ROLE_LABEL: ""}
    if group is not None:
        selector[NODE_GROUP_LABEL] = group
    return selector


@dataclass(frozen=True)
class Topology:
    """Which node groups exist and how many nodes each has."""

    groups: tuple[str, ...] = DEFAULT_GROUPS
    nodes_per_group: int = DEFAULT_NODES_PER_GROUP

    def node_names(self, group: str) -> list[str]:
        return [f"edge-{group}-{index}" for index in range(self.nodes_per_group)]

    def all_nodes(self) -> dict[str, str]:
        """Node name -> its group."""
        return {name: group for group in self.groups for name in self.node_names(group)}

    def internal_ips(self) -> dict[str, str]:
        """Node name -> the InternalIP it reports: 10.200.<group index>.<node index + 1>."""
        return {
            name: f"10.200.{group_index}.{node_index + 1}"
            for group_index, group in enumerate(self.groups)
            for node_index, name in enumerate(self.node_names(group))
        }


# What a simulated node reports about itself when it registers, as edged does (KWOK keeps it).
NODE_CAPACITY = {"cpu": "4", "memory": "8Gi", "pods": "110"}


def edge_node(name: str, group: str, internal_ip: str, kubelet_version: str) -> dict[str, Any]:
    kwok_key, kwok_value = KWOK_NODE_ANNOTATION
    managed_key, managed_value = MANAGED_BY_LABEL
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                EDGE_ROLE_LABEL: "",
                AGENT_ROLE_LABEL: "",
                NODE_GROUP_LABEL: group,
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                managed_key: managed_value,
            },
            "annotations": {kwok_key: kwok_value, "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": [{"key": EDGE_TAINT_KEY, "effect": "NoSchedule"}]},
        # Status is taken from a create (a kubelet registers this way) and ignored on later applies.
        "status": {
            "addresses": [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}],
            "capacity": NODE_CAPACITY,
            "allocatable": NODE_CAPACITY,
            "nodeInfo": {
                "kubeletVersion": kubelet_version,
                "operatingSystem": "linux",
                "architecture": "amd64",
                "osImage": "EdgeLoop simulated KubeEdge edge node (KWOK)",
            },
        },
    }


def node_group(name: str, members: list[str]) -> dict[str, Any]:
    managed_key, managed_value = MANAGED_BY_LABEL
    return {
        "apiVersion": "apps.kubeedge.io/v1alpha1",
        "kind": "NodeGroup",
        "metadata": {"name": name, "labels": {managed_key: managed_value}},
        "spec": {"nodes": members},
    }


def node_group_status(name: str, ready: dict[str, bool]) -> dict[str, Any]:
    """The status KubeEdge's NodeGroup controller would write for these member nodes."""
    return {
        "apiVersion": "apps.kubeedge.io/v1alpha1",
        "kind": "NodeGroup",
        "metadata": {"name": name},
        "status": {
            "nodeStatuses": [
                {
                    "nodeName": node,
                    "readyStatus": "Ready" if is_ready else "NotReady",
                    "selectionStatus": "Succeeded",
                }
                for node, is_ready in sorted(ready.items())
            ]
        },
    }


RBAC_GROUP = "rbac.authorization.k8s.io"
# The user KWOK's client certificate names (CN), see pki.py.
KWOK_USER = "edgeloop:kwok-controller"


def kwok_rbac() -> list[dict[str, Any]]:
    """What KWOK needs to act as the edged of every simulated node (after KWOK's own ClusterRole)."""
    rules = [
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch", "update", "get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["nodes/status", "pods/status"], "verbs": ["patch", "update"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch", "update", "delete"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["create", "get", "list", "watch", "patch", "update"],
        },
    ]
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": KWOK_USER},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": KWOK_USER},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": KWOK_USER},
            "subjects": [{"apiGroup": RBAC_GROUP, "kind": "User", "name": KWOK_USER}],
        },
    ]
