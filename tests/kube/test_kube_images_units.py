"""``edgeloop images``' pieces that need no cluster: names as containerd stores them, the cache keys, the OCI
archive it streams into ``ctr images import`` (a real umoci layout of a real binary), the node's configuration."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import yaml
from edgeloop import images
from edgeloop.kube import node
from edgeloop.paths import repo_root


@pytest.mark.parametrize(
    ("repository", "expected"),
    [
        ("edgeloop", "docker.io/library/edgeloop"),
        ("acme/edgeloop", "docker.io/acme/edgeloop"),
        ("registry.example.com/acme/edgeloop", "registry.example.com/acme/edgeloop"),
        ("localhost:5000/edgeloop", "localhost:5000/edgeloop"),
        ("edgeloop.local/pause", "edgeloop.local/pause"),
    ],
)
def test_image_names_are_qualified_as_the_cri_looks_them_up(repository: str, expected: str) -> None:
    assert images.ImageName(repository, "1.2").containerd_name == f"{expected}:1.2"


def test_the_image_is_the_one_the_chart_runs() -> None:
    values = yaml.safe_load((repo_root() / "helm" / "edgeloop" / "values.yaml").read_text())
    name = images.chart_image()
    assert name.reference == f"{values['global']['image']['repository']}:{values['global']['image']['tag']}"


def _tree(tmp_path: Path) -> Path:
    """The smallest checkout the keys read: constraints.txt and one package of each kind."""
    root = tmp_path / "repo"
    for package in ("libs/common", "services/alpha", "apps/edgeloop"):
        source = root / package / "src" / package.replace("/", "_")
        source.mkdir(parents=True)
        (root / package / "pyproject.toml").write_text(f'[project]\nname = "{package.replace("/", "-")}"\n')
        (source / "__init__.py").write_text("VALUE = 1\n")
    (root / "constraints.txt").write_text("numpy==2.1.3\n")
    return root


def test_a_source_change_rebuilds_only_the_application_layer(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    deps, app = images.deps_key(root), images.app_key(root)
    (root / "services/alpha/src/services_alpha/__init__.py").write_text("VALUE = 2\n")
    assert images.deps_key(root) == deps
    assert images.app_key(root) != app


def test_a_dependency_change_rebuilds_both_layers_and_caches_and_tests_do_not_count(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    deps, app = images.deps_key(root), images.app_key(root)
    (root / "services/alpha/tests").mkdir()
    (root / "services/alpha/tests/test_x.py").write_text("assert True\n")
    (root / "services/alpha/src/services_alpha/__pycache__").mkdir()
    (root / "services/alpha/src/services_alpha/__pycache__/x.pyc").write_bytes(b"\0")
    assert (images.deps_key(root), images.app_key(root)) == (deps, app)
    (root / "constraints.txt").write_text("numpy==2.2.0\n")
    assert images.deps_key(root) != deps
    assert images.app_key(root) != app


@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is installed by `edgeloop kube up --real-node`")
def test_the_archive_streamed_to_ctr_holds_one_named_manifest_and_its_blobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGELOOP_IMAGES_CACHE", str(tmp_path / "cache"))
    binary = tmp_path / "true"
    shutil.copy2(shutil.which("true") or "/bin/true", binary)
    built = images.build_single_binary_image(binary, "/true", echo=lambda _line: None)
    again = images.build_single_binary_image(binary, "/true", echo=lambda _line: None)
    assert again.cached and again.manifest_digest == built.manifest_digest

    stream = io.BytesIO(b"".join(images.oci_archive(built.layout, built.tag, "7")))
    with tarfile.open(fileobj=stream) as archive:
        _check_archive(archive, built, binary)


def _check_archive(archive: tarfile.TarFile, built: images.BuiltImage, binary: Path) -> None:
    index = json.load(archive.extractfile("index.json"))  # type: ignore[arg-type]
    [descriptor] = index["manifests"]
    assert descriptor["digest"] == built.manifest_digest
    assert descriptor["annotations"]["org.opencontainers.image.ref.name"] == "7"
    for member in archive.getmembers():
        if member.name.startswith("blobs/sha256/"):  # content-addressed: every blob is what its name says
            data = archive.extractfile(member).read()  # type: ignore[union-attr]
            assert hashlib.sha256(data).hexdigest() == member.name.rsplit("/", 1)[1]
    manifest = json.load(archive.extractfile("blobs/" + built.manifest_digest.replace(":", "/")))  # type: ignore[arg-type]
    config = json.load(archive.extractfile("blobs/" + manifest["config"]["digest"].replace(":", "/")))  # type: ignore[arg-type]
    assert config["config"]["Entrypoint"] == ["/true"]
    layer = archive.extractfile("blobs/" + manifest["layers"][0]["digest"].replace(":", "/"))
    with tarfile.open(fileobj=layer, mode="r:gz") as files:
        assert files.extractfile("true").read() == binary.read_bytes()  # type: ignore[union-attr]


def test_the_node_runs_with_what_this_machine_allows() -> None:
    """The settings the hybrid cgroup-v1 sandbox forced (docs/kubernetes.md "A real node")."""
    paths = node.NodePaths(Path("/x"))
    containerd = node.containerd_config(paths)
    assert "restrict_oom_score_adj = true" in containerd
    assert 'sandbox_image = "edgeloop.local/pause:1"' in containerd
    assert 'address = "/x/containerd/containerd.sock"' in containerd
    from edgeloop.kube.pki import Pki

    ports = {"kubelet": 1, "kubelet_healthz": 2, "kube_proxy_healthz": 3, "kube_proxy_metrics": 4}
    kubelet = node.kubelet_config(paths, Pki(Path("/x/pki")), ports, "g")
    assert (kubelet["cgroupDriver"], kubelet["failCgroupV1"], kubelet["oomScoreAdj"]) == ("cgroupfs", False, 0)
    assert kubelet["registerWithTaints"] == [{"key": "node-role.kubernetes.io/edge", "effect": "NoSchedule"}]


def test_the_cli_default_group_is_the_node_module_s() -> None:
    from edgeloop.kube import cli

    assert cli.DEFAULT_REAL_NODE_GROUP == node.DEFAULT_GROUP
