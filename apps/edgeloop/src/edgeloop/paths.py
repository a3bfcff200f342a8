"""Where EdgeLoop keeps its runtime state: ``.edgeloop/`` at the repository root (git-ignored)."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The repository root: ``EDGELOOP_HOME`` if set, else the nearest parent holding ``.git`` or ``Makefile``."""
    if home := os.environ.get("EDGELOOP_HOME"):
        return Path(home).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "libs" / "common").is_dir() and (candidate / "Makefile").is_file():
            return candidate
    package_root = Path(__file__).resolve().parents[4]
    if (package_root / "libs" / "common").is_dir():
        return package_root
    return here


def state_dir() -> Path:
    path = repo_root() / ".edgeloop"
    path.mkdir(parents=True, exist_ok=True)
    return path
