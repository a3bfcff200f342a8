"""The registry's HTTP API as a client (docs/learning-loop.md, "Registry HTTP API"): what a service that registers
and promotes versions calls — the trainer (image models) and the federated service (the failure model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx


class RegistryError(Exception):
    """The registry refused a request (4xx); the message carries its reason."""


class RegistryUnavailableError(RegistryError):
    """The registry could not be reached or answered 5xx."""


@dataclass(frozen=True)
class RegisteredVersion:
    model_name: str
    version: int
    artifact_uri: str
    metrics: dict[str, Any]


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    decision: str
    previous_version: int | None


PRODUCTION = "production"


class RegistryClient:
    """``client`` has the registry's base URL (``http://registry:8083``); the caller owns and closes it."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def production(self, model_name: str) -> RegisteredVersion | None:
        aliases = await self._get(f"/v1/models/{_segment(model_name)}/aliases")
        if aliases is None:
            return None
        entries = aliases.get("aliases", []) if isinstance(aliases, dict) else aliases
        version = next(
            (e["version"] for e in entries if e.get("alias") == PRODUCTION and e.get("node_group") is None), None
        )
        if version is None:
            return None
        return await self.get_version(model_name, int(version))

    async def latest_version(self, model_name: str) -> int | None:
        versions = await self._get(f"/v1/models/{_segment(model_name)}/versions")
        if versions is None:
            return None
        entries = versions.get("versions", []) if isinstance(versions, dict) else versions
        return max((int(entry["version"]) for entry in entries), default=None)

    async def get_version(self, model_name: str, version: int) -> RegisteredVersion | None:
        body = await self._get(f"/v1/models/{_segment(model_name)}/versions/{version}")
        return None if body is None else _version(model_name, body)

    async def register(self, model_name: str, body: dict[str, Any]) -> RegisteredVersion:
        answer = await self._send("POST", f"/v1/models/{_segment(model_name)}/versions", body)
        return _version(model_name, answer)

    async def promote(self, model_name: str, version: int, *, reason: str, actor: str) -> PromotionDecision:
        answer = await self._send(
            "POST",
            f"/v1/models/{_segment(model_name)}/promotions",
            {"version": version, "reason": reason, "actor": actor, "force": False},
        )
        return PromotionDecision(
            promoted=bool(answer["promoted"]),
            decision=str(answer.get("decision", "")),
            previous_version=answer.get("previous_version"),
        )

    async def _get(self, path: str) -> Any:
        """The JSON body, or None on 404."""
        try:
            response = await self.client.get(path)
        except httpx.HTTPError as exc:
            raise RegistryUnavailableError(f"registry unreachable at {self.client.base_url}: {_text(exc)}") from exc
        if response.status_code == httpx.codes.NOT_FOUND:
            return None
        _raise_for(response)
        return response.json()

    async def _send(self, method: str, path: str, body: dict[str, Any]) -> Any:
        try:
            response = await self.client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise RegistryUnavailableError(f"registry unreachable at {self.client.base_url}: {_text(exc)}") from exc
        _raise_for(response)
        return response.json()


def _version(model_name: str, body: dict[str, Any]) -> RegisteredVersion:
    return RegisteredVersion(
        model_name=body.get("model_name", model_name),
        version=int(body["version"]),
        artifact_uri=str(body["artifact_uri"]),
        metrics=body.get("metrics") or {},
    )


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    reason = _detail(response)
    where = f"{response.request.method} {response.request.url.path}"
    if response.status_code >= 500:
        raise RegistryUnavailableError(f"registry answered {response.status_code} to {where}: {reason}")
    raise RegistryError(f"registry refused {where} ({response.status_code}): {reason}")


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return detail if isinstance(detail, str) else str(detail)[:500]


def _segment(name: str) -> str:
    return quote(name, safe="")


def _text(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
