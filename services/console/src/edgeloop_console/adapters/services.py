"""One HTTP client per service the console reads and asks; the only place that knows their paths.

Every call returns the decoded JSON or raises :class:`ServiceError` with the service's own reason (the
``detail`` of its error body) or why it could not be reached, so a page can show it instead of failing.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

from edgeloop_console.settings import Settings

SERVICES = ("ingest", "registry", "trainer", "drift", "deployer")


class ServiceError(Exception):
    """A service refused (``status`` is its HTTP status) or could not be reached (``status`` None)."""

    def __init__(self, service: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{service}: {reason}")
        self.service = service
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Image:
    data: bytes
    content_type: str
    etag: str | None


def _path(*parts: str | int) -> str:
    return "/".join(quote(str(part), safe="") for part in parts)


def _query(params: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the unset ones; booleans as the services read them."""
    return {
        k: ("true" if v else "false") if isinstance(v, bool) else v for k, v in params.items() if v not in (None, "")
    }


class ServiceClients:
    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        urls = {
            "ingest": settings.ingest_url,
            "registry": settings.registry_url,
            "trainer": settings.trainer_url,
            "drift": settings.drift_url,
            "deployer": settings.deployer_url,
        }
        self.clients = {
            name: httpx.AsyncClient(base_url=url, timeout=settings.request_timeout_s, transport=transport)
            for name, url in urls.items()
        }
        self.headers: dict[str, str] = {}

    def as_user(self, api_token: str) -> ServiceClients:
        """The same clients (and connections), each call carrying ``api_token``: the services enforce its role."""
        view = copy.copy(self)
        view.headers = {"Authorization": f"Bearer {api_token}"} if api_token else {}
        return view

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()

    async def call(self, service: str, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._send(service, method, path, **kwargs)
        return response.json() if response.content else None

    async def _send(self, service: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.clients[service].request(method, path, headers=self.headers, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(service, f"not reachable ({exc.__class__.__name__}: {exc})") from exc
        if response.status_code >= 400:
            raise ServiceError(service, _reason(response), response.status_code)
        return response

    # -- ingest ------------------------------------------------------------------------------------------------

    async def samples(self, **filters: Any) -> dict[str, Any]:
        return await self.call("ingest", "GET", "/v1/samples", params=_query(filters))  # type: ignore[no-any-return]

    async def sample(self, sample_id: str) -> dict[str, Any]:
        return await self.call("ingest", "GET", "/v1/samples/" + _path(sample_id))  # type: ignore[no-any-return]

    async def sample_image(self, sample_id: str) -> Image:
        response = await self._send("ingest", "GET", "/v1/samples/" + _path(sample_id, "image"))
        return Image(response.content, response.headers.get("content-type", "image/jpeg"), response.headers.get("etag"))

    async def labeling_queue(self, *, site_id: str | None, limit: int, after: str | None) -> dict[str, Any]:
        params = _query({"site_id": site_id, "limit": limit, "after": after})
        return await self.call("ingest", "GET", "/v1/labeling/queue", params=params)  # type: ignore[no-any-return]

    async def labeling_queue_count(self, *, site_id: str | None) -> int:
        answer = await self.call("ingest", "GET", "/v1/labeling/queue/count", params=_query({"site_id": site_id}))
        return int(answer["waiting"])

    async def activity(self, *, hours: int, bucket_s: int) -> dict[str, Any]:
        """Pictures, labels and right answers per site and time bucket over the last ``hours`` (ingest counts)."""
        params = {"since": _hours_ago(hours), "bucket_s": bucket_s}
        return await self.call("ingest", "GET", "/v1/stats/activity", params=params)  # type: ignore[no-any-return]

    async def dead_letters(self, *, limit: int = 200) -> dict[str, Any]:
        """The newest dead letters of every service, kept by ingest (``GET /v1/dead-letters``)."""
        return await self.call("ingest", "GET", "/v1/dead-letters", params={"limit": limit})  # type: ignore[no-any-return]

    async def label(self, sample_id: str, label: str, labeled_by: str) -> dict[str, Any]:
        body = {"label": label, "labeled_by": labeled_by}
        return await self.call("ingest", "PUT", f"/v1/samples/{_path(sample_id)}/label", json=body)  # type: ignore[no-any-return]

    async def devices(self, *, site_id: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        params = _query({"site_id": site_id, "limit": limit})
        return await self.call("ingest", "GET", "/v1/devices", params=params)  # type: ignore[no-any-return]

    async def capture(self, site_id: str, device_id: str, requested_by: str) -> dict[str, Any]:
        path = f"/v1/devices/{_path(site_id, device_id)}/capture"
        return await self.call("ingest", "POST", path, json={"requested_by": requested_by})  # type: ignore[no-any-return]

    # -- registry ----------------------------------------------------------------------------------------------

    async def models(self) -> list[dict[str, Any]]:
        return await self.call("registry", "GET", "/v1/models")  # type: ignore[no-any-return]

    async def versions(self, model: str) -> list[dict[str, Any]]:
        return await self.call("registry", "GET", f"/v1/models/{_path(model)}/versions")  # type: ignore[no-any-return]

    async def aliases(self, model: str) -> list[dict[str, Any]]:
        return await self.call("registry", "GET", f"/v1/models/{_path(model)}/aliases")  # type: ignore[no-any-return]

    async def promote(self, model: str, version: int, *, reason: str, actor: str) -> dict[str, Any]:
        body = {"version": version, "reason": reason, "actor": actor}
        return await self.call("registry", "POST", f"/v1/models/{_path(model)}/promotions", json=body)  # type: ignore[no-any-return]

    async def roll_back(self, model: str, *, reason: str, actor: str) -> dict[str, Any]:
        body = {"reason": reason, "actor": actor}
        return await self.call("registry", "POST", f"/v1/models/{_path(model)}/rollback", json=body)  # type: ignore[no-any-return]

    # -- deployer ----------------------------------------------------------------------------------------------

    async def deployments(self) -> list[dict[str, Any]]:
        answer = await self.call("deployer", "GET", "/v1/deployments")
        return answer["deployments"]  # type: ignore[no-any-return]

    async def deploy(self, model: str, version: int, node_group: str, *, reason: str) -> dict[str, Any]:
        body = {"model_name": model, "version": version, "node_group": node_group, "reason": reason}
        return await self.call("deployer", "POST", "/v1/deployments", json=body)  # type: ignore[no-any-return]

    async def delete_deployment(self, model: str, node_group: str) -> dict[str, Any]:
        return await self.call("deployer", "DELETE", "/v1/deployments/" + _path(model, node_group))  # type: ignore[no-any-return]

    async def roll_back_deployment(self, model: str, node_group: str, *, reason: str) -> dict[str, Any]:
        path = f"/v1/deployments/{_path(model, node_group)}/rollback"
        return await self.call("deployer", "POST", path, json={"reason": reason})  # type: ignore[no-any-return]

    # -- drift and trainer -------------------------------------------------------------------------------------

    async def drift(self, *, alarms_limit: int = 50) -> dict[str, Any]:
        params = {"alarms_limit": alarms_limit}
        return await self.call("drift", "GET", "/v1/drift", params=params)  # type: ignore[no-any-return]

    async def trainings(self, *, limit: int = 20) -> list[dict[str, Any]]:
        answer = await self.call("trainer", "GET", "/v1/trainings", params={"limit": limit})
        return answer["trainings"]  # type: ignore[no-any-return]


def _hours_ago(hours: int) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours)).isoformat()


def _reason(response: httpx.Response) -> str:
    """The service's ``detail`` (a string, or FastAPI's list of validation errors), else the start of the body."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):
        detail = "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail)
    text = str(detail) if detail else response.text[:300] or response.reason_phrase
    return f"HTTP {response.status_code}: {text}"
