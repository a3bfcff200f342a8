"""The ``local`` target (standalone mode): lite model servers on this machine, asked through the TF Serving
status API (``GET {url}/v1/models/{model}[/versions/{version}]``), which both the lite server and
``tensorflow/serving`` answer.

Two shapes:

* :class:`LocalModelServerTarget` — one model server serves every node group from the trainer's model folder
  (every version in it, as its version policy says), so "deploying" a version means waiting until it is
  AVAILABLE there before the gateway routes to it. Nothing to re-apply on a rollback.
* :class:`NodeGroupModelServersTarget` — one model server per node group, each with a folder of its own,
  ``<models_root>/<node_group>/<model>/<version>``. Applying a version links the trainer's version folder
  (``<model_base>/<model>/<version>``) into the group's folder, atomically, and removes the links of newer
  versions, so the group's server (version policy ``latest``) serves exactly that version. A rollback applies
  the previous version the same way: its link stays or comes back, the newer one goes, and the server goes back
  to it. This is what an edge site's model server looks like in standalone mode. With ``canary_servers``, each
  group also has a canary model server, serving the one version linked into ``<canary_models_root>/<node_group>/``
  while a canary runs there (docs/deployer.md, "Canary rollouts").
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from edgeloop_deployer.service import MODEL_NAME_PATTERN, RolloutObservation, TargetError, WorkloadPlan

log = logging.getLogger(__name__)

_FAILED_STATES = {"END"}
# A version the server holds, or is still letting go of: a newer one of these means the group does not serve
# the planned version yet (a request for the latest version would still reach the newer one).
_HELD_STATES = {"LOADING", "AVAILABLE", "UNLOADING"}
_STAGING_MARKS = (".tmp-", ".removing-")


class LocalModelServerTarget:
    name = "local"
    rolls_back = False  # nothing to re-apply: the previous version is still loaded and keeps serving
    # The one server serves every version: a canary is the candidate there, asked for by version (its "server" is
    # the same one), and there is nothing to remove afterwards.
    supports_canary = True

    def __init__(
        self,
        model_server_url: str,
        *,
        timeout_s: float = 5.0,
        http: httpx.AsyncClient | None = None,
        auth: httpx.Auth | None = None,
    ) -> None:
        self.base_url = model_server_url.rstrip("/")
        self._http = http or httpx.AsyncClient(timeout=timeout_s, auth=auth)
        self._owns_http = http is None

    async def apply(self, plan: WorkloadPlan) -> None:
        """Nothing to change: the server picks new version folders up by itself (its version policy decides)."""

    async def observe(self, plan: WorkloadPlan) -> RolloutObservation:
        url = f"{self.base_url}/v1/models/{plan.model_name}/versions/{plan.version}"
        try:
            response = await self._http.get(url)
        except httpx.HTTPError as exc:
            raise TargetError(f"the model server at {self.base_url} is unreachable: {exc}") from exc
        if response.status_code == 404:
            return RolloutObservation("progressing", f"the model server does not serve it yet: {_error(response)}")
        if response.status_code != 200:
            raise TargetError(f"the model server answered {response.status_code}: {_error(response)}")
        return _observation(plan.version, response.json())

    async def delete(self, model_name: str, node_group: str) -> bool:
        return False  # the local server's folder is the trainer's: nothing of ours to remove

    def endpoint(self, model_name: str, node_group: str) -> str:
        return self.base_url  # the one server serves every group

    async def delete_canary(self, model_name: str, node_group: str) -> bool:
        return False  # the candidate stays loaded, as every version of the folder does

    def canary_endpoint(self, model_name: str, node_group: str) -> str:
        return self.base_url

    async def ready(self) -> bool:
        """The model server answers HTTP (any status: a probe model does not exist)."""
        try:
            await self._http.get(f"{self.base_url}/v1/models/edgeloop-readiness-probe")
        except httpx.HTTPError:
            return False
        return True

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()


class NodeGroupModelServersTarget:
    """A lite model server per node group, each serving the versions linked into its own model folder."""

    name = "local"
    rolls_back = True  # applying the previous version removes the newer link: the group's server goes back to it

    def __init__(
        self,
        servers: Mapping[str, str],
        *,
        models_root: Path,
        model_base: Path,
        timeout_s: float = 5.0,
        http: httpx.AsyncClient | None = None,
        auth: httpx.Auth | None = None,
        canary_servers: Mapping[str, str] | None = None,
        canary_models_root: Path | None = None,
    ) -> None:
        if not servers:
            raise ValueError("at least one node group server is needed")
        self.servers = {group: url.rstrip("/") for group, url in servers.items()}
        self.models_root = models_root
        self.model_base = model_base
        self.canary_servers = {group: url.rstrip("/") for group, url in (canary_servers or {}).items()}
        self.canary_models_root = canary_models_root or models_root.with_name(f"{models_root.name}-canary")
        self.supports_canary = bool(self.canary_servers)
        self._http = http or httpx.AsyncClient(timeout=timeout_s, auth=auth)
        self._owns_http = http is None

    def group_folder(self, model_name: str, node_group: str, *, canary: bool = False) -> Path:
        """``<models_root>/<node_group>/<model>``: the version folders the group's server serves (its canary's: under
        ``canary_models_root``)."""
        if not MODEL_NAME_PATTERN.match(model_name):
            raise TargetError(f"invalid model name {model_name!r}")
        self._server(node_group, canary=canary)
        return (self.canary_models_root if canary else self.models_root) / node_group / model_name

    # --- the port ---

    async def apply(self, plan: WorkloadPlan) -> None:
        """Link ``<model_base>/<model>/<version>`` into the group's folder and unlink every newer version (the
        canary's folder: every other version, it serves the candidate alone)."""
        folder = self.group_folder(plan.model_name, plan.node_group, canary=plan.canary)
        source = self.model_base / plan.model_name / str(plan.version)
        if not _is_saved_model(source):
            raise TargetError(f"version {plan.version} of {plan.model_name} is not in the model base ({source})")
        try:
            removed = await asyncio.to_thread(_serve_only_up_to, source, folder, plan.version, alone=plan.canary)
        except OSError as exc:
            raise TargetError(f"linking {source} into {folder} failed: {exc}") from exc
        if removed:
            log.info("%s in %s: unlinked version(s) %s", plan.model_name, plan.node_group, removed)

    async def observe(self, plan: WorkloadPlan) -> RolloutObservation:
        server = self._server(plan.node_group, canary=plan.canary)
        try:
            response = await self._http.get(f"{server}/v1/models/{plan.model_name}")
        except httpx.HTTPError as exc:
            raise TargetError(f"the model server of {plan.node_group} at {server} is unreachable: {exc}") from exc
        if response.status_code == 404:
            return RolloutObservation(
                "progressing", f"the model server of {plan.node_group} does not serve it yet: {_error(response)}"
            )
        if response.status_code != 200:
            raise TargetError(
                f"the model server of {plan.node_group} answered {response.status_code}: {_error(response)}"
            )
        return _group_observation(plan, response.json())

    async def delete(self, model_name: str, node_group: str) -> bool:
        """Unlink every version of the model from the group's folder: its server stops serving the model."""
        folder = self.group_folder(model_name, node_group)
        try:
            removed = await asyncio.to_thread(_remove_versions, folder, above=None)
        except OSError as exc:
            raise TargetError(f"removing the versions in {folder} failed: {exc}") from exc
        return bool(removed)

    def endpoint(self, model_name: str, node_group: str) -> str | None:
        return self.servers.get(node_group)

    async def delete_canary(self, model_name: str, node_group: str) -> bool:
        """Unlink the candidate from the canary's folder: the canary server unloads it."""
        if node_group not in self.canary_servers:
            return False
        folder = self.group_folder(model_name, node_group, canary=True)
        try:
            return bool(await asyncio.to_thread(_remove_versions, folder, above=None))
        except OSError as exc:
            raise TargetError(f"removing the canary's versions in {folder} failed: {exc}") from exc

    def canary_endpoint(self, model_name: str, node_group: str) -> str | None:
        return self.canary_servers.get(node_group)

    async def ready(self) -> bool:
        """Every group's model server answers HTTP (any status: a probe model does not exist)."""
        try:
            await asyncio.gather(
                *(self._http.get(f"{url}/v1/models/edgeloop-readiness-probe") for url in self.servers.values())
            )
        except httpx.HTTPError:
            return False
        return True

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    def _server(self, node_group: str, *, canary: bool = False) -> str:
        server = (self.canary_servers if canary else self.servers).get(node_group)
        if server is None:
            kind = "canary model server" if canary else "model server"
            raise TargetError(f"no {kind} is configured for node group {node_group!r}")
        return server


# --- the group's folder (run in a thread) ---------------------------------------------------------------------


def _is_saved_model(folder: Path) -> bool:
    return (folder / "saved_model.pb").is_file() or (folder / "saved_model.pbtxt").is_file()


def _serve_only_up_to(source: Path, folder: Path, version: int, *, alone: bool = False) -> list[int]:
    """Make ``folder/<version>`` the trained version and remove the newer versions (``alone``: every other version);
    returns those removed.

    The link appears under its final name in one rename, so the model server never scans a half-made version;
    older versions stay (the server keeps serving the current one until the new one is AVAILABLE).
    """
    folder.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder)
    final = folder / str(version)
    target = source.resolve()
    if final.is_symlink() and Path(os.readlink(final)) != target:
        final.unlink()  # a link to another place (the model base moved): linked again below
    if not final.is_symlink() and not final.exists():
        staging = folder / f".{version}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            os.symlink(target, staging, target_is_directory=True)
        except (OSError, NotImplementedError) as exc:  # a file system without symlinks: a copy instead
            log.info("cannot symlink into %s (%s); copying version %d", folder, exc, version)
            shutil.copytree(target, staging)
        try:
            os.replace(staging, final)
        except OSError:
            _discard(staging)
            raise
    return _remove_versions(folder, above=version, keep=version if alone else None)


def _remove_versions(folder: Path, *, above: int | None, keep: int | None = None) -> list[int]:
    """Remove the version entries of ``folder`` (those newer than ``above``, or all, but ``keep``); returns their
    numbers."""
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if not entry.name.isdigit() or int(entry.name) == keep:
            continue
        if keep is not None or above is None or int(entry.name) > above:
            _discard(entry)
            removed.append(int(entry.name))
    return removed


def _discard(path: Path) -> None:
    """Remove a link at once; a copied folder is first renamed away (gone for the server in one step)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    doomed = path.with_name(f".{path.name}.removing-{uuid.uuid4().hex[:8]}")
    path.rename(doomed)
    shutil.rmtree(doomed)


def _remove_leftovers(folder: Path) -> None:
    """Staging names an interrupted apply or removal left behind (ours by their name)."""
    for entry in folder.iterdir():
        if entry.name.startswith(".") and any(mark in entry.name for mark in _STAGING_MARKS):
            if entry.is_symlink() or not entry.is_dir():
                entry.unlink(missing_ok=True)
            else:
                shutil.rmtree(entry, ignore_errors=True)


# --- reading the status API -----------------------------------------------------------------------------------


def _observation(version: int, body: dict[str, Any]) -> RolloutObservation:
    statuses = body.get("model_version_status") or []
    mine = next((s for s in statuses if str(s.get("version")) == str(version)), None)
    if mine is None:
        return RolloutObservation("progressing", f"version {version} not in the status answer yet")
    state = mine.get("state", "UNKNOWN")
    error = (mine.get("status") or {}).get("error_message") or ""
    if state == "AVAILABLE":
        return RolloutObservation("ready", f"version {version} AVAILABLE on the local model server")
    if state in _FAILED_STATES or error:
        return RolloutObservation("failed", f"version {version} is {state} on the model server: {error or 'unloaded'}")
    return RolloutObservation("progressing", f"version {version} is {state}")


def _group_observation(plan: WorkloadPlan, body: dict[str, Any]) -> RolloutObservation:
    """Ready when the planned version is AVAILABLE and no newer one is still held by the group's server."""
    statuses = {str(s.get("version")): s for s in body.get("model_version_status") or []}
    where = f"the model server of {plan.node_group}"
    mine = statuses.get(str(plan.version))
    if mine is None:
        return RolloutObservation("progressing", f"version {plan.version} not in the status answer of {where} yet")
    state = mine.get("state", "UNKNOWN")
    error = (mine.get("status") or {}).get("error_message") or ""
    if error:
        return RolloutObservation("failed", f"version {plan.version} is {state} on {where}: {error}")
    if state in _FAILED_STATES:
        # Unloaded earlier (a newer version replaced it): the server loads it again once it sees the folder alone.
        return RolloutObservation("progressing", f"version {plan.version} is {state} on {where}; waiting for a reload")
    if state != "AVAILABLE":
        return RolloutObservation("progressing", f"version {plan.version} is {state} on {where}")
    newer = sorted((int(v), s.get("state")) for v, s in statuses.items() if v.isdigit() and int(v) > plan.version)
    held = [f"{version} {held_state}" for version, held_state in newer if held_state in _HELD_STATES]
    if held:
        return RolloutObservation(
            "progressing", f"version {plan.version} AVAILABLE on {where}, newer still there: {', '.join(held)}"
        )
    return RolloutObservation("ready", f"version {plan.version} AVAILABLE on {where}")


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error") or response.text)
    except ValueError:
        return response.text[:200]
