"""SeaweedFS (Apache-2.0): the local S3-compatible blob store, ``weed mini`` built from source once per version.

``weed`` comes from the Go module proxy: ``go mod download`` fetches the pinned module and ``go build`` runs in
its own directory (``go install pkg@version`` refuses a module whose go.mod has replace directives, as SeaweedFS's
has). The binary is cached per user and version under ``~/.cache/edgeloop/seaweedfs-<version>/weed`` and never
rebuilt while it is there. ``weed mini`` runs master, volume server, filer and the S3 gateway in one process; the
S3 credentials are generated on the first start (``.edgeloop/seaweedfs/s3.json``, the server's identities) and
written as ``EDGELOOP_*`` settings to ``.edgeloop/seaweedfs/s3.env`` for the services and tests.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

from edgeloop.infra import process
from edgeloop.infra.component import Component, Echo
from edgeloop.infra.errors import InfraError
from edgeloop.infra.kafka import cache_root
from edgeloop.infra.packages import Requirement

MODULE = "github.com/seaweedfs/seaweedfs"
# A pseudo-version (SeaweedFS tags are not Go-module semver); its go.mod asks for Go >= 1.26.6.
VERSION = "v0.0.0-20261109003541-7506e5f91cd6"
BUCKET = "edgeloop-blobs"
REGION = "us-east-1"
GO_CANDIDATES = ("/usr/local/go/bin/go",)
PROVISION_TIMEOUT_S = 60.0


def weed_binary() -> Path:
    """Where the built ``weed`` of :data:`VERSION` lives (the per-user cache)."""
    return cache_root() / f"seaweedfs-{VERSION}" / "weed"


def find_go() -> Path | None:
    if found := shutil.which("go"):
        return Path(found)
    return next((Path(path) for path in GO_CANDIDATES if os.access(path, os.X_OK)), None)


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines (the format of ``s3.env``); {} when the file is absent."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


class SeaweedFS(Component):
    name = "seaweedfs"
    port = 8333  # the S3 gateway; the others below are SeaweedFS's usual ones
    master_port: ClassVar[int] = 9333
    volume_port: ClassVar[int] = 9340
    filer_port: ClassVar[int] = 8888
    # `weed mini` serves its admin server (gRPC for workers) even without the UI, on loopback.
    admin_port: ClassVar[int] = 12535
    stop_timeout_s = 20.0
    ready_timeout_s = 120.0

    @property
    def ports(self) -> tuple[int, ...]:
        http = (self.port, self.master_port, self.volume_port, self.filer_port, self.admin_port)
        return http + tuple(port + 10000 for port in http)  # each one's gRPC port

    @property
    def s3_config_file(self) -> Path:
        return self.home / "s3.json"

    @property
    def env_file(self) -> Path:
        """The settings a service (or a test) needs to use this store: ``set -a; . .edgeloop/seaweedfs/s3.env``."""
        return self.home / "s3.env"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.address}"

    def requirements(self) -> list[Requirement]:
        return []  # Go is not a Debian package here (Debian's is too old): prepare() says what to do without it

    def prepare(self, echo: Echo) -> None:
        self.build(echo)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_credentials(echo)

    def command(self) -> list[str]:
        return [
            str(weed_binary()),
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-s3.port={self.port}",
            f"-master.port={self.master_port}",
            f"-volume.port={self.volume_port}",
            f"-filer.port={self.filer_port}",
            f"-s3.config={self.s3_config_file}",
            # Only the S3 gateway: no WebDAV, admin UI, Iceberg or Lance listeners, and no reports home.
            "-webdav=false",
            "-admin.ui=false",
            f"-admin.port={self.admin_port}",
            "-admin.port.legacy=0",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ]

    def answers(self) -> bool:
        if not process.port_open(self.host, self.port):
            return False
        try:  # any S3 answer (an anonymous request is refused with 403) means the gateway serves
            with urllib.request.urlopen(f"{self.endpoint_url}/", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def provision(self, echo: Echo) -> None:
        """The bucket exists and a blob goes in and out (the filer and volume server may lag the gateway)."""
        from edgeloop_common.blobs.s3 import S3BlobStore
        from edgeloop_common.blobs.store import BlobStoreUnavailableError
        from edgeloop_common.settings import CommonSettings

        settings = CommonSettings.model_validate(
            {name.removeprefix("EDGELOOP_").lower(): value for name, value in read_env_file(self.env_file).items()}
        )
        deadline = time.monotonic() + PROVISION_TIMEOUT_S
        while True:
            try:
                store = S3BlobStore.from_settings(settings)
                store.get(store.put(b"edgeloop infra probe"))
                return
            except BlobStoreUnavailableError as exc:
                if time.monotonic() > deadline:
                    message = f"{self.name}: S3 did not store a blob within {PROVISION_TIMEOUT_S:.0f}s: {exc}"
                    raise InfraError(message) from exc
                time.sleep(0.5)

    def connection_hint(self) -> str:
        return f"{self.endpoint_url} (bucket {BUCKET}; settings in {self._shown(self.env_file)})"

    # -- the binary ---------------------------------------------------------------------------------

    def build(self, echo: Echo) -> None:
        """Build ``weed`` into the cache unless it is there (minutes of CPU: niced, once per version)."""
        target = weed_binary()
        if target.is_file():
            return
        go = find_go()
        if go is None:
            raise InfraError(
                f"{self.name}: `weed` is built from source with Go >= 1.26.6, and no `go` is on PATH or in "
                "/usr/local/go/bin; install Go, then run `edgeloop infra up` again"
            )
        echo(f"{self.name}: building weed {VERSION} with {go} (once per version; several minutes on 2 cores)...")
        started = time.monotonic()
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly"}
        scratch = target.parent.with_name(f".{target.parent.name}.{os.getpid()}.tmp")
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            # Outside any module (cwd: the scratch folder), so that only the pinned module is fetched.
            found = self._go([str(go), "mod", "download", "-json", f"{MODULE}@{VERSION}"], scratch, env)
            source = Path(json.loads(found)["Dir"])
            nice = ["nice", "-n", "10"] if shutil.which("nice") else []
            command = [*nice, str(go), "build", "-trimpath", "-ldflags=-s -w", "-o", str(scratch / "weed"), "./weed"]
            self._go(command, source, env)
            try:
                scratch.rename(target.parent)  # whole folder at once: a half-built binary is never found
            except OSError:
                if not target.is_file():  # not another build's result that got there first
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        size_mb = target.stat().st_size / 2**20
        echo(f"{self.name}: built weed in {time.monotonic() - started:.0f}s ({size_mb:.0f} MiB, {target})")

    def _go(self, command: list[str], cwd: Path, env: dict[str, str]) -> str:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
            raise InfraError(f"{self.name}: `{' '.join(command)}` failed (in {cwd}):\n{tail}")
        return result.stdout

    # -- credentials --------------------------------------------------------------------------------

    def _write_credentials(self, echo: Echo) -> None:
        """Generate this installation's S3 key pair once: the server's identities file and the clients' settings."""
        if self.s3_config_file.is_file() and self.env_file.is_file():
            return
        access_key = "EL" + secrets.token_hex(9).upper()
        secret_key = secrets.token_urlsafe(30)
        identities = {
            "identities": [
                {
                    "name": "edgeloop",
                    "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        settings = {
            "EDGELOOP_BLOB_STORE": "s3",
            "EDGELOOP_S3_ENDPOINT_URL": self.endpoint_url,
            "EDGELOOP_S3_BUCKET": BUCKET,
            "EDGELOOP_S3_REGION": REGION,
            "EDGELOOP_S3_ACCESS_KEY_ID": access_key,
            "EDGELOOP_S3_SECRET_ACCESS_KEY": secret_key,
        }
        self.home.mkdir(parents=True, exist_ok=True)
        _write_private(self.s3_config_file, json.dumps(identities, indent=2) + "\n")
        _write_private(self.env_file, "".join(f"{name}={value}\n" for name, value in settings.items()))
        echo(f"{self.name}: generated S3 credentials ({self._shown(self.env_file)})")


def _write_private(path: Path, text: str) -> None:
    """Owner-only from the first byte (secrets)."""
    temp = path.with_name(path.name + ".tmp")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    temp.replace(path)
