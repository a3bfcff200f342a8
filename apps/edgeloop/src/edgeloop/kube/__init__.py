"""``edgeloop kube``: a local Kubernetes control plane with simulated KubeEdge edge nodes (docs/kubernetes.md).

The CLI is :data:`app`. Tests and tools use :mod:`edgeloop.kube.cluster`
(``up()``, ``down()``, ``status()``, ``api_client()``, ``helm_path()``) and the edge
vocabulary below: the labels, taint and annotation a workload uses to target the
simulated KubeEdge nodes. The cluster module loads on first use, so ``edgeloop --help`` stays fast.
"""

from edgeloop.kube.cli import app
from edgeloop.kube.edge import (
    DEFAULT_GROUPS,
    EDGE_ROLE_LABEL,
    EDGE_TAINT_KEY,
    EDGE_TOLERATION,
    FAIL_READINESS_ANNOTATION,
    NODE_GROUP_LABEL,
    Topology,
    node_selector,
)
from edgeloop.kube.errors import KubeError

__all__ = [
    "DEFAULT_GROUPS",
    "EDGE_ROLE_LABEL",
    "EDGE_TAINT_KEY",
    "EDGE_TOLERATION",
    "FAIL_READINESS_ANNOTATION",
    "NODE_GROUP_LABEL",
    "KubeError",
    "Topology",
    "app",
    "node_selector",
]
