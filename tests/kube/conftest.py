"""Fixtures for tests against the real Kubernetes API of ``edgeloop kube up``.

``kube_cluster`` brings the control plane up once per session (building it on the
first run on a machine, see docs/kubernetes.md) and, if this session started it,
stops it at the end; a control plane a developer already had running is reused and
left running. ``namespace`` gives each test its own namespace, deleted afterwards.
If the control plane cannot be built or started the test fails with the reason; it
is never skipped and never replaced by a mock.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest
from edgeloop import images
from edgeloop.kube import KubeError, cluster, node
from edgeloop.kube.layout import kubeconfig_path
from kube_helpers import KubeCluster, wait_for
from kubernetes import client


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    # Anything already running is the developer's: reuse it and leave it running afterwards.
    started_here = cluster.status(with_nodes=False).stopped
    try:
        status = cluster.up(echo=_progress)
    except KubeError as exc:
        pytest.fail(f"`edgeloop kube up` failed: {exc}", pytrace=False)
    if status.bin_dir is None:
        pytest.fail("`edgeloop kube up` recorded no binaries directory", pytrace=False)
    groups: dict[str, list[str]] = {}
    for each in status.nodes:
        if each.simulated:  # a real node (`up --real-node`, tests/kube/test_kube_real_node.py) is not counted
            groups.setdefault(each.group, []).append(each.name)
    # helm and kubectl on the PATH of the tests, pointed at this cluster.
    patch = pytest.MonkeyPatch()
    patch.setenv("KUBECONFIG", str(kubeconfig_path()))
    patch.setenv("PATH", f"{status.bin_dir}:{os.environ['PATH']}")
    yield KubeCluster(kubeconfig=kubeconfig_path(), bin_dir=status.bin_dir, groups=groups)
    patch.undo()
    if started_here:
        cluster.down(echo=_progress)


@pytest.fixture(scope="module")
def real_node(kube_cluster: KubeCluster) -> Iterator[str]:
    """The real node (kubelet + containerd) in the default node group; stopped after the module if it started it."""
    started_here = node.running_group() is None
    try:
        cluster.up(echo=print, real_node=node.DEFAULT_GROUP)
    except KubeError as exc:
        pytest.fail(f"`edgeloop kube up --real-node` failed: {exc}", pytrace=False)
    yield node.node_name(node.DEFAULT_GROUP)
    if started_here:
        with cluster.api_client() as api:
            node.down(print, api)


@pytest.fixture(scope="module")
def edgeloop_image(real_node: str) -> images.BuiltImage:
    """The EdgeLoop image (``edgeloop images build``, cached by content), imported into the real node."""
    try:
        built = images.build(echo=print)
        images.import_image(built.layout, built.tag, built.name, node.containerd_address(), echo=print)
    except images.ImageError as exc:
        pytest.fail(f"`edgeloop images build` failed: {exc}", pytrace=False)
    return built


@pytest.fixture(scope="session")
def edge_groups(kube_cluster: KubeCluster) -> list[str]:
    """The node groups, sorted; the tests need two, each with two nodes (the default topology)."""
    groups = sorted(kube_cluster.groups)
    if len(groups) < 2 or any(len(kube_cluster.groups[g]) < 2 for g in groups):
        pytest.fail(
            f"these tests need >= 2 node groups of >= 2 nodes, the cluster has {kube_cluster.groups}; "
            "run `edgeloop kube up --groups site-a,site-b --nodes-per-group 2`",
            pytrace=False,
        )
    return groups


@pytest.fixture(scope="session")
def kube_api(kube_cluster: KubeCluster) -> Iterator[client.ApiClient]:
    api = cluster.api_client()
    yield api
    api.close()


@pytest.fixture
def namespace(kube_api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, with its default ServiceAccount in place (so pods can be created)."""
    core = client.CoreV1Api(kube_api)
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"edgeloop.io/test": "1"})))
    wait_for(lambda: _service_account_exists(core, name), f"ServiceAccount default in namespace {name}")
    yield name
    core.delete_namespace(name)  # the namespace controller deletes what is in it; no need to wait


@pytest.fixture
def kubectl(kube_cluster: KubeCluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run kubectl (Debian's) against this cluster; check=False: tests look at the exit code themselves."""
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.fail("kubectl is not installed (Debian: apt-get install kubernetes-client)", pytrace=False)

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, f"--kubeconfig={kube_cluster.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env=kube_cluster.env(),
            check=False,
        )

    return run


def _service_account_exists(core: client.CoreV1Api, namespace: str) -> bool:
    return any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(namespace).items)


def _progress(message: str) -> None:
    print(f"[edgeloop kube] {message}", flush=True)  # shown with -s; the first build takes minutes
