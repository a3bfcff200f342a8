"""TF Serving's REST API (``/v1/models/...``), on the serving core.

Paths are matched with TF Serving's own expressions, so the same URLs work
and the same ones fail: ``GET /v1/models/{m}[/versions/{v}|/labels/{l}][/metadata]``
and ``POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict|:classify|:regress``. Errors are
``{"error": "..."}`` with TF Serving's HTTP status for the error code.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from edgeloop_model_server import examples, protocol, tensors
from edgeloop_model_server.errors import Code, ServingError, invalid_argument
from edgeloop_model_server.metrics import ServerMetrics
from edgeloop_model_server.service import ModelService

_SPEC = r"(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)" + _SPEC + r":(classify|regress|predict)", re.IGNORECASE)
STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?" + _SPEC + r"(?:/(metadata))?", re.IGNORECASE)


def _json(body: dict[str, Any]) -> Response:
    return Response(json.dumps(body), media_type="application/json")


def _version(text: str | None) -> int | None:
    return int(text) if text else None


def rest_router(service: ModelService, metrics: ServerMetrics) -> APIRouter:
    router = APIRouter(tags=["TF Serving REST API"])

    async def predict(name: str, version: int | None, label: str | None, body: bytes) -> Response:
        document = tensors.parse_body(body)
        signature_name = tensors.signature_name(document)
        async with service.lease(name, version, label) as lease:
            signature = lease.servable.signature(signature_name)
            inputs, request_format = tensors.request_inputs(document, signature)
            outputs = await service.run(lease, signature_name, inputs)
        return _json(tensors.response_body(outputs, request_format))

    async def classify_or_regress(
        kind: str, name: str, version: int | None, label: str | None, body: bytes
    ) -> Response:
        document = tensors.parse_body(body)
        signature_name = tensors.signature_name(document)
        serialized = examples.examples_from_json(document)
        if kind == "classify":
            _, classified = await examples.classify(service, name, version, label, signature_name, serialized)
            return _json(examples.classification_json(classified))
        _, regressed = await examples.regress(service, name, version, label, signature_name, serialized)
        return _json(examples.regression_json(regressed))

    def status(name: str, version: int | None, label: str | None) -> Response:
        if not name:
            raise invalid_argument("Missing model name in request.")
        return _json(protocol.status_json(protocol.status_response(service.status(name, version, label))))

    def metadata(name: str, version: int | None, label: str | None) -> Response:
        servable = service.find(name, version, label).servable
        return _json(protocol.metadata_json(protocol.metadata_response(name, servable)))

    @router.api_route("/v1/{rest:path}", methods=["GET", "POST"], include_in_schema=False)
    async def v1(request: Request) -> Response:
        path, method = request.url.path, request.method
        started = time.perf_counter()
        kind, code = "unknown", Code.OK
        try:
            if method == "POST" and (match := PREDICT_PATH.fullmatch(path)):
                name, version, label, verb = match.group(1), _version(match.group(2)), match.group(3), match.group(4)
                kind = verb.lower()
                if kind != "predict":
                    return await classify_or_regress(kind, name, version, label, await request.body())
                return await predict(name, version, label, await request.body())
            if method == "GET" and (match := STATUS_PATH.fullmatch(path)):
                name, version, label = match.group(1) or "", _version(match.group(2)), match.group(3)
                kind = "metadata" if match.group(4) else "status"
                return metadata(name, version, label) if match.group(4) else status(name, version, label)
            raise invalid_argument(f"Malformed request: {method} {path}")
        except ServingError as exc:
            code = exc.code
            return JSONResponse({"error": exc.message}, status_code=exc.http_status)
        finally:
            metrics.request_duration.labels("rest", kind, code.name).observe(time.perf_counter() - started)

    return router
