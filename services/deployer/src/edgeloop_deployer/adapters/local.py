"""The ``local`` target (standalone mode): the lite model server on this machine serves every version in its
model folder, so "deploying" a version means making sure it is AVAILABLE there before the gateway routes to it.

It asks the TF Serving status API, ``GET {url}/v1/models/{model}/versions/{version}``, which both the lite
server and ``tensorflow/serving`` answer.
"""

from __future__ import annotations

from typing import Any

import httpx

from edgeloop_deployer.service import RolloutObservation, TargetError, WorkloadPlan

_FAILED_STATES = {"END"}


class LocalModelServerTarget:
    name = "local"
    rolls_back = False  # nothing to re-apply: the previous version is still loaded and keeps serving

    def __init__(self, model_server_url: str, *, timeout_s: float = 5.0, http: httpx.AsyncClient | None = None) -> None:
        self.base_url = model_server_url.rstrip("/")
        self._http = http or httpx.AsyncClient(timeout=timeout_s)
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


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error") or response.text)
    except ValueError:
        return response.text[:200]
