"""Domain errors to HTTP, the same way in every service: a table of statuses and one body shape.

Each service's ``api.py`` declares which of its domain errors answers which status (kserve's ``errors.py``)::

    STATUS_FOR_ERROR: StatusForError = {
        NotFoundError: 404,
        ConflictError: 409,
    }

and its app installs it: ``install_error_handlers(app, api.STATUS_FOR_ERROR)``. The body is FastAPI's own, what
``HTTPException`` and request validation answer too, so every error of every service reads the same::

    HTTP/1.1 404 Not Found
    {"detail": "no model named 'catdog'"}

An error whose class the table does not name answers the status of its nearest base class that it names
(Starlette looks handlers up along the class's MRO); one it does not cover at all is a 500.

The domain errors know nothing of HTTP (nor of the bus): the table is the one place that knows their status.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

log = logging.getLogger(__name__)

# What answers a request whose client hung up before its body was read (nginx's "client closed request"); no one
# reads it: the status is for the access log.
CLIENT_CLOSED_REQUEST = 499

StatusForError = Mapping[type[Exception], int]


class ServiceNotRunningError(Exception):
    """What a route needs is built in the lifespan and is not there: the service is starting or stopping (503)."""


def error_response(status_code: int, reason: str) -> JSONResponse:
    """The error body every service answers: ``{"detail": reason}``."""
    return JSONResponse({"detail": reason}, status_code=status_code)


def install_error_handlers(app: FastAPI, status_for_error: StatusForError, *, echo_invalid_input: bool = True) -> None:
    """Answer each error of ``status_for_error`` with its status and ``{"detail": str(error)}``.

    :class:`ServiceNotRunningError` answers 503 unless the table says otherwise; a client that hung up while its
    body was being read (an edge agent losing its link mid-upload) is logged, not a 500 with a traceback; it
    sends the request again. ``echo_invalid_input=False``
    leaves the rejected input out of a request validation error (FastAPI echoes it back, and an input holding
    NaN cannot even be rendered as JSON).
    """
    table: dict[type[Exception], int] = {ServiceNotRunningError: status.HTTP_503_SERVICE_UNAVAILABLE}
    table.update(status_for_error)
    for error_cls, status_code in table.items():
        app.add_exception_handler(error_cls, _answer_with(status_code))
    app.add_exception_handler(ClientDisconnect, _client_gone)
    if not echo_invalid_input:
        app.add_exception_handler(RequestValidationError, _invalid_request_without_input)
    document_shared_errors(app)


# The body of every error answer, as the OpenAPI document states it.
ERROR_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"detail": {"type": "string", "description": "The reason, in words."}},
    "required": ["detail"],
}


def error_answers(statuses: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route: each status with its description and the error body (``{"detail": reason}``)."""
    return {
        code: {"description": description, "content": {"application/json": {"schema": ERROR_BODY_SCHEMA}}}
        for code, description in statuses.items()
    }


def document_shared_errors(app: FastAPI) -> None:
    """State in ``app``'s OpenAPI document the error answers every route shares, which FastAPI leaves out.

    * 400 on every operation that takes a body: the body cannot be parsed (FastAPI's "There was an error parsing
      the body" for JSON that is not JSON);
    * 503 on every operation: the service is starting or stopping (:class:`ServiceNotRunningError`), or what it
      depends on cannot answer now (a broker, a model server), with the reason;
    * 422 is request validation (``detail``: FastAPI's list of errors) *or* a domain error the table maps to 422
      (``detail``: the reason): both shapes.

    The schemathesis sweep of tests/hostile holds every service to its document (docs/hostile-input.md).
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _add_shared_errors(build())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _add_shared_errors(schema: dict[str, Any]) -> None:
    def answer(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": ERROR_BODY_SCHEMA}}}

    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            if "requestBody" in operation:
                responses.setdefault("400", answer("The body cannot be parsed."))
            responses.setdefault("503", answer("Starting or stopping, or a service this one needs cannot answer now."))
            invalid = responses.get("422", {}).get("content", {}).get("application/json", {})
            if invalid.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                invalid["schema"] = {"anyOf": [invalid["schema"], ERROR_BODY_SCHEMA]}


def _answer_with(status_code: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def answer(_request: Request, exc: Exception) -> JSONResponse:
        return error_response(status_code, str(exc) or type(exc).__name__)

    return answer


async def _client_gone(request: Request, _exc: Exception) -> JSONResponse:
    log.info("%s %s: the client hung up before its request was read", request.method, request.url.path)
    return error_response(CLIENT_CLOSED_REQUEST, "the client closed the request before it was read")


async def _invalid_request_without_input(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 body without the ``input`` (nor ``ctx``) of each error."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"type": error["type"], "loc": list(error["loc"]), "msg": error["msg"]} for error in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
