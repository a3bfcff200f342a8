"""Sessions, CSRF tokens and redirects (no service needed), and a page whose service does not answer."""

from __future__ import annotations

import re

import httpx
import pytest
from edgeloop_common.settings import CommonSettings
from edgeloop_console.app import MissingAdminTokenError, create_app
from edgeloop_console.auth import Signer, safe_next, same_origin
from edgeloop_console.settings import Settings

TOKEN = "a-long-enough-admin-token"


def test_a_session_cookie_is_sealed_and_expires() -> None:
    signer = Signer(TOKEN, max_age_s=60, admin_token=TOKEN)
    cookie, session = signer.new_session(now=1000.0)
    assert signer.session(cookie, now=1059.0) == session
    assert signer.session(cookie, now=1061.0) is None  # expired
    assert signer.session(cookie[:-8] + "AAAAAAA=", now=1000.0) is None  # tampered
    assert signer.session("garbage", now=1000.0) is None
    assert Signer(TOKEN + "-rotated", max_age_s=60).session(cookie, now=1000.0) is None  # another secret: all out
    # The same secret, another admin token: the admin token's sessions are out.
    assert Signer(TOKEN, max_age_s=60, admin_token=TOKEN + "-new").session(cookie, now=1000.0) is None


def test_the_users_api_token_in_the_cookie_cannot_be_read() -> None:
    signer = Signer("a-session-secret-of-enough-length", max_age_s=60)
    api_token = "elt_abc123_" + "s" * 43
    cookie, session = signer.new_session(role="viewer", name="vic", token_id="abc123", api_token=api_token)
    assert "s" * 20 not in cookie and "vic" not in cookie
    assert signer.session(cookie) == session and session.api_token == api_token and not session.can_act


def test_the_csrf_token_belongs_to_its_session() -> None:
    signer = Signer(TOKEN, max_age_s=60, admin_token=TOKEN)
    _, one = signer.new_session()
    _, other = signer.new_session()
    assert signer.csrf_ok(one, one.csrf_token)
    assert not signer.csrf_ok(one, other.csrf_token)
    assert not signer.csrf_ok(one, None)
    assert not signer.csrf_ok(one, "")


def test_flash_messages_cannot_be_forged() -> None:
    signer = Signer(TOKEN, max_age_s=60)
    cookie = signer.flash("ok", "Promoted <b>2</b>")
    assert signer.read_flash(cookie) == {"kind": "ok", "text": "Promoted <b>2</b>"}
    assert signer.read_flash(cookie.split(".")[0] + ".forged") is None
    assert Signer("another-admin-token", max_age_s=60).read_flash(cookie) is None


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/models?model=x", "/models?model=x"),
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("", "/"),
        (None, "/"),
    ],
)
def test_after_sign_in_only_local_paths(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def test_same_origin() -> None:
    assert same_origin(None, "console:8080")
    assert same_origin("http://console:8080", "console:8080")
    assert not same_origin("http://evil.example", "console:8080")
    assert not same_origin("null", "console:8080")


def test_the_console_does_not_start_when_no_one_could_sign_in() -> None:
    with pytest.raises(MissingAdminTokenError, match=r"EDGELOOP_API_TOKENS_FILE.*EDGELOOP_CONSOLE_ADMIN_TOKEN"):
        create_app(Settings(admin_token="", common=CommonSettings(api_tokens_file="")))
    with pytest.raises(MissingAdminTokenError):
        create_app(Settings(admin_token="short"))


async def test_a_service_that_does_not_answer_is_a_notice_not_an_error_page() -> None:
    def nothing_answers(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    app = create_app(Settings(admin_token=TOKEN), transport=httpx.MockTransport(nothing_answers))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
            signed_in = await client.post("/signin", data={"token": TOKEN, "next": "/drift"})
            assert signed_in.status_code == 303 and signed_in.headers["location"] == "/drift"
            for path in ("/", "/models", "/pictures", "/labeling", "/devices", "/drift"):
                page = await client.get(path)
                assert page.status_code == 200, path
                assert re.search(r"Not available: \w+: not reachable", page.text), path
