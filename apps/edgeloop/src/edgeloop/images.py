"""``edgeloop images``: the EdgeLoop image built locally, without Docker and without a registry (docs/kubernetes.md).

The image is what the repository's Dockerfile describes (every service and the ``edgeloop`` command; the chart
runs it with ``args: [<service>]``), built from Debian bookworm (``debootstrap --variant=minbase``, Debian's
python3 3.11) with ``umoci`` into an OCI layout under ``~/.cache/edgeloop/images``, in two layers:

* ``deps-<key>``: the Debian rootfs, a virtualenv at /opt/edgeloop with every third-party dependency (pinned by
  constraints.txt) and the numeric non-root user 10001; keyed by constraints.txt and the packages' pyproject.toml
  files, so it is rebuilt only when a dependency changes (pip's cache, kept beside it, makes that cheap);
* ``app-<key>``: the project's own packages on top (``pip install --no-deps``); keyed by their sources, so a
  code change costs one small layer, and an unchanged tree costs nothing.

``import_image`` streams one tag of the layout into a containerd (the real node's, ``edgeloop kube up
--real-node``) under the name and tag the chart uses (``helm/edgeloop/values.yaml`` ``global.image``).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from edgeloop.paths import repo_root

Echo = Callable[[str], None]

# Bump when the recipe below changes, so every cached layer is rebuilt.
RECIPE = "1"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# python3 is Debian's 3.11; ca-certificates for TLS to brokers and S3; libgomp1 for TensorFlow's and numpy's threads.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "libgomp1")
USER_ID = 10001
VENV = "/opt/edgeloop"
DATA_DIR = "/var/lib/edgeloop"
# What the Dockerfile copies: the shared library, every service, the command.
PACKAGE_DIRS = ("libs/common", "services/*", "apps/edgeloop")
SKIPPED_NAMES = frozenset({"__pycache__", "tests", ".pytest_cache", ".mypy_cache", ".ruff_cache", "node_modules"})


class ImageError(RuntimeError):
    """A build or import step failed; the message says which and why."""


@dataclass(frozen=True)
class ImageName:
    """A reference as the chart writes it (``edgeloop:0.1.0``) and as containerd stores it."""

    repository: str
    tag: str

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def base_name(self) -> str:
        """The fully qualified repository (docker.io/library/edgeloop), which is how the CRI looks an image up."""
        first = self.repository.split("/")[0]
        if "/" in self.repository and ("." in first or ":" in first or first == "localhost"):
            return self.repository
        if "/" in self.repository:
            return f"docker.io/{self.repository}"
        return f"docker.io/library/{self.repository}"

    @property
    def containerd_name(self) -> str:
        return f"{self.base_name}:{self.tag}"


@dataclass(frozen=True)
class BuiltImage:
    layout: Path
    tag: str  # the tag inside the OCI layout
    name: ImageName
    manifest_digest: str
    seconds: float
    cached: bool


def chart_image() -> ImageName:
    """The image the chart runs: ``global.image.repository`` and ``.tag`` of helm/edgeloop/values.yaml."""
    values = yaml.safe_load((repo_root() / "helm" / "edgeloop" / "values.yaml").read_text())
    image = values["global"]["image"]
    return ImageName(str(image["repository"]), str(image["tag"]))


def cache_root() -> Path:
    """``EDGELOOP_IMAGES_CACHE``, else ``$XDG_CACHE_HOME/edgeloop/images``, else ``~/.cache/edgeloop/images``."""
    if override := os.environ.get("EDGELOOP_IMAGES_CACHE"):
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "edgeloop" / "images"


# --- inputs and keys ------------------------------------------------------------------------------------------


def package_dirs(root: Path) -> list[Path]:
    found: list[Path] = []
    for pattern in PACKAGE_DIRS:
        found += sorted(path for path in root.glob(pattern) if (path / "pyproject.toml").is_file())
    return found


def _source_files(package: Path) -> Iterator[Path]:
    for directory, subdirs, files in os.walk(package):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_NAMES and not d.endswith(".egg-info"))
        for name in sorted(files):
            if not name.endswith((".pyc", ".pyo")):
                yield Path(directory) / name


def deps_key(root: Path) -> str:
    """What the dependency layer depends on: constraints.txt, every pyproject.toml, the Debian side, the recipe."""
    digest = hashlib.sha256(f"{RECIPE}\n{DEBIAN_SUITE}\n{BASE_PACKAGES}\n{USER_ID}\n".encode())
    digest.update((root / "constraints.txt").read_bytes())
    for package in package_dirs(root):
        digest.update(str(package.relative_to(root)).encode())
        digest.update((package / "pyproject.toml").read_bytes())
    return digest.hexdigest()[:12]


def app_key(root: Path) -> str:
    """What the application layer depends on: every file the packages are built from, and the layer below."""
    digest = hashlib.sha256(deps_key(root).encode())
    for package in package_dirs(root):
        for path in _source_files(package):
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _project_names(root: Path) -> list[str]:
    import tomllib

    return [tomllib.loads((p / "pyproject.toml").read_text())["project"]["name"] for p in package_dirs(root)]


# --- building -------------------------------------------------------------------------------------------------


def build(*, echo: Echo = print, root: Path | None = None) -> BuiltImage:
    """Build (or find cached) the EdgeLoop image of this checkout; returns its tag in the OCI layout."""
    started = time.monotonic()
    root = root or repo_root()
    _ensure_build_packages(echo)
    cache = cache_root()
    layout = cache / "oci"
    with _lock(cache / "lock", echo):
        _ensure_layout(layout)
        deps_tag = f"deps-{deps_key(root)}"
        app_tag = f"app-{app_key(root)}"
        cached = app_tag in layout_tags(layout)
        if not cached:
            bundle = cache / "bundles" / deps_tag
            if deps_tag not in layout_tags(layout):
                _build_deps(root, layout, deps_tag, bundle, cache, echo)
            elif not (bundle / "rootfs").is_dir():
                echo(f"unpacking the dependency layer {deps_tag} (its bundle was removed)...")
                shutil.rmtree(bundle, ignore_errors=True)
                _run(["umoci", "unpack", "--image", f"{layout}:{deps_tag}", str(bundle)], "umoci unpack")
            _build_app(root, layout, deps_tag, app_tag, bundle, cache, echo)
            _prune(layout, cache, keep={deps_tag, app_tag}, echo=echo)
        digest = manifest_digest(layout, app_tag)
    seconds = time.monotonic() - started
    echo(f"image {app_tag} ({digest[:19]}) {'cached' if cached else 'built'} in {seconds:.0f} s: {layout}")
    return BuiltImage(layout, app_tag, chart_image(), digest, seconds, cached)


def build_single_binary_image(binary: Path, target: str, *, echo: Echo = print) -> BuiltImage:
    """An image of one static binary as its entrypoint (the real node's pause), cached by the binary's hash."""
    started = time.monotonic()
    cache = cache_root()
    layout = cache / "oci"
    tag = f"{binary.name}-{hashlib.sha256(binary.read_bytes()).hexdigest()[:12]}"
    with _lock(cache / "lock", echo):
        _ensure_layout(layout)
        cached = tag in layout_tags(layout)
        if not cached:
            bundle = cache / "work" / tag
            shutil.rmtree(bundle, ignore_errors=True)
            bundle.parent.mkdir(parents=True, exist_ok=True)
            _run(["umoci", "new", "--image", f"{layout}:{tag}"], "umoci new")
            _run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)], "umoci unpack")
            shutil.copy2(binary, bundle / "rootfs" / target.lstrip("/"))
            _run(["umoci", "repack", "--image", f"{layout}:{tag}", str(bundle)], "umoci repack")
            config = ["umoci", "config", "--image", f"{layout}:{tag}", "--config.entrypoint", target]
            _run([*config, "--config.user", "65535:65535"], "umoci config")
            shutil.rmtree(bundle, ignore_errors=True)
        digest = manifest_digest(layout, tag)
    name = ImageName(f"edgeloop.local/{binary.name}", "1")
    return BuiltImage(layout, tag, name, digest, time.monotonic() - started, cached)


def _build_deps(root: Path, layout: Path, tag: str, bundle: Path, cache: Path, echo: Echo) -> None:
    echo(f"building the dependency layer {tag}: Debian {DEBIAN_SUITE} minbase, then pip (first time: ~10 min)...")
    # Built under a temporary tag, named only once complete: a failed build never looks cached.
    building = f"building-{tag}"
    rootfs = bundle / "rootfs"
    bootstrapped = bundle / "debootstrap.done"  # a failed pip step resumes after the (slow) debootstrap
    if not bootstrapped.is_file() or building not in layout_tags(layout):
        shutil.rmtree(bundle, ignore_errors=True)
        bundle.parent.mkdir(parents=True, exist_ok=True)
        if building in layout_tags(layout):
            _run(["umoci", "rm", "--image", f"{layout}:{building}"], "umoci rm")
        _run(["umoci", "new", "--image", f"{layout}:{building}"], "umoci new")
        _run(["umoci", "unpack", "--image", f"{layout}:{building}", str(bundle)], "umoci unpack")
        debootstrap = [
            *_nice(),
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            DEBIAN_SUITE,
            str(rootfs),
            DEBIAN_MIRROR,
        ]
        _run(debootstrap, "debootstrap", log=cache / "build.log")
        bootstrapped.touch()
    _copy_sources(root, rootfs / "src")
    packages = [f"/src/{p.relative_to(root)}" for p in package_dirs(root)]
    with _chroot_mounts(rootfs, cache / "pip"):
        _chroot(rootfs, ["python3", "-m", "venv", "--clear", VENV], cache)
        _chroot(rootfs, [f"{VENV}/bin/pip", "install", *_PIP_FLAGS, "-c", "/src/constraints.txt", *packages], cache)
        # The project's own packages come in the layer above; only their dependencies stay here.
        _chroot(rootfs, [f"{VENV}/bin/pip", "uninstall", "-y", *_project_names(root)], cache)
        if subprocess.run(["chroot", str(rootfs), "id", "edgeloop"], capture_output=True, check=False).returncode:
            _chroot(rootfs, ["useradd", "--system", "--uid", str(USER_ID), "--user-group", "--no-create-home",
                             "--home-dir", DATA_DIR, "edgeloop"], cache)  # fmt: skip
    shutil.rmtree(rootfs / "src")
    (rootfs / DATA_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    os.chown(rootfs / DATA_DIR.lstrip("/"), USER_ID, USER_ID)
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists", "root/.cache"):
        for path in (rootfs / leftover).glob("*"):
            if path.is_file():
                path.unlink()
            elif path.is_dir() and path.name not in ("partial", "pip"):
                shutil.rmtree(path)
    echo("  packing the dependency layer (umoci repack)...")
    repack = ["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:{building}", str(bundle)]
    _run([*_nice(), *repack], "umoci repack")
    config = [
        "umoci", "config", "--image", f"{layout}:{building}",
        "--config.user", str(USER_ID),
        "--config.entrypoint", f"{VENV}/bin/edgeloop",
        "--config.workingdir", DATA_DIR,
        "--config.env", f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--config.env", f"EDGELOOP_DATA_DIR={DATA_DIR}",
        "--config.env", "PYTHONUNBUFFERED=1",
        "--config.label", "org.opencontainers.image.source=edgeloop (built by `edgeloop images build`)",
    ]  # fmt: skip
    _run(config, "umoci config")
    _run(["umoci", "tag", "--image", f"{layout}:{building}", tag], "umoci tag")
    _run(["umoci", "rm", "--image", f"{layout}:{building}"], "umoci rm")


_PIP_FLAGS = ("--disable-pip-version-check", "--no-input", "--progress-bar", "off")


def _build_app(root: Path, layout: Path, deps_tag: str, app_tag: str, bundle: Path, cache: Path, echo: Echo) -> None:
    echo(f"building the application layer {app_tag} (pip install --no-deps of {len(package_dirs(root))} packages)...")
    rootfs = bundle / "rootfs"
    staging_inside = "/tmp/edgeloop-app"
    shutil.rmtree(rootfs / "src", ignore_errors=True)
    shutil.rmtree(rootfs / staging_inside.lstrip("/"), ignore_errors=True)
    _copy_sources(root, rootfs / "src")
    packages = [f"/src/{p.relative_to(root)}" for p in package_dirs(root)]
    try:
        with _chroot_mounts(rootfs, cache / "pip"):
            install = [f"{VENV}/bin/pip", "install", *_PIP_FLAGS, "--no-deps", "--no-warn-script-location"]
            _chroot(rootfs, [*install, "--root", staging_inside, *packages], cache)
        staged = cache / "work" / app_tag
        shutil.rmtree(staged, ignore_errors=True)
        staged.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(rootfs / staging_inside.lstrip("/"), staged)
    finally:
        shutil.rmtree(rootfs / "src", ignore_errors=True)
        shutil.rmtree(rootfs / staging_inside.lstrip("/"), ignore_errors=True)
    _run(["umoci", "tag", "--image", f"{layout}:{deps_tag}", app_tag], "umoci tag")
    _run(["umoci", "insert", "--image", f"{layout}:{app_tag}", str(staged / VENV.lstrip("/")), VENV], "umoci insert")
    shutil.rmtree(staged, ignore_errors=True)


def _copy_sources(root: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copy2(root / "constraints.txt", target / "constraints.txt")
    for package in package_dirs(root):
        for path in _source_files(package):
            destination = target / path.relative_to(root)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)


@contextmanager
def _chroot_mounts(rootfs: Path, pip_cache: Path) -> Iterator[None]:
    """/proc, /dev and pip's cache (kept outside the image) inside the rootfs while pip runs; never packed."""
    pip_cache.mkdir(parents=True, exist_ok=True)
    shutil.copy2("/etc/resolv.conf", rootfs / "etc" / "resolv.conf")  # PyPI by the host's resolver
    # PyPI through the host's trust store (it may hold a proxy's CA the image's Debian bundle lacks); build only.
    shutil.copy2(_host_ca_bundle(), rootfs / BUILD_CA.lstrip("/"))
    mounts = [
        (["-t", "proc", "proc"], rootfs / "proc"),
        (["--bind", "/dev"], rootfs / "dev"),
        (["--bind", str(pip_cache)], rootfs / "root" / ".cache" / "pip"),
    ]
    done: list[Path] = []
    try:
        for options, point in mounts:
            point.mkdir(parents=True, exist_ok=True)
            _run(["mount", *options, str(point)], f"mount {point}")
            done.append(point)
        yield
    finally:
        for point in reversed(done):
            if subprocess.run(["umount", str(point)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(point)], check=False)
        (rootfs / "etc" / "resolv.conf").write_text("")  # the runtime mounts the pod's own
        (rootfs / BUILD_CA.lstrip("/")).unlink(missing_ok=True)


BUILD_CA = "/tmp/edgeloop-build-ca.pem"
# pip settings of the host passed into the image's pip (an index mirror, a timeout); never a local path.
PIP_PASSTHROUGH = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT")


def _host_ca_bundle() -> str:
    import ssl

    candidates = (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), ssl.get_default_verify_paths().cafile)
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    return "/etc/ssl/certs/ca-certificates.crt"


def _chroot(rootfs: Path, argv: list[str], cache: Path) -> None:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PIP_ROOT_USER_ACTION": "ignore",
        "PIP_CERT": BUILD_CA,
        **{key: os.environ[key] for key in PIP_PASSTHROUGH if key in os.environ},
    }
    _run(
        [*_nice(), "chroot", str(rootfs), *argv],
        f"{argv[0]} {argv[1]} (in the image)",
        env=env,
        log=cache / "build.log",
    )


def _nice() -> list[str]:
    return ["nice", "-n", "10"] if shutil.which("nice") else []


def _run(argv: list[str], what: str, *, env: dict[str, str] | None = None, log: Path | None = None) -> str:
    """Run a step; a failure raises ImageError naming the step with the end of its output."""
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as out:
            out.write(f"\n=== {' '.join(argv)} ({time.strftime('%H:%M:%S')})\n")
            out.flush()
            logged = subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
        if logged.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            raise ImageError(f"{what} failed (exit {logged.returncode}); the end of {log}:\n{tail}")
        return ""
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImageError(f"{what} failed (exit {result.returncode}): {(result.stderr or result.stdout).strip()}")
    return result.stdout


# --- the OCI layout -------------------------------------------------------------------------------------------


def _ensure_layout(layout: Path) -> None:
    if not (layout / "index.json").is_file():
        layout.parent.mkdir(parents=True, exist_ok=True)
        _run(["umoci", "init", "--layout", str(layout)], "umoci init")


def _index(layout: Path) -> dict[str, str]:
    """Tag -> manifest digest, from the layout's index.json."""
    manifests = json.loads((layout / "index.json").read_text()).get("manifests") or []
    return {
        str(m["annotations"]["org.opencontainers.image.ref.name"]): str(m["digest"])
        for m in manifests
        if isinstance(m, dict) and "org.opencontainers.image.ref.name" in (m.get("annotations") or {})
    }


def layout_tags(layout: Path) -> set[str]:
    if not (layout / "index.json").is_file():
        return set()
    return set(_index(layout))


def manifest_digest(layout: Path, tag: str) -> str:
    digest = _index(layout).get(tag)
    if digest is None:
        raise ImageError(f"no tag {tag} in {layout}")
    return digest


def _blob(layout: Path, digest: str) -> Path:
    algorithm, value = digest.split(":", 1)
    return layout / "blobs" / algorithm / value


def _prune(layout: Path, cache: Path, *, keep: set[str], echo: Echo) -> None:
    """Drop the tags and bundles of earlier builds (a 2 GB bundle each), then unreferenced blobs."""
    for tag in layout_tags(layout) - keep:
        if tag.startswith(("deps-", "app-")):
            _run(["umoci", "rm", "--image", f"{layout}:{tag}"], "umoci rm")
    for bundle in (cache / "bundles").glob("*"):
        if bundle.name not in keep:
            echo(f"  removing the old bundle {bundle.name}")
            shutil.rmtree(bundle, ignore_errors=True)
    _run(["umoci", "gc", "--layout", str(layout)], "umoci gc")


def oci_archive(layout: Path, tag: str, ref_name: str) -> Iterator[bytes]:
    """An OCI archive (tar) of one tag, blob files streamed rather than copied: what ``ctr images import`` reads."""
    digest = manifest_digest(layout, tag)
    manifest_path = _blob(layout, digest)
    manifest = json.loads(manifest_path.read_text())
    blobs = [digest, manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
    descriptor = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest,
        "size": manifest_path.stat().st_size,
        "annotations": {"org.opencontainers.image.ref.name": ref_name},
    }
    index = {"schemaVersion": 2, "manifests": [descriptor]}
    pipe = _ChunkPipe()
    with tarfile.open(fileobj=pipe, mode="w|") as archive:
        for name, data in (
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", json.dumps(index).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
            yield from pipe.drain()
        for blob in dict.fromkeys(blobs):
            path = _blob(layout, blob)
            info = tarfile.TarInfo("blobs/" + blob.replace(":", "/"))
            info.size = path.stat().st_size
            with path.open("rb") as blob_file:
                archive.addfile(info, blob_file)
            yield from pipe.drain()
    yield from pipe.drain()


class _ChunkPipe(io.RawIOBase):
    """A write-only file that tarfile writes into and the generator above empties as it goes."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.chunks.append(bytes(data))
        return len(data)

    def drain(self) -> Iterable[bytes]:
        chunks, self.chunks = self.chunks, []
        return chunks


def containerd_digest(address: Path, name: str) -> str | None:
    """The manifest digest containerd (k8s.io namespace) has under ``name``, or None."""
    result = subprocess.run(
        ["ctr", "--address", str(address), "-n", "k8s.io", "images", "ls", f"name=={name}"],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in result.stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == name:
            return next((f for f in fields if f.startswith("sha256:")), None)
    return None


def import_image(layout: Path, tag: str, name: ImageName, address: Path, *, echo: Echo = print) -> bool:
    """Import one tag into the containerd at ``address`` as ``name``; False when it already had that manifest."""
    digest = manifest_digest(layout, tag)
    if containerd_digest(address, name.containerd_name) == digest:
        return False
    started = time.monotonic()
    command = [
        "ctr", "--address", str(address), "-n", "k8s.io", "images", "import",
        "--base-name", name.base_name, "--snapshotter", "overlayfs", "-",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdin is not None
    try:
        for chunk in oci_archive(layout, tag, name.tag):
            process.stdin.write(chunk)
    except BrokenPipeError:
        pass
    finally:
        process.stdin.close()
    output = process.stdout.read().decode(errors="replace") if process.stdout else ""
    if process.wait() != 0:
        raise ImageError(f"ctr images import of {name.reference} failed: {output.strip()}")
    if containerd_digest(address, name.containerd_name) != digest:
        raise ImageError(f"ctr images import did not store {name.containerd_name} ({digest}): {output.strip()}")
    echo(f"imported {name.reference} ({digest[:19]}) into {address} in {time.monotonic() - started:.0f} s")
    return True


@contextmanager
def _lock(path: Path, echo: Echo) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            echo(f"another process is building the image; waiting for it ({path})...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- the command ------------------------------------------------------------------------------------------------


def _ensure_build_packages(echo: Echo) -> None:
    """Debian's debootstrap and umoci, installed when missing (as `edgeloop infra up` installs its servers)."""
    from edgeloop.infra.errors import InfraError
    from edgeloop.infra.packages import Requirement, ensure_installed

    try:
        ensure_installed([Requirement("debootstrap", "debootstrap", ()), Requirement("umoci", "umoci", ())], echo)
    except InfraError as exc:
        raise ImageError(str(exc)) from exc
