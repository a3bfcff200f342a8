"""HTTP routes: classify, the TF Serving-compatible passthrough, and the site routes."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from edgeloop_common.api_auth import READ, AccessTable
from edgeloop_common.http_errors import ServiceNotRunningError, StatusForError, error_answers
from edgeloop_common.serving import (
    ModelNotFoundError,
    ModelResponseError,
    ModelRoute,
    ModelServerUnavailableError,
    RouteConfigError,
    TfServingRestClient,
    UnclassifiableError,
)
from edgeloop_common.topics import ID_PATTERN
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from edgeloop_inference_gateway.ports import ImageTooLargeError
from edgeloop_inference_gateway.service import InferenceService, classification_result

# Domain errors -> HTTP status, in one place (installed by app.py). A subclass not named here answers its base's.
# Who may call what, where the method alone does not say (edgeloop_common.api_auth): classifying changes nothing.
ACCESS: AccessTable = {
    "POST /v1/classify": READ,
    "POST /v1/models/{model}:predict": READ,
    "POST /v1/models/{model}/versions/{version}:predict": READ,
    "POST /v1/models/{model}/labels/{label}:predict": READ,
}

STATUS_FOR_ERROR: StatusForError = {
    UnclassifiableError: status.HTTP_400_BAD_REQUEST,
    ImageTooLargeError: status.HTTP_413_CONTENT_TOO_LARGE,
    ModelResponseError: status.HTTP_502_BAD_GATEWAY,  # the model does not classify: the server's fault, not yours
    RouteConfigError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    ModelServerUnavailableError: status.HTTP_503_SERVICE_UNAVAILABLE,
    ModelNotFoundError: status.HTTP_503_SERVICE_UNAVAILABLE,
}


@dataclass
class GatewayState:
    """What the routes need, set on ``app.state.gateway`` in the lifespan."""

    service: InferenceService
    passthrough: TfServingRestClient
    routes_caught_up: Callable[[], bool]
    """Whether the routes replayed every DeploymentUpdated the bus held at start (``EventBus.caught_up``)."""


def gateway_state(request: Request) -> GatewayState:
    state: GatewayState | None = getattr(request.app.state, "gateway", None)
    if state is None:
        raise ServiceNotRunningError("the gateway is starting")
    return state


Gateway = Annotated[GatewayState, Depends(gateway_state)]
SiteId = Annotated[str | None, Query(pattern=f"^{ID_PATTERN}$", description="Site whose model route applies.")]
DeviceId = Annotated[str | None, Query(pattern=f"^{ID_PATTERN}$", description="Echoed in the result.")]

classify_router = APIRouter(prefix="/v1", tags=["classify"])
tf_serving_router = APIRouter(prefix="/v1/models", tags=["tf-serving passthrough"])
routes_router = APIRouter(prefix="/v1/routes", tags=["routing"])


# What the routes document beside their success (the schemathesis sweep of tests/hostile holds them to it).
CLASSIFY_ERRORS = error_answers(
    {
        400: "No image, or not a JPEG or PNG that decodes (the reason says which).",
        413: "The image is over the size limit.",
        502: "The model server answered, but not with a classification.",
        503: "The model server cannot be reached, or serves no such model.",
    }
)
# TF Serving's own error answers ({"error": message}), passed through as the model server gave them.
PASSED_THROUGH: dict[int | str, dict[str, Any]] = {
    code: {"description": f"The model server's answer, passed through ({description})."}
    for code, description in {400: "bad request", 404: "no such model or version", 503: "unreachable"}.items()
}


@classify_router.post("/classify", responses=CLASSIFY_ERRORS)
async def classify(request: Request, gateway: Gateway, site: SiteId = None, device: DeviceId = None) -> dict[str, Any]:
    """Classify one image: the raw JPEG/PNG bytes as the body, or a multipart form with an ``image`` file.

    Answers the same JSON a device receives on its result topic (docs/gateway.md).
    """
    image, site, device = await _image_from_request(request, site, device, gateway.service.max_image_bytes)
    classification = await gateway.service.classify_bytes(image, site_id=site)
    return classification_result(classification, site_id=site, device_id=device)


async def _image_from_request(
    request: Request, site: str | None, device: str | None, max_bytes: int
) -> tuple[bytes, str | None, str | None]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + 64 * 1024:  # room for multipart framing
        raise HTTPException(status_code=413, detail=f"request of {declared} bytes is over the limit of {max_bytes}")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("image") or next((value for value in form.values() if isinstance(value, UploadFile)), None)
        if not isinstance(upload, UploadFile):
            raise HTTPException(status_code=400, detail="multipart form has no image file (field 'image')")
        image = await upload.read()
        site = site or _form_id(form.get("site"), "site")
        device = device or _form_id(form.get("device"), "device")
    else:
        image = await request.body()
    if not image:
        raise HTTPException(
            status_code=400, detail="no image: send JPEG or PNG bytes as the body or a multipart 'image'"
        )
    return image, site, device


def _form_id(value: Any, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise HTTPException(status_code=400, detail=f"form field {what!r} must be text")
    if not re.fullmatch(ID_PATTERN, value):
        raise HTTPException(status_code=422, detail=f"invalid {what} id {value!r}")
    return value


# -- TF Serving REST passthrough -------------------------------------------------


async def _forward(request: Request, gateway: GatewayState) -> Response:
    body = await request.body() if request.method == "POST" else None
    # The path as a URL again: Starlette decoded it, and a model name with a control character or a space would not
    # make a valid URL for the model server (httpx.InvalidURL: a 500, found by the sweep of tests/hostile).
    answer = await gateway.passthrough.forward(request.method, quote(request.url.path, safe="/:@"), body)
    return Response(
        content=answer.content,
        status_code=answer.status_code,
        media_type=answer.headers.get("content-type", "application/json"),
    )


@tf_serving_router.post("/{model}:predict", responses=PASSED_THROUGH)
async def predict(model: str, request: Request, gateway: Gateway) -> Response:
    """TF Serving ``:predict`` on the model's latest version, passed through to the model server."""
    return await _forward(request, gateway)


@tf_serving_router.post("/{model}/versions/{version}:predict", responses=PASSED_THROUGH)
async def predict_version(model: str, version: int, request: Request, gateway: Gateway) -> Response:
    return await _forward(request, gateway)


@tf_serving_router.post("/{model}/labels/{label}:predict", responses=PASSED_THROUGH)
async def predict_label(model: str, label: str, request: Request, gateway: Gateway) -> Response:
    return await _forward(request, gateway)


@tf_serving_router.get("/{model}", responses=PASSED_THROUGH)
async def model_status(model: str, request: Request, gateway: Gateway) -> Response:
    return await _forward(request, gateway)


@tf_serving_router.get("/{model}/metadata", responses=PASSED_THROUGH)
async def model_metadata(model: str, request: Request, gateway: Gateway) -> Response:
    return await _forward(request, gateway)


@tf_serving_router.get("/{model}/versions/{version}", responses=PASSED_THROUGH)
async def version_status(model: str, version: int, request: Request, gateway: Gateway) -> Response:
    return await _forward(request, gateway)


@tf_serving_router.get("/{model}/versions/{version}/metadata", responses=PASSED_THROUGH)
async def version_metadata(model: str, version: int, request: Request, gateway: Gateway) -> Response:
    return await _forward(request, gateway)


# -- routes ------------------------------------------------------------------------


class RouteBody(BaseModel):
    model: str
    """``model``, ``model:3`` or ``model:stable``."""


@routes_router.get("")
async def list_routes(gateway: Gateway) -> dict[str, Any]:
    """The routes; ``caught_up`` is false while the gateway still replays the deployments from before its start."""
    router = gateway.service.router
    return {
        "default": str(router.default),
        "sites": {site: str(route) for site, route in router.site_routes().items()},
        "caught_up": gateway.routes_caught_up(),
    }


@routes_router.put("/{site_id}")
async def set_route(site_id: str, body: RouteBody, gateway: Gateway) -> dict[str, str]:
    """Serve a site with another model or version from the next request on (the deployer drives this)."""
    gateway.service.router.set_route(site_id, ModelRoute.parse(body.model))
    return {"site": site_id, "route": str(gateway.service.router.route_for(site_id))}


@routes_router.delete("/{site_id}")
async def remove_route(site_id: str, gateway: Gateway) -> dict[str, str]:
    gateway.service.router.remove_route(site_id)
    return {"site": site_id, "route": str(gateway.service.router.route_for(site_id))}
