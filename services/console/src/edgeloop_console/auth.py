"""Sign-in with an API token (or the optional admin token), the session cookie, CSRF tokens and flash messages.

A user signs in with an API token of the shared store (``edgeloop token add NAME --role viewer|operator|admin``,
docs/security.md): its role decides what the console offers, and every call the console makes to a service for
that user carries the user's token, so the service itself enforces the role. ``EDGELOOP_CONSOLE_ADMIN_TOKEN``, when
set, also signs in (as admin); its calls carry the console's own API token (``EDGELOOP_API_TOKEN``).

Sessions are stateless: the cookie is the session (id, expiry, role, the user's token) encrypted and authenticated
with Fernet (AES-128-CBC + HMAC-SHA256) under a key derived from ``EDGELOOP_CONSOLE_SESSION_SECRET`` (else from the
admin token), so every replica accepts the same cookie and the token inside is unreadable to the browser. Each
request checks the token against the store again: a removed token signs its sessions out at once. Each session has
its CSRF token, ``HMAC(key, "csrf." + session id)``, which every POST must carry (form field ``csrf_token`` or header
``X-CSRF-Token``); a POST whose ``Origin`` is another site is refused too (docs/console.md, "Security").
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

from cryptography.fernet import Fernet, InvalidToken
from edgeloop_common.api_auth import OPERATE

SESSION_COOKIE = "edgeloop_console_session"
FLASH_COOKIE = "edgeloop_console_flash"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
# Roles that may sign in to the console (a service token is for services).
SIGN_IN_ROLES = ("viewer", "operator", "admin")


@dataclass(frozen=True)
class Session:
    session_id: str
    expires_at: int
    csrf_token: str
    role: str = "admin"
    name: str = ""
    token_id: str = ""  # the API token's id; empty for the admin token
    api_token: str = ""  # what the console presents to the services for this user
    admin_mark: str = ""  # the admin token's fingerprint, for a session it signed in

    @property
    def can_act(self) -> bool:
        """Label, take pictures, promote, deploy, roll back: an operator's (or admin's) actions."""
        return bool(OPERATE.allows(self.role))


class Signer:
    """Everything that needs the secret: sessions, CSRF tokens, flash messages."""

    def __init__(self, secret: str, *, max_age_s: int, admin_token: str = "") -> None:
        root = hmac.new(secret.encode(), b"edgeloop-console/session-key/v2", hashlib.sha256).digest()
        self._key = hmac.new(root, b"sign", hashlib.sha256).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(hmac.new(root, b"encrypt", hashlib.sha256).digest()))
        self._admin = admin_token.encode()
        self.admin_mark = self._sign("admin." + admin_token)[:16] if admin_token else ""
        self.max_age_s = max_age_s

    def token_matches(self, offered: str) -> bool:
        """The admin token (when one is set), compared in constant time."""
        return bool(self._admin) and hmac.compare_digest(offered.encode(), self._admin)

    def new_session(
        self,
        now: float | None = None,
        *,
        role: str = "admin",
        name: str = "",
        token_id: str = "",
        api_token: str = "",
    ) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(18)
        expires_at = int((now or time.time()) + self.max_age_s)
        mark = "" if token_id else self.admin_mark
        payload = {"sid": session_id, "exp": expires_at, "role": role, "name": name, "tid": token_id}
        payload |= {"tok": api_token, "adm": mark}
        cookie = self._fernet.encrypt(json.dumps(payload).encode()).decode()
        return cookie, self._session(session_id, expires_at, role, name, token_id, api_token, mark)

    def session(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session of a cookie, or None when it is missing, forged, expired or of a replaced admin token."""
        if not cookie:
            return None
        try:
            payload = json.loads(self._fernet.decrypt(cookie.encode()))
            session_id, expires = str(payload["sid"]), int(payload["exp"])
            role, name, token_id = str(payload["role"]), str(payload["name"]), str(payload["tid"])
            api_token, mark = str(payload["tok"]), str(payload["adm"])
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None
        if expires < (now or time.time()):
            return None
        if not token_id and not (mark and hmac.compare_digest(mark, self.admin_mark)):
            return None  # signed in with an admin token that is no longer the admin token
        return self._session(session_id, expires, role, name, token_id, api_token, mark)

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

    def _session(
        self, session_id: str, expires_at: int, role: str, name: str, token_id: str, api_token: str, mark: str
    ) -> Session:
        csrf = self._sign("csrf." + session_id)
        return Session(session_id, expires_at, csrf, role, name, token_id, api_token, mark)

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
