"""Sign-in with the one admin token, the session cookie, CSRF tokens and flash messages.

Sessions are stateless: the cookie holds a random session id and its expiry, signed (HMAC-SHA256) with a key
derived from the admin token, so every replica accepts the same cookie and changing the token signs everyone
out. Each session has its CSRF token, ``HMAC(key, "csrf." + session id)``, which every POST must carry
(form field ``csrf_token`` or header ``X-CSRF-Token``); a POST whose ``Origin`` is another site is refused
too (docs/console.md, "Security").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

SESSION_COOKIE = "edgeloop_console_session"
FLASH_COOKIE = "edgeloop_console_flash"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Session:
    session_id: str
    expires_at: int
    csrf_token: str


class Signer:
    """Everything that needs the secret: sessions, CSRF tokens, flash messages."""

    def __init__(self, admin_token: str, *, max_age_s: int) -> None:
        self._token = admin_token.encode()
        self._key = hmac.new(self._token, b"edgeloop-console/session-key/v1", hashlib.sha256).digest()
        self.max_age_s = max_age_s

    def token_matches(self, offered: str) -> bool:
        return hmac.compare_digest(offered.encode(), self._token)

    def new_session(self, now: float | None = None) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(18)
        expires_at = int((now or time.time()) + self.max_age_s)
        payload = f"{session_id}.{expires_at}"
        return f"{payload}.{self._sign('session.' + payload)}", self._session(session_id, expires_at)

    def session(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session of a cookie, or None when it is missing, forged or expired."""
        if not cookie or cookie.count(".") != 2:
            return None
        session_id, expires, signature = cookie.split(".")
        payload = f"{session_id}.{expires}"
        if not hmac.compare_digest(signature, self._sign("session." + payload)) or not expires.isdigit():
            return None
        if int(expires) < (now or time.time()):
            return None
        return self._session(session_id, int(expires))

    def csrf_ok(self, session: Session, offered: str | None) -> bool:
        return bool(offered) and hmac.compare_digest(str(offered), session.csrf_token)

    def flash(self, kind: str, text: str) -> str:
        payload = base64.urlsafe_b64encode(json.dumps({"kind": kind, "text": text[:2000]}).encode()).decode()
        return f"{payload}.{self._sign('flash.' + payload)}"

    def read_flash(self, cookie: str | None) -> dict[str, Any] | None:
        if not cookie or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign("flash." + payload)):
            return None
        try:
            message = json.loads(base64.urlsafe_b64decode(payload.encode()))
        except ValueError:
            return None
        return message if isinstance(message, dict) else None

    def _session(self, session_id: str, expires_at: int) -> Session:
        return Session(session_id, expires_at, self._sign("csrf." + session_id))

    def _sign(self, text: str) -> str:
        digest = hmac.new(self._key, text.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def same_origin(origin: str | None, host: str | None) -> bool:
    """True without an Origin header (not a cross-site browser request) or when it names this host."""
    if not origin:
        return True
    if origin == "null" or not host:
        return False
    return origin.split("://", 1)[-1].rstrip("/") == host


def safe_next(target: str | None) -> str:
    """A local path to go to after sign-in: never another site (``//evil``, ``https://...``, ``\\``)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
