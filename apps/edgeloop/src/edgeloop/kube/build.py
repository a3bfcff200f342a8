"""Building the control plane's binaries from source with Go, once per pin set.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are built from the
build module in ``infra/kube`` (k8s.io/kubernetes pinned, its staging modules
replaced by their published versions); KWOK and helm are ``go install``ed at their
pinned versions. The binaries go to ``~/.cache/edgeloop/kube/<kubernetes>-<key>/bin``
where ``key`` hashes go.mod, go.sum, versions.toml, the Go version and the build
recipe, so every checkout on the machine reuses them and a changed pin builds anew.
Go's own module and build caches (~/go/pkg/mod, ~/.cache/go-build) make a rebuild
after a pin change much cheaper than the first one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from edgeloop.kube.errors import KubeError
from edgeloop.kube.layout import PinnedVersions, cache_root, infra_dir, read_versions

# Bump when the way the binaries are built changes (flags, ldflags), so the cache key changes.
BUILD_RECIPE = "1"

Echo = Callable[[str], None]


@dataclass(frozen=True)
class GoTarget:
    """One binary: what to build and how long a first (cold-cache) build took on our 2 busy cores."""

    name: str
    package: str
    cold_minutes: int
    installed: bool = False  # `go install package@version` instead of `go build` in the build module


def targets(versions: PinnedVersions) -> tuple[GoTarget, ...]:
    # Ordered so shared Kubernetes packages are compiled once, by the first binary needing them.
    return (
        GoTarget("etcd", "go.etcd.io/etcd/server/v3", cold_minutes=3),
        GoTarget("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver", cold_minutes=8),
        GoTarget("kube-controller-manager", "k8s.io/kubernetes/cmd/kube-controller-manager", cold_minutes=2),
        GoTarget("kube-scheduler", "k8s.io/kubernetes/cmd/kube-scheduler", cold_minutes=1),
        # The real node (`edgeloop kube up --real-node`, node.py): its kubelet and kube-proxy, and the pause
        # program of its locally built sandbox image (infra/kube/pause: no registry is reachable).
        GoTarget("kubelet", "k8s.io/kubernetes/cmd/kubelet", cold_minutes=3),
        GoTarget("kube-proxy", "k8s.io/kubernetes/cmd/kube-proxy", cold_minutes=1),
        GoTarget("pause", "./pause", cold_minutes=1),
        GoTarget("edgeloop-dns", "./dns", cold_minutes=1),  # the real node's cluster DNS (infra/kube/dns)
        GoTarget("kwok", f"sigs.k8s.io/kwok/cmd/kwok@{versions.kwok}", cold_minutes=4, installed=True),
        GoTarget("helm", f"helm.sh/helm/v3/cmd/helm@{versions.helm}", cold_minutes=3, installed=True),
    )


@dataclass(frozen=True)
class Binaries:
    """The built binaries of one pin set."""

    directory: Path
    versions: PinnedVersions

    def path(self, name: str) -> Path:
        return self.directory / name


def find_go() -> Path:
    """``EDGELOOP_GO``, else ``go`` on PATH, else /usr/local/go/bin/go."""
    candidates = [os.environ.get("EDGELOOP_GO"), shutil.which("go"), "/usr/local/go/bin/go"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise KubeError(
        "Go is needed to build the Kubernetes control plane from source, and none was found "
        "(looked at $EDGELOOP_GO, `go` on PATH, /usr/local/go/bin/go). Install Go >= 1.24 from go.dev/dl."
    )


def go_version(go: Path) -> str:
    result = subprocess.run([str(go), "env", "GOVERSION"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise KubeError(f"`{go} env GOVERSION` failed: {result.stderr.strip()}")
    return result.stdout.strip()


def cache_key(go_release: str) -> str:
    """Hash of what the binaries depend on: the build module, the pinned versions (not the comments around
    them in versions.toml), the Go release and the build recipe."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((infra_dir() / name).read_bytes())
    digest.update(json.dumps(asdict(read_versions()), sort_keys=True).encode())
    digest.update(f"{go_release}\n{BUILD_RECIPE}".encode())
    return digest.hexdigest()[:12]


def binaries_location() -> Binaries:
    """Where the binaries of the current pins live (built or not); needs Go only to name the key."""
    versions = read_versions()
    key = cache_key(go_version(find_go()))
    return Binaries(cache_root() / f"{versions.kubernetes}-{key}" / "bin", versions)


def missing(binaries: Binaries) -> list[str]:
    return [t.name for t in targets(binaries.versions) if not binaries.path(t.name).is_file()]


def ensure_binaries(echo: Echo) -> Binaries:
    """Build whatever binary of the current pins is not in the cache yet; return where they all are."""
    go = find_go()
    binaries = binaries_location()
    if not missing(binaries):
        return binaries
    binaries.directory.mkdir(parents=True, exist_ok=True)
    with _build_lock(binaries.directory.parent / "build.lock", echo):
        for target in targets(binaries.versions):
            if binaries.path(target.name).is_file():
                continue
            _build_one(go, target, binaries, echo)
    return binaries


def _build_one(go: Path, target: GoTarget, binaries: Binaries, echo: Echo) -> None:
    versions = binaries.versions
    version = _target_version(target, versions)
    echo(
        f"building {target.name} {version} (first run on this machine: up to ~{target.cold_minutes} min "
        f"on 2 cores; later runs reuse {binaries.directory})..."
    )
    staging = binaries.directory.parent / "staging"
    staging.mkdir(exist_ok=True)
    log_file = binaries.directory.parent / "build.log"
    started = time.monotonic()
    with log_file.open("a") as log:
        log.write(f"\n=== {target.name} {version} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        log.flush()
        command, cwd, env = _go_command(go, target, versions, staging)
        result = subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise KubeError(
            f"building {target.name} failed (exit {result.returncode}); the end of {log_file}:\n{_tail(log_file)}"
        )
    os.replace(staging / target.name, binaries.path(target.name))  # atomic: a half-built binary is never "present"
    seconds = round(time.monotonic() - started)
    _record_build_time(binaries.directory.parent / "build-times.json", target.name, seconds)
    echo(f"  built {target.name} in {seconds // 60} min {seconds % 60} s")


def _go_command(
    go: Path, target: GoTarget, versions: PinnedVersions, staging: Path
) -> tuple[list[str], Path, dict[str, str]]:
    env = {
        **os.environ,
        "CGO_ENABLED": "0",  # static binaries, as Kubernetes releases its server components
        "GOTOOLCHAIN": "local",  # fail clearly rather than download another toolchain
        "GOWORK": "off",
        # Other engineers share this machine's cores: cap parallel compiles (override with EDGELOOP_KUBE_BUILD_JOBS).
        "GOFLAGS": f"-p={os.environ.get('EDGELOOP_KUBE_BUILD_JOBS', '2')} -buildvcs=false",
    }
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    if target.installed:
        env["GOBIN"] = str(staging)
        ldflags = _helm_ldflags(go, versions, env) if target.name == "helm" else "-s -w"
        command = [*nice, str(go), "install", "-trimpath", f"-ldflags={ldflags}", target.package]
        return command, staging, env
    ldflags = _kubernetes_ldflags(versions)
    output = str(staging / target.name)
    command = [*nice, str(go), "build", "-trimpath", f"-ldflags={ldflags}", "-o", output, target.package]
    return command, infra_dir(), env


def _kubernetes_ldflags(versions: PinnedVersions) -> str:
    """What Kubernetes' own build stamps in (hack/lib/version.sh): without it the server says v0.0.0."""
    major, minor = versions.kubernetes_minor
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={versions.kubernetes}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _helm_ldflags(go: Path, versions: PinnedVersions, env: dict[str, str]) -> str:
    """What helm's Makefile stamps in: its version, and the Kubernetes version of its client-go modules."""
    kube_major, kube_minor = _helm_client_go_minor(go, versions.helm, env)
    return " ".join(
        [
            "-s -w",
            f"-X helm.sh/helm/v3/internal/version.version={versions.helm}",
            "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
            f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor={kube_major}",
            f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={kube_minor}",
            f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor={kube_major}",
            f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={kube_minor}",
        ]
    )


def _helm_client_go_minor(go: Path, helm_version: str, env: dict[str, str]) -> tuple[str, str]:
    result = subprocess.run(
        [str(go), "mod", "download", "-json", f"helm.sh/helm/v3@{helm_version}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=cache_root(),
        check=False,
    )
    if result.returncode != 0:
        raise KubeError(f"downloading helm {helm_version} failed: {result.stdout.strip()} {result.stderr.strip()}")
    go_mod = Path(json.loads(result.stdout)["GoMod"]).read_text()
    match = re.search(r"^\s*k8s\.io/client-go v0\.(\d+)\.", go_mod, re.MULTILINE)
    if match is None:
        raise KubeError(f"helm {helm_version}'s go.mod names no k8s.io/client-go version")
    return "1", match.group(1)


def _target_version(target: GoTarget, versions: PinnedVersions) -> str:
    return {"etcd": versions.etcd, "kwok": versions.kwok, "helm": versions.helm}.get(target.name, versions.kubernetes)


@contextmanager
def _build_lock(path: Path, echo: Echo) -> Iterator[None]:
    """One build per pin set at a time, across processes (two checkouts, or CI beside a developer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            echo(f"another process is building the same binaries; waiting for it ({path})...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _record_build_time(path: Path, name: str, seconds: int) -> None:
    times = json.loads(path.read_text()) if path.is_file() else {}
    times[name] = seconds
    path.write_text(json.dumps(times, indent=2) + "\n")


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
