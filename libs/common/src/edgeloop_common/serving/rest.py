"""The TF Serving REST API as a :class:`ModelClient`, plus the ``:predict`` passthrough.

One ``httpx.AsyncClient`` (keep-alive connections) for everything. A REST
predict response does not say which version answered, so the client first
resolves the route (latest, version or label) to a version through the model's
metadata (which carries ``model_spec.version`` and the signature), caches it
for ``metadata_ttl_s``, and then calls that version explicitly: the version it
reports is the one that served. If that version has gone (404), it resolves
again once.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from edgeloop_common.serving._common import (
    TtlCache,
    choose_signature,
    scores_by_class,
    with_retries,
)
from edgeloop_common.serving.client import BatchPrediction, ModelSignature, SignatureFallback
from edgeloop_common.serving.errors import (
    ModelInputError,
    ModelNotFoundError,
    ModelResponseError,
    ModelServerUnavailableError,
)
from edgeloop_common.serving.route import ModelRoute

TRANSIENT_STATUS = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class ResolvedModel:
    version: int
    signature: ModelSignature


def route_path(route: ModelRoute) -> str:
    """``/v1/models/{m}``, ``.../versions/{v}`` or ``.../labels/{l}``."""
    path = f"/v1/models/{route.model_name}"
    if route.version is not None:
        return f"{path}/versions/{route.version}"
    if route.label is not None:
        return f"{path}/labels/{route.label}"
    return path


class TfServingRestClient:
    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 2.0,
        retries: int = 2,
        backoff_s: float = 0.2,
        metadata_ttl_s: float = 5.0,
        fallback: SignatureFallback | None = None,
        max_connections: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
        auth: httpx.Auth | None = None,
    ) -> None:
        """``base_url``: the TF Serving REST API (``http://host:8501``). ``retries`` of a transient failure per
        call, ``backoff_s`` before the first (doubling); a resolved version and signature are kept for
        ``metadata_ttl_s``. ``transport`` replaces the network (tests: ``httpx.MockTransport``)."""
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.fallback = fallback or SignatureFallback()
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            auth=auth,  # an EdgeLoop model server's API token (edgeloop_common.api_auth); TF Serving ignores it
        )
        self._resolved: TtlCache[ModelRoute, ResolvedModel] = TtlCache(metadata_ttl_s)
        self._versions: TtlCache[ModelRoute, int] = TtlCache(metadata_ttl_s)  # predict_tensors' resolved versions

    async def close(self) -> None:
        await self.http.aclose()

    async def classify(self, route: ModelRoute, images: Sequence[bytes]) -> BatchPrediction:
        for attempt in (1, 2):
            resolved = await self.resolve(route, refresh=attempt > 1)
            body = {
                "signature_name": self.fallback.signature_name,
                "inputs": {
                    resolved.signature.input_name: [{"b64": base64.b64encode(image).decode()} for image in images]
                },
            }
            path = f"/v1/models/{route.model_name}/versions/{resolved.version}:predict"
            try:
                answer = await self._json("POST", path, body)
            except ModelNotFoundError:
                if attempt == 2 or route.version is not None:
                    raise
                continue  # the resolved version was unloaded meanwhile: resolve again
            return BatchPrediction(
                model_name=route.model_name,
                model_version=resolved.version,
                scores=parse_predict_response(answer, resolved.signature),
            )
        raise AssertionError("unreachable")

    async def predict_tensors(self, route: ModelRoute, inputs: dict[str, Any]) -> tuple[int, Any]:
        """``:predict`` with named input tensors (a tabular model: ``{"features": [[...], ...]}``), no image
        signature involved; returns the version that served and the response's ``outputs`` (columnar). The
        route's version is resolved from the model's metadata and cached like ``classify``'s."""
        for attempt in (1, 2):
            cached = None if attempt > 1 else self._versions.get(route)
            if cached is None:
                metadata = await self._json("GET", f"{route_path(route)}/metadata")
                cached = _spec_version(metadata) or route.version or await self._latest_available(route)
                self._versions.put(route, cached)
            body = {"signature_name": self.fallback.signature_name, "inputs": _json_tensors(inputs)}
            try:
                answer = await self._json("POST", f"/v1/models/{route.model_name}/versions/{cached}:predict", body)
            except ModelNotFoundError:
                if attempt == 2 or route.version is not None:
                    raise
                continue  # the resolved version was unloaded meanwhile: resolve again
            if not isinstance(answer, dict) or "outputs" not in answer:
                raise ModelResponseError(f"predict response has no 'outputs' ({sorted(answer)})")
            return cached, answer["outputs"]
        raise AssertionError("unreachable")

    async def resolve(self, route: ModelRoute, *, refresh: bool = False) -> ResolvedModel:
        """The version the route stands for now, and its signature (cached for ``metadata_ttl_s``)."""
        cached = None if refresh else self._resolved.get(route)
        if cached is not None:
            return cached
        metadata = await self._json("GET", f"{route_path(route)}/metadata")
        version = _spec_version(metadata) or route.version or await self._latest_available(route)
        resolved = ResolvedModel(version=version, signature=self._signature(metadata, route))
        self._resolved.put(route, resolved)
        return resolved

    async def available(self, route: ModelRoute) -> bool:
        """True when the route has a version in state AVAILABLE (status endpoint)."""
        try:
            status = await self._json("GET", route_path(route), retry=False)
        except (ModelServerUnavailableError, ModelNotFoundError):
            return False
        return any(entry.get("state") == "AVAILABLE" for entry in status.get("model_version_status", []))

    async def forward(self, method: str, path: str, body: bytes | None) -> httpx.Response:
        """Pass a TF Serving REST request through unchanged (the ``:predict`` passthrough)."""
        try:
            return await self.http.request(
                method, path, content=body, headers={"content-type": "application/json"} if body else None
            )
        except httpx.TransportError as exc:
            raise ModelServerUnavailableError(f"model server {self.base_url} unreachable: {exc!r}") from exc

    async def _latest_available(self, route: ModelRoute) -> int:
        status = await self._json("GET", route_path(route))
        versions = [
            int(entry["version"])
            for entry in status.get("model_version_status", [])
            if entry.get("state") == "AVAILABLE"
        ]
        if not versions:
            raise ModelNotFoundError(f"model {route} has no AVAILABLE version")
        return max(versions)

    def _signature(self, metadata: dict[str, Any], route: ModelRoute) -> ModelSignature:
        signatures = metadata.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
        signature = signatures.get(self.fallback.signature_name)
        if signature is None:
            raise ModelResponseError(
                f"model {route} has no signature {self.fallback.signature_name!r} (has {sorted(signatures)})"
            )
        return choose_signature(
            _dtypes(signature.get("inputs", {})), _dtypes(signature.get("outputs", {})), self.fallback
        )

    async def _json(self, method: str, path: str, body: dict[str, Any] | None = None, *, retry: bool = True) -> Any:
        async def once() -> Any:
            try:
                response = await self.http.request(method, path, json=body)
            except httpx.TransportError as exc:
                raise ModelServerUnavailableError(f"model server {self.base_url} unreachable: {exc!r}") from exc
            return _checked(response, path)

        return await with_retries(
            once, retries=self.retries if retry else 0, backoff_s=self.backoff_s, what=f"{method} {path}"
        )


def _json_tensors(inputs: dict[str, Any]) -> dict[str, Any]:
    """Arrays as JSON lists; floats to six decimals (far below sensors' noise, and half the JSON of full float
    reprs: encoding the batch is most of a ``:predict``'s CPU on the caller's side)."""
    return {
        name: np.round(np.asarray(values, dtype=np.float64), 6).tolist() if isinstance(values, np.ndarray) else values
        for name, values in inputs.items()
    }


def _checked(response: httpx.Response, path: str) -> Any:
    if response.status_code == 200:
        try:
            return response.json()
        except json.JSONDecodeError as exc:
            raise ModelResponseError(f"model server answered {path} with non-JSON: {exc}") from exc
    reason = _error_text(response)
    if response.status_code in TRANSIENT_STATUS:
        raise ModelServerUnavailableError(f"model server answered HTTP {response.status_code} to {path}: {reason}")
    if response.status_code == 404:
        raise ModelNotFoundError(f"model server: {reason} ({path})")
    raise ModelInputError(f"model server rejected {path} with HTTP {response.status_code}: {reason}")


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except (json.JSONDecodeError, AttributeError):
        return response.text[:500]


def _spec_version(metadata: dict[str, Any]) -> int | None:
    version = metadata.get("model_spec", {}).get("version")
    return int(version) if version not in (None, "") else None


def _dtypes(tensors: dict[str, Any]) -> dict[str, str]:
    return {name: str(info.get("dtype", "")) for name, info in tensors.items()}


def parse_predict_response(answer: dict[str, Any], signature: ModelSignature) -> list[dict[str, float]]:
    """Read scores (and class names) from a columnar (``outputs``) or row (``predictions``) response."""
    if "outputs" in answer:
        outputs = answer["outputs"]
        if not isinstance(outputs, dict):  # a signature with one output answers with the bare tensor
            outputs = {signature.scores_output: outputs}
    elif "predictions" in answer:
        outputs = _columns(answer["predictions"], signature)
    else:
        raise ModelResponseError(f"predict response has neither 'outputs' nor 'predictions': {sorted(answer)}")
    if signature.scores_output not in outputs:
        raise ModelResponseError(f"predict response lacks output {signature.scores_output!r} ({sorted(outputs)})")
    classes = outputs.get(signature.classes_output) if signature.classes_output else None
    return scores_by_class(outputs[signature.scores_output], classes)


def _columns(predictions: list[Any], signature: ModelSignature) -> dict[str, list[Any]]:
    if predictions and isinstance(predictions[0], dict):
        return {name: [row[name] for row in predictions] for name in predictions[0]}
    return {signature.scores_output: predictions}
