"""API tokens on every service: each service's app is built as it runs (standalone mode, its lifespan started) with
``EDGELOOP_API_AUTH=required``, its routes are read off the app, and every one is called over HTTP (ASGI):

* every mutating route (POST, PUT, PATCH, DELETE) answers 401 without a token (with ``WWW-Authenticate``) and 403
  with a viewer's, unless the service's ACCESS table makes it a read (``POST /v1/classify``, the model server's
  inference): then a viewer is let through;
* every route an operator may use lets an operator through (no 401/403), a service-only route (the uplink) refuses
  an operator and lets a service token through;
* every GET lets a viewer through; ``/healthz``, ``/readyz`` and ``/metrics`` need no token.

The routes come from the app itself, so a route added later is held to the same rules without editing this test.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from edgeloop_common.api_auth import OPERATE, READ, SERVICE, add_token, routes_of
from fastapi import FastAPI

from tests.hostile import openapi_services as builders

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
# The documented exceptions (docs/security.md, "API tokens and roles"), written out here rather than read off the
# services' ACCESS tables, so that a table that lets too much through fails this test.
READ_ONLY_POSTS = {
    ("inference-gateway", "POST /v1/classify"),
    ("inference-gateway", "POST /v1/models/{model}:predict"),
    ("inference-gateway", "POST /v1/models/{model}/versions/{version}:predict"),
    ("inference-gateway", "POST /v1/models/{model}/labels/{label}:predict"),
    ("model-server", "POST /v1/{rest}"),
}
SERVICE_ONLY = {("ingest", "POST /v1/uplink")}
OPEN = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def _concrete(template: str) -> str:
    """A path the template matches: every parameter a plain value (numbers where a number fits)."""
    path = re.sub(r"\{(version|run_id|record_id)\}", "1", template)
    path = path.replace("{rest}", "models/m:predict")
    return re.sub(r"\{[^}]+\}", "x", path)


def _model_server(data_dir: Path, **_: Any) -> FastAPI:
    from edgeloop_model_server.app import create_app
    from edgeloop_model_server.settings import Settings

    from tests.helpers import free_port

    (data_dir / "models").mkdir(parents=True, exist_ok=True)
    settings = Settings(model_name="m", model_base_path=data_dir / "models", grpc_port=free_port())
    return create_app(settings)


def _federated(data_dir: Path, **_: Any) -> FastAPI:
    from edgeloop_federated.app import create_app
    from edgeloop_federated.settings import Settings

    return create_app(Settings(model_base=data_dir / "models", common=builders._common(data_dir)))


BUILDERS: dict[str, Callable[..., FastAPI]] = {s.name: s.build for s in builders.SERVICES}
BUILDERS["model-server"] = _model_server
BUILDERS["federated"] = _federated
NOT_STARTED = {"model-server", "federated"}  # their refusals need no lifespan (no models, no Flower server here)
SERVICES_DIR = Path(__file__).resolve().parents[1] / "services"
MARKS = {"edge": [pytest.mark.mqtt]}


@pytest.fixture
def tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A token per role in a fresh store, and auth required for every app built in the test (read from the
    environment, as a deployed service reads it)."""
    store = tmp_path / "tokens.json"
    made = {role: add_token(store, f"test {role}", role)[1] for role in ("viewer", "operator", "admin", "service")}
    monkeypatch.setenv("EDGELOOP_API_AUTH", "required")
    monkeypatch.setenv("EDGELOOP_API_TOKENS_FILE", str(store))
    return made


async def _started(app: FastAPI, stack: AsyncExitStack, *, lifespan: bool) -> httpx.AsyncClient:
    if lifespan:
        await stack.enter_async_context(app.router.lifespan_context(app))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://service"))


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as exits:
        yield exits


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("name", [pytest.param(name, marks=MARKS.get(name, [])) for name in sorted(BUILDERS)], ids=str)
async def test_every_mutating_route_refuses_without_a_token_and_with_a_viewer_token(
    name: str, tokens: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest, stack: AsyncExitStack
) -> None:
    extras = {"mqtt_broker": request.getfixturevalue("mqtt_broker")} if name == "edge" else {}
    app = BUILDERS[name](tmp_path / "data", **extras)
    client = await _started(app, stack, lifespan=name not in NOT_STARTED)
    access = app.state.api_access
    documented = {key for service, key in READ_ONLY_POSTS | SERVICE_ONLY if service == name}
    assert set(access) == documented, f"{name}: access exceptions not documented here: {set(access) ^ documented}"
    routes = [(method, template) for method, template in routes_of(app) if template not in OPEN]
    assert routes, f"{name}: no routes found"
    assert set(access) <= {f"{m} {t}" for m, t in routes}, f"{name}: an access exception names no route"
    mutating = [(m, t) for m, t in routes if m in MUTATING]
    if name != "drift" and name != "edge":  # these two only read
        assert mutating, f"{name}: no mutating route found"

    for method, template in routes:
        path = _concrete(template)
        key = (name, f"{method} {template}")
        need = READ if method not in MUTATING or key in READ_ONLY_POSTS else SERVICE if key in SERVICE_ONLY else OPERATE
        where = f"{name}: {method} {template}"

        anonymous = await client.request(method, path)
        assert anonymous.status_code == 401, f"{where} without a token answered {anonymous.status_code}"
        assert anonymous.headers["www-authenticate"].startswith("Bearer"), where
        assert "token" in anonymous.json()["detail"], where

        as_viewer = await client.request(method, path, headers=_bearer(tokens["viewer"]))
        if need is READ:
            assert as_viewer.status_code not in (401, 403), f"{where} refused a viewer: {as_viewer.text}"
        else:
            assert method in MUTATING, f"{where}: a read that a viewer may not make"
            assert as_viewer.status_code == 403, f"{where} with a viewer token answered {as_viewer.status_code}"
            assert need.name in as_viewer.json()["detail"], where

        as_operator = await client.request(method, path, headers=_bearer(tokens["operator"]))
        if need in (READ, OPERATE):
            assert as_operator.status_code not in (401, 403), f"{where} refused an operator: {as_operator.text}"
        else:
            assert as_operator.status_code == 403, f"{where} let an operator through"
        if need is SERVICE:
            as_service = await client.request(method, path, headers=_bearer(tokens["service"]))
            assert as_service.status_code not in (401, 403), f"{where} refused a service: {as_service.text}"

    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status_code in (200, 503), f"{name}: {path} is not open"
    metrics = (await client.get("/metrics")).text
    role_refusals = any(
        m in MUTATING and (name, f"{m} {t}") not in READ_ONLY_POSTS for m, t in routes
    )  # a viewer was refused above
    assert bool(re.search(r'edgeloop_api_auth_refusals_total\{reason="role"\} [1-9]', metrics)) == role_refusals, name
    assert re.search(r'edgeloop_api_auth_refusals_total\{reason="missing"\} [1-9]', metrics), name


async def test_a_bad_token_is_refused_and_logged_without_its_secret(
    tokens: dict[str, str], tmp_path: Path, stack: AsyncExitStack, caplog: pytest.LogCaptureFixture
) -> None:
    client = await _started(builders.registry(tmp_path / "data"), stack, lifespan=True)
    viewer = tokens["viewer"]
    token_id, secret = viewer[len("elt_") :].split("_", 1)
    forged = f"elt_{token_id}_{'A' * len(secret)}"
    for header, reason in (
        ({"Authorization": f"Bearer {forged}"}, "wrong_secret"),
        ({"Authorization": "Bearer elt_nosuchid_" + "B" * 43}, "unknown"),
        ({"Authorization": "Bearer not-a-token"}, "malformed"),
        ({"Authorization": f"Basic {viewer}"}, "malformed"),
    ):
        answer = await client.get("/v1/models", headers=header)
        assert answer.status_code == 401, header
        assert 'error="invalid_token"' in answer.headers["www-authenticate"]
        assert reason in caplog.text
    assert (await client.get("/v1/models", headers=_bearer(viewer))).status_code == 200
    assert secret not in caplog.text and "A" * len(secret) not in caplog.text
    assert token_id in caplog.text  # the id says which token failed


async def test_auth_off_lets_every_request_through(tmp_path: Path, stack: AsyncExitStack) -> None:
    client = await _started(builders.registry(tmp_path / "data"), stack, lifespan=True)
    assert (await client.get("/v1/models")).status_code == 200
    created = await client.post("/v1/models", json={"name": "free-for-all"})
    assert created.status_code == 201, created.text


async def test_metrics_need_a_token_when_their_switch_is_off(
    tokens: dict[str, str], tmp_path: Path, stack: AsyncExitStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGELOOP_API_AUTH_OPEN_METRICS", "false")
    client = await _started(builders.registry(tmp_path / "data"), stack, lifespan=True)
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers=_bearer(tokens["viewer"]))).status_code == 200
    assert (await client.get("/healthz")).status_code == 200


def test_the_openapi_document_states_the_scheme_and_the_refusals(tokens: dict[str, str], tmp_path: Path) -> None:
    document = builders.gateway(tmp_path / "data").openapi()
    assert document["components"]["securitySchemes"]["apiToken"] == {"type": "http", "scheme": "bearer"}
    classify = document["paths"]["/v1/classify"]["post"]
    assert {"401", "403"} <= set(classify["responses"]) and classify["security"] == [{"apiToken": []}]
    assert "security" not in document["paths"]["/healthz"]["get"]


def test_every_service_is_held_to_this_test() -> None:
    """A new service's app installs the shared check and is built above (the console signs people in instead)."""
    names = {path.name for path in SERVICES_DIR.iterdir() if (path / "pyproject.toml").exists()}
    assert names - {"console"} == set(BUILDERS), "build the new service in BUILDERS above"
    for name in names - {"console"}:
        app_py = next((SERVICES_DIR / name / "src").glob("edgeloop_*/app.py"))
        assert "install_api_auth(" in app_py.read_text(), f"{name}: its app does not install_api_auth"
