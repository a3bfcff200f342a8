"""Where ``edgeloop kube`` finds its pins and keeps its binaries and runtime state.

* pins: ``infra/kube/`` in the checkout (go.mod/go.sum of the build module, versions.toml);
* binaries: a per-user cache, ``~/.cache/edgeloop/kube/<kubernetes>-<key>/bin``, shared by every
  checkout on the machine and keyed by the pins and the Go toolchain, never in the repository;
* runtime state: ``<repo>/.edgeloop/kube/`` (certificates, etcd data, logs, kubeconfigs, pids).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from edgeloop.paths import repo_root, state_dir


@dataclass(frozen=True)
class PinnedVersions:
    """The versions in infra/kube/versions.toml."""

    kubernetes: str
    etcd: str
    kwok: str
    helm: str

    @property
    def kubernetes_minor(self) -> tuple[int, int]:
        major, minor = self.kubernetes.removeprefix("v").split(".")[:2]
        return int(major), int(minor)


def infra_dir() -> Path:
    """The pinned build module, CRDs and KWOK stages: ``infra/kube`` in this checkout."""
    return repo_root() / "infra" / "kube"


def read_versions() -> PinnedVersions:
    with (infra_dir() / "versions.toml").open("rb") as pins:
        data = tomllib.load(pins)
    return PinnedVersions(
        kubernetes=str(data["kubernetes"]),
        etcd=str(data["etcd"]),
        kwok=str(data["kwok"]),
        helm=str(data["helm"]),
    )


def cache_root() -> Path:
    """``EDGELOOP_KUBE_CACHE``, else ``$XDG_CACHE_HOME/edgeloop/kube``, else ``~/.cache/edgeloop/kube``."""
    if override := os.environ.get("EDGELOOP_KUBE_CACHE"):
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "edgeloop" / "kube"


def state_path() -> Path:
    """``<repo>/.edgeloop/kube``: everything a running control plane writes."""
    path = state_dir() / "kube"
    path.mkdir(parents=True, exist_ok=True)
    return path


def kubeconfig_path() -> Path:
    """The admin kubeconfig ``edgeloop kube up`` writes: ``.edgeloop/kube/kubeconfig``."""
    return state_path() / "kubeconfig"
