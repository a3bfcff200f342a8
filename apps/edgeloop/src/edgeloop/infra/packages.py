"""Debian packages the local infrastructure needs, installed with apt-get when missing."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edgeloop.infra.errors import InfraError
from edgeloop.infra.process import running_as_root

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Requirement:
    """A program a component needs and the Debian package that provides it."""

    program: str
    package: str
    # Glob patterns of where the package puts the program when not on PATH (/usr/lib/postgresql/*/bin).
    locations: tuple[str, ...] = ()

    def present(self) -> bool:
        return find_program(self.program) is not None or any(glob.glob(pattern) for pattern in self.locations)


# Not a server: what the console's browser tests drive (services/console/tests, marker `browser`). `edgeloop infra up`
# installs them beside the servers' packages, so that `make test` on a fresh machine has them.
BROWSER_TEST_TOOLS: tuple[Requirement, ...] = (
    Requirement("chromium", "chromium"),
    Requirement("chromedriver", "chromium-driver"),
)


def find_program(program: str) -> Path | None:
    """A program on PATH, or in the sbin directories a non-root PATH often lacks (mosquitto lives in /usr/sbin)."""
    if found := shutil.which(program):
        return Path(found)
    for directory in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        candidate = Path(directory) / program
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def ensure_installed(requirements: Iterable[Requirement], echo: Echo) -> None:
    """Install, in one apt-get run, the packages of every requirement whose program is missing."""
    missing = sorted({req.package for req in requirements if not req.present()})
    if not missing:
        return
    command = f"apt-get install -y {' '.join(missing)}"
    if not running_as_root():
        raise InfraError(f"missing Debian packages {', '.join(missing)}; install them with `sudo {command}`")
    if shutil.which("apt-get") is None:
        raise InfraError(f"missing {', '.join(missing)} and there is no apt-get here; install them by hand")
    echo(f"installing {', '.join(missing)} (apt-get)...")
    result = _apt(["install", "-y", "--no-install-recommends", *missing])
    if result.returncode != 0:
        echo("apt-get install failed; refreshing the package lists (apt-get update) and trying again...")
        _apt(["update"])
        result = _apt(["install", "-y", "--no-install-recommends", *missing])
    if result.returncode != 0:
        raise InfraError(f"`{command}` failed:\n{_tail(result.stdout)}")


def ensure_test_tools(echo: Echo) -> None:
    """Install the browser the console's tests drive; a machine that cannot (not root) only hears how to."""
    try:
        ensure_installed(BROWSER_TEST_TOOLS, echo)
    except InfraError as exc:
        echo(f"browser tests will fail until chromium is installed: {exc}")


def _apt(arguments: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        ["apt-get", "-q", *arguments], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
