"""Reference statistics from the model registry: ``GET /v1/models/{m}/versions/{v}`` -> ``reference_stats``.

A version's reference never changes once registered, so the service keeps what
it got; this client says None (and why, in the log) when there is nothing to
be had now: the registry is unreachable, does not know the version, or the
version has no (valid) ``reference_stats``.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import httpx
from edgeloop_common.reference_stats import ReferenceStats
from pydantic import ValidationError

log = logging.getLogger(__name__)


class RegistryReferences:
    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 5.0,
        client: httpx.AsyncClient | None = None,
        auth: httpx.Auth | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=timeout_s, auth=auth)
        self._owns_client = client is None

    async def reference_stats(self, model_name: str, version: int) -> ReferenceStats | None:
        url = f"{self.base_url}/v1/models/{quote(model_name, safe='')}/versions/{version}"
        try:
            response = await self._client.get(url)
        except httpx.HTTPError as exc:
            log.warning("registry unreachable for %s:%d (%s: %s)", model_name, version, type(exc).__name__, exc)
            return None
        if response.status_code != 200:
            log.warning("registry answered %d for %s:%d: %s", response.status_code, model_name, version, response.text)
            return None
        try:
            body = response.json()
        except ValueError:
            log.warning("registry's answer for %s:%d is not JSON", model_name, version)
            return None
        raw = body.get("reference_stats") if isinstance(body, dict) else None
        if not raw:
            log.warning("version %s:%d has no reference_stats in the registry", model_name, version)
            return None
        try:
            return ReferenceStats.model_validate(raw)
        except ValidationError as exc:
            log.warning("reference_stats of %s:%d are not valid: %s", model_name, version, exc)
            return None

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()


class NoReferences:
    """No registry configured: every version's reference is its first full window at each site."""

    async def reference_stats(self, model_name: str, version: int) -> ReferenceStats | None:
        return None

    async def close(self) -> None:
        return None
