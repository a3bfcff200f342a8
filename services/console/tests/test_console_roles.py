"""The console with API tokens: the token's role decides what the console offers and what it does, and every call
to a service carries the signed-in user's token (recorded here by the transport under the service clients, which
answers nothing, so each page shows its notices)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from edgeloop_common.api_auth import add_token, remove_token, routes_of
from edgeloop_common.settings import CommonSettings
from edgeloop_console.app import create_app
from edgeloop_console.settings import Settings

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
CONSOLE_OWN = "elt_console_" + "c" * 43


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path, request.headers.get("authorization")))
        raise httpx.ConnectError("nothing answers here", request=request)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "tokens.json"


@pytest.fixture
async def console(store: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Recorder]]:
    recorder = Recorder()
    common = CommonSettings(api_tokens_file=str(store), api_token=CONSOLE_OWN)
    settings = Settings(admin_token="the-optional-admin-token", session_secret="s" * 40, common=common)
    app = create_app(settings, transport=httpx.MockTransport(recorder))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
            yield client, recorder


async def _sign_in(client: httpx.AsyncClient, token: str) -> str:
    client.cookies.clear()
    answer = await client.post("/signin", data={"token": token, "next": "/models"})
    assert answer.status_code == 303, answer.text
    page = await client.get("/drift")
    match = CSRF.search(page.text)
    assert match, page.text[:300]
    return match.group(1)


async def test_a_viewer_sees_no_action_and_is_refused_when_it_posts_anyway(
    console: tuple[httpx.AsyncClient, Recorder], store: Path
) -> None:
    client, recorder = console
    _, viewer = add_token(store, "vic", "viewer")
    csrf = await _sign_in(client, viewer)
    confirm = await client.get("/models/m/confirm", params={"action": "promote", "version": 1})
    assert confirm.status_code == 200 and 'id="read-only"' in confirm.text
    assert 'action="/models/m/promote"' not in confirm.text
    recorder.calls.clear()
    posted = await client.post("/models/m/promote", data={"csrf_token": csrf, "version": 1, "reason": "x"})
    assert posted.status_code == 403 and "viewer" in posted.text
    labeled = await client.post("/labeling/label", data={"csrf_token": csrf, "sample_id": "s", "label": "cat"})
    assert labeled.status_code == 403
    assert recorder.calls == []  # nothing reached a service
    # What the viewer reads, it reads with its own token.
    await client.get("/models")
    assert recorder.calls and {auth for _, _, auth in recorder.calls} == {f"Bearer {viewer}"}


async def test_an_operator_acts_with_its_own_token(console: tuple[httpx.AsyncClient, Recorder], store: Path) -> None:
    client, recorder = console
    _, operator = add_token(store, "olga", "operator")
    csrf = await _sign_in(client, operator)
    confirm = await client.get("/models/m/confirm", params={"action": "promote", "version": 1})
    assert 'action="/models/m/promote"' in confirm.text
    recorder.calls.clear()
    posted = await client.post("/models/m/promote", data={"csrf_token": csrf, "version": 1, "reason": "x"})
    assert posted.status_code == 303
    assert recorder.calls == [("POST", "/v1/models/m/promotions", f"Bearer {operator}")]


async def test_a_removed_token_signs_its_session_out_at_once(
    console: tuple[httpx.AsyncClient, Recorder], store: Path
) -> None:
    client, _ = console
    stored, operator = add_token(store, "olga", "operator")
    await _sign_in(client, operator)
    assert (await client.get("/drift")).status_code == 200
    remove_token(store, stored.id)
    gone = await client.get("/drift")
    assert gone.status_code == 303 and gone.headers["location"].startswith("/signin")


async def test_a_service_token_or_an_unknown_one_does_not_sign_in(
    console: tuple[httpx.AsyncClient, Recorder], store: Path
) -> None:
    client, _ = console
    _, service = add_token(store, "ingest", "service")
    for token in (service, "elt_nosuch_" + "x" * 43, "not a token"):
        refused = await client.post("/signin", data={"token": token, "next": "/"})
        assert refused.status_code == 401 and "does not sign in" in refused.text


async def test_the_admin_token_signs_in_and_its_calls_carry_the_consoles_own_token(
    console: tuple[httpx.AsyncClient, Recorder],
) -> None:
    client, recorder = console
    await _sign_in(client, "the-optional-admin-token")
    recorder.calls.clear()
    confirm = await client.get("/models/m/confirm", params={"action": "deploy", "version": 1})
    assert 'action="/models/m/deploy"' in confirm.text
    assert {auth for _, _, auth in recorder.calls} == {f"Bearer {CONSOLE_OWN}"}


async def test_every_console_action_refuses_without_a_session_and_for_a_viewer(store: Path) -> None:
    """Every POST route of the console, read off the app: no session -> to sign-in; a viewer -> 403."""
    common = CommonSettings(api_tokens_file=str(store))
    app = create_app(Settings(session_secret="s" * 40, common=common), transport=httpx.MockTransport(Recorder()))
    actions = [t for m, t in routes_of(app) if m == "POST" and t not in ("/signin", "/signout")]
    assert len(actions) >= 7, actions
    _, viewer = add_token(store, "vic", "viewer")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
            for template in actions:
                path = re.sub(r"\{[^}]+\}", "x", template)
                anonymous = await client.post(path, data={"version": 1, "reason": "r", "sample_id": "s", "label": "c"})
                assert anonymous.status_code == 303 and "/signin" in anonymous.headers["location"], template
            csrf = await _sign_in(client, viewer)
            for template in actions:
                path = re.sub(r"\{[^}]+\}", "x", template)
                form = {"csrf_token": csrf, "version": 1, "reason": "r", "node_group": "g", "sample_id": "s"}
                refused = await client.post(path, data=form | {"label": "c"})
                assert refused.status_code == 403, f"{template}: {refused.status_code}"
