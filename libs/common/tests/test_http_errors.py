"""Domain errors to HTTP through one table: the status it names, and ``{"detail": reason}`` as the body."""

from __future__ import annotations

import httpx
from edgeloop_common.http_errors import ERROR_BODY_SCHEMA, ServiceNotRunningError, error_answers, install_error_handlers
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.requests import ClientDisconnect


class ShopError(Exception):
    pass


class UnknownItemError(ShopError):
    pass


class SoldOutError(ShopError):
    pass


class LastOneSoldOutError(SoldOutError):
    pass


class Order(BaseModel):
    quantity: float


def shop(*, echo_invalid_input: bool = True) -> FastAPI:
    app = FastAPI()
    install_error_handlers(
        app, {UnknownItemError: 404, SoldOutError: 409, ShopError: 422}, echo_invalid_input=echo_invalid_input
    )

    @app.get("/items/{name}")
    async def item(name: str) -> dict[str, str]:
        errors: dict[str, Exception] = {
            "pear": UnknownItemError(f"no item named {name!r}"),
            "plum": LastOneSoldOutError("the last plum is sold"),
            "fig": ShopError(),
            "kiwi": ServiceNotRunningError("the shop is starting"),
            "lime": RuntimeError("not a domain error"),
            "grape": ClientDisconnect(),  # what reading the body raises once the client hung up
        }
        raise errors[name]

    @app.post("/orders")
    async def order(body: Order) -> dict[str, float]:
        return {"quantity": body.quantity}

    return app


async def get(app: FastAPI, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        return await client.get(path)


async def test_each_error_answers_its_status_with_the_reason_as_detail() -> None:
    app = shop()
    answers = {name: await get(app, f"/items/{name}") for name in ("pear", "plum", "fig", "kiwi", "lime", "grape")}

    assert (answers["pear"].status_code, answers["pear"].json()) == (404, {"detail": "no item named 'pear'"})
    # Not in the table itself: its nearest base that is.
    assert (answers["plum"].status_code, answers["plum"].json()) == (409, {"detail": "the last plum is sold"})
    assert (answers["fig"].status_code, answers["fig"].json()) == (422, {"detail": "ShopError"})  # no message
    assert (answers["kiwi"].status_code, answers["kiwi"].json()) == (503, {"detail": "the shop is starting"})
    assert answers["lime"].status_code == 500
    assert answers["grape"].status_code == 499  # logged, not a 500 with a traceback


async def test_validation_errors_keep_fastapis_shape_and_can_leave_the_input_out() -> None:
    async def post(app: FastAPI) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shop") as client:
            return await client.post("/orders", json={"quantity": "many"})

    echoed = (await post(shop())).json()["detail"]
    quiet = await post(shop(echo_invalid_input=False))

    assert echoed[0]["input"] == "many"
    assert quiet.status_code == 422
    assert quiet.json() == {"detail": [{"type": "float_parsing", "loc": ["body", "quantity"], "msg": echoed[0]["msg"]}]}


class Thing(BaseModel):
    name: str


def test_the_openapi_document_states_the_answers_every_route_shares() -> None:
    """FastAPI leaves out its 400 for a body that is not JSON, the 503 of a service starting, and the 422 of a
    domain error (``detail``: a reason, not a list); the sweep of tests/hostile holds every service to these."""
    app = FastAPI()

    @app.post("/things", responses=error_answers({409: "It exists."}))
    async def create(body: Thing) -> dict[str, str]:
        return {"name": body.name}

    @app.get("/things")
    async def things() -> list[str]:
        return []

    install_error_handlers(app, {})
    paths = app.openapi()["paths"]
    created = paths["/things"]["post"]["responses"]
    assert sorted(created) == ["200", "400", "409", "422", "503"]
    assert created["409"]["content"]["application/json"]["schema"] == ERROR_BODY_SCHEMA
    invalid = created["422"]["content"]["application/json"]["schema"]["anyOf"]
    assert invalid[0]["$ref"].endswith("/HTTPValidationError") and invalid[1] == ERROR_BODY_SCHEMA
    assert sorted(paths["/things"]["get"]["responses"]) == ["200", "503"]  # no body: no 400
    assert app.openapi() is app.openapi()  # built once
