"""Kubeconfig files: the admin's (``.edgeloop/kube/kubeconfig``), each component's, and the
``edgeloop`` context merged into the user's default kubeconfig, as kind and minikube do."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import yaml

from edgeloop.kube.pki import Pki

CONTEXT = "edgeloop"


def kubeconfig(server: str, pki: Pki, stem: str, *, name: str = CONTEXT) -> dict[str, Any]:
    """A kubeconfig for the client certificate ``stem``, certificates embedded so the file stands alone."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": _cluster(server, pki)}],
        "users": [{"name": f"{name}-{stem}", "user": _user(pki, stem)}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": f"{name}-{stem}"}}],
        "current-context": name,
        "preferences": {},
    }


def write(path: Path, config: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)  # it holds a private key


def user_kubeconfig_path() -> Path | None:
    """The file `kubectl` reads by default: ``~/.kube/config``; None when ``KUBECONFIG`` is set (the user chose)."""
    if os.environ.get("KUBECONFIG"):
        return None
    return Path.home() / ".kube" / "config"


def merge_context(target: Path, source: dict[str, Any]) -> None:
    """Put ``source``'s cluster, user and context into ``target`` (replacing same-named ones) and select it."""
    merged = _load(target)
    for section in ("clusters", "users", "contexts"):
        names = {entry["name"] for entry in source[section]}
        merged[section] = [e for e in merged.get(section) or [] if e.get("name") not in names] + source[section]
    merged["current-context"] = source["current-context"]
    write(target, merged)


def remove_context(target: Path, name: str = CONTEXT) -> bool:
    """Undo :func:`merge_context`; returns whether ``target`` held the context."""
    if not target.is_file():
        return False
    merged = _load(target)
    contexts = {e.get("name"): e for e in merged.get("contexts") or []}
    if name not in contexts:
        return False
    ours = contexts[name].get("context", {})
    merged["contexts"] = [e for e in merged["contexts"] if e.get("name") != name]
    merged["clusters"] = [e for e in merged.get("clusters") or [] if e.get("name") != ours.get("cluster")]
    merged["users"] = [e for e in merged.get("users") or [] if e.get("name") != ours.get("user")]
    if merged.get("current-context") == name:
        merged["current-context"] = ""
    if not (merged["contexts"] or merged["clusters"] or merged["users"]):
        target.unlink()  # nothing but ours was ever in it (`up` created it)
        return True
    write(target, merged)
    return True


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [], "contexts": [], "preferences": {}}
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} is not a kubeconfig (its top level is not a mapping)")
    return loaded


def _cluster(server: str, pki: Pki) -> dict[str, str]:
    return {"server": server, "certificate-authority-data": _b64(pki.ca_cert)}


def _user(pki: Pki, stem: str) -> dict[str, str]:
    return {"client-certificate-data": _b64(pki.cert(stem)), "client-key-data": _b64(pki.key(stem))}


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()
