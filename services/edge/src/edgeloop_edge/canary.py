"""The site's canary, learned from the deployer: ``GET {deployer}/v1/deployments/{model}/{site}/canary``, polled in
the background every ``poll_s`` (docs/edge.md, "Canary rollouts").

While the canary is ``watching`` with a model server and a weight above 0, :meth:`CanaryWatcher.split_for` names the
canary for a sample in its share (:func:`edgeloop_common.events.in_canary_share` of the sample id, as the gateway
and the deployer compute it); the agent asks the canary's server (TF Serving REST, the canary's version) and falls
back to the group's server when it fails. ``split_for`` only reads what the last poll learned: inference never
waits for the deployer.

A 404 (no canary ever ran here) or any other stage of the canary is "no canary". A deployer that cannot be asked
(unreachable, 5xx, an answer that is not a canary) changes nothing: the agent keeps what it learned last (at start:
no canary), as a gateway keeps the split it was told until the next DeploymentUpdated, so a deployer's restart
does not take the canary's share away from it. Each change and each new kind of failure is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from urllib.parse import quote

import httpx
from edgeloop_common.events import in_canary_share
from edgeloop_common.serving import ModelRoute, TfServingRestClient
from pydantic import BaseModel, ConfigDict, ValidationError

from edgeloop_edge.metrics import EdgeMetrics

log = logging.getLogger(__name__)

WATCHING = "watching"


class DeployerCanary(BaseModel):
    """What the agent reads of the deployer's canary (its ``CanaryOut``; the rest is ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: int
    stable_version: int
    weight: float
    status: str
    endpoint: str | None = None


@dataclass(frozen=True)
class SiteCanary:
    """A canary taking ``weight`` of the site's samples, served by ``version`` at ``endpoint``."""

    version: int
    weight: float
    endpoint: str


@dataclass(frozen=True)
class CanarySplit:
    """Where one sample in the canary's share goes."""

    canary: SiteCanary
    route: ModelRoute
    client: TfServingRestClient


class CanaryWatcher:
    def __init__(
        self,
        *,
        deployer_url: str,
        model_name: str,
        site_id: str,
        metrics: EdgeMetrics,
        poll_s: float = 2.0,
        timeout_s: float = 5.0,
        model_timeout_s: float = 5.0,
        metadata_ttl_s: float = 2.0,
        auth: httpx.Auth | None = None,
    ) -> None:
        self.deployer_url = deployer_url.rstrip("/")
        self.model_name = model_name
        self.site_id = site_id
        self.metrics = metrics
        self.poll_s = poll_s
        self.model_timeout_s = model_timeout_s
        self.metadata_ttl_s = metadata_ttl_s
        self.auth = auth
        self.current: SiteCanary | None = None
        self.last_error = ""
        self._http = httpx.AsyncClient(timeout=timeout_s, auth=auth)
        # One client per canary endpoint, kept until stop: an answer under way never meets a closed client.
        self._clients: dict[str, TfServingRestClient] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        model, site = quote(self.model_name, safe=""), quote(self.site_id, safe="")
        return f"{self.deployer_url}/v1/deployments/{model}/{site}/canary"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="edge-canary-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.aclose()
        for client in self._clients.values():
            await client.close()

    def split_for(self, sample_id: str) -> CanarySplit | None:
        """The canary, when there is one and ``sample_id`` is in its share; None: the group's server answers."""
        canary = self.current
        if canary is None or not in_canary_share(sample_id, canary.weight):
            return None
        client = self._clients.get(canary.endpoint)
        if client is None:
            # The canary asks once (no retries): a failure is answered by the group's server at once.
            client = TfServingRestClient(
                canary.endpoint,
                timeout_s=self.model_timeout_s,
                retries=0,
                metadata_ttl_s=self.metadata_ttl_s,
                auth=self.auth,
            )
            self._clients[canary.endpoint] = client
        return CanarySplit(canary, ModelRoute(self.model_name, version=canary.version), client)

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.poll_s)

    async def refresh(self) -> None:
        """Ask the deployer once and take up what it says."""
        try:
            response = await self._http.get(self.url)
        except httpx.HTTPError as exc:
            self._unanswered(f"deployer unreachable: {str(exc) or type(exc).__name__}")
            return
        if response.status_code == 404:  # no canary of the model ever ran at this site (or no such group)
            self._answered(None)
            return
        if response.status_code != 200:
            self._unanswered(f"deployer answered HTTP {response.status_code}: {response.text[:200]}")
            return
        try:
            told = DeployerCanary.model_validate_json(response.content)
        except ValidationError as exc:
            self._unanswered(f"deployer's answer is not a canary: {exc.error_count()} errors, {exc.errors()[0]['msg']}")
            return
        if told.status == WATCHING and told.endpoint and told.weight > 0.0:
            self._answered(SiteCanary(told.version, told.weight, told.endpoint))
        else:  # deploying (not ready yet), promoting (passed) or over: the group's server answers everything
            self._answered(None)

    def _answered(self, canary: SiteCanary | None) -> None:
        if self.last_error:
            log.info("deployer %s answers again", self.deployer_url)
            self.last_error = ""
        if canary == self.current:
            return
        if canary is None:
            log.info("site %s: no canary of %s (was %s)", self.site_id, self.model_name, self.current)
        else:
            log.info(
                "site %s: canary of %s version %d at %s takes %.0f%% of the samples",
                self.site_id,
                self.model_name,
                canary.version,
                canary.endpoint,
                canary.weight * 100,
            )
        self.current = canary
        self.metrics.canary_weight.set(canary.weight if canary else 0.0)

    def _unanswered(self, reason: str) -> None:
        if not self.last_error:
            kept = f"keeping the canary {self.current}" if self.current else "no canary"
            log.warning("cannot ask the deployer for the site's canary (%s); %s until it answers", reason, kept)
        self.last_error = reason
        self.metrics.deployer_failures.inc()
