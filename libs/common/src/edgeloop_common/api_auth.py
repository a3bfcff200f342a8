"""API tokens and roles, the same on every HTTP service: ``install_api_auth(app, settings.common, registry, ...)``.

A token reads ``elt_<id>_<secret>``. The store keeps, per token, its id, name, role, creation time and the SHA-256
of the secret, never the secret: a secret of 256 random bits cannot be guessed from its hash, so a slow password
hash (bcrypt, scrypt) would only slow every request down. A request's token is looked up by its id and its
secret's hash compared with ``hmac.compare_digest``.

Roles: ``viewer`` reads; ``operator`` also labels, uploads, deploys, promotes and rolls back; ``admin`` may do
everything (and manages tokens and devices with the ``edgeloop`` command); ``service`` is what one EdgeLoop
process presents to another (reads, the actions services ask of each other, the edge uplink). What a route needs
is decided by its method (GET reads, the rest acts) unless the service's ``ACCESS`` table says otherwise (a
read-only POST such as ``/v1/classify``, the uplink that only services may use).

``EDGELOOP_API_AUTH=off`` (the default: standalone mode and the tests) lets every request through;
``required`` answers 401 (no token, an unknown or malformed one; ``WWW-Authenticate: Bearer``) or 403 (a role
that may not) with ``{"detail": reason}``. ``/healthz``, ``/readyz`` and the API documents stay open; ``/metrics``
too unless ``EDGELOOP_API_AUTH_OPEN_METRICS=false``. Refusals are logged with the token's id, never its secret,
and counted in ``edgeloop_api_auth_refusals_total{reason}``. docs/security.md, "API tokens and roles".
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import httpx
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from prometheus_client import CollectorRegistry, Counter
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from edgeloop_common.settings import CommonSettings, ConfigurationError

log = logging.getLogger(__name__)

Role = Literal["viewer", "operator", "admin", "service"]
ROLES: tuple[Role, ...] = get_args(Role)
TOKEN_PREFIX = "elt_"
TOKEN_ID_PATTERN = r"[A-Za-z0-9-]{1,64}"
_TOKEN = re.compile(rf"{TOKEN_PREFIX}({TOKEN_ID_PATTERN})_([A-Za-z0-9_-]{{16,256}})")
STORE_VERSION = 1

# Paths every request may reach without a token: the probes (kubelet has no token) and the API documents.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
METRICS_PATH = "/metrics"
# Why a request was refused: the label values of the refusal counter (a fixed set, never a token id).
REFUSAL_REASONS = ("missing", "malformed", "unknown", "wrong_secret", "role")


@dataclass(frozen=True)
class Access:
    """Who may call a route: the roles allowed, and the word a refusal uses."""

    name: str
    roles: frozenset[str]

    def allows(self, role: str) -> bool:
        return role in self.roles


OPEN = Access("open", frozenset())
READ = Access("viewer", frozenset({"viewer", "operator", "admin", "service"}))
OPERATE = Access("operator", frozenset({"operator", "admin", "service"}))
ADMIN = Access("admin", frozenset({"admin"}))
SERVICE = Access("service", frozenset({"service", "admin"}))
# What a route needs when its service's ACCESS table does not name it: reads read, everything else acts.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

AccessTable = Mapping[str, Access]  # "POST /v1/classify" -> READ


def default_access(method: str) -> Access:
    return READ if method.upper() in READ_METHODS else OPERATE


# -- tokens and the store -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredToken:
    """A token as the store keeps it: no secret, only its SHA-256."""

    id: str
    name: str
    role: str
    created_at: str
    sha256: str


@dataclass(frozen=True)
class Principal:
    """Who a request's token says it is."""

    token_id: str
    name: str
    role: str


class TokenRefusedError(Exception):
    """A presented token is not accepted; ``reason`` is one of REFUSAL_REASONS, ``token_id`` never a secret."""

    def __init__(self, reason: str, detail: str, token_id: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.token_id = token_id


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(name: str, role: str, *, token_id: str | None = None) -> tuple[StoredToken, str]:
    """A fresh token: what the store keeps, and the token itself (shown once, kept nowhere)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    token_id = token_id or secrets.token_hex(6)
    if not re.fullmatch(TOKEN_ID_PATTERN, token_id):
        raise ValueError(f"invalid token id {token_id!r}: letters, digits and '-', at most 64")
    secret = secrets.token_urlsafe(32)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    return StoredToken(token_id, name, role, created, hash_secret(secret)), f"{TOKEN_PREFIX}{token_id}_{secret}"


def split_token(token: str) -> tuple[str, str]:
    """(id, secret) of a token, or TokenRefusedError("malformed")."""
    match = _TOKEN.fullmatch(token.strip())
    if match is None:
        raise TokenRefusedError("malformed", "the token is not an EdgeLoop API token (elt_<id>_<secret>)")
    return match.group(1), match.group(2)


class TokenStore:
    """Tokens read from one or more JSON files, each read again as soon as it changes (checked on every lookup:
    a ``stat``), so ``edgeloop token add|remove`` takes effect without a restart and a removed token is refused at
    once. A file that cannot be read or parsed counts as empty (fail closed), with the reason logged once."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = [Path(p) for p in paths]
        self._lock = threading.Lock()
        self._seen: dict[Path, tuple[int, int, int] | None] = {}
        self._tokens: dict[Path, dict[str, StoredToken]] = {}

    @classmethod
    def from_settings(cls, common: CommonSettings) -> TokenStore:
        return cls(token_files(common))

    def tokens(self) -> dict[str, StoredToken]:
        """Every token by id (a later file does not replace an id an earlier file holds)."""
        self._refresh()
        merged: dict[str, StoredToken] = {}
        for path in self.paths:
            for token_id, token in self._tokens.get(path, {}).items():
                merged.setdefault(token_id, token)
        return merged

    def authenticate(self, token: str) -> Principal:
        token_id, secret = split_token(token)
        stored = self.tokens().get(token_id)
        # Hash and compare even for an unknown id, so the answer takes as long either way.
        expected = stored.sha256 if stored else hash_secret(secrets.token_urlsafe(32))
        if not hmac.compare_digest(hash_secret(secret), expected) or stored is None:
            if stored is None:
                raise TokenRefusedError("unknown", "unknown or removed token", token_id)
            raise TokenRefusedError("wrong_secret", "the token's secret does not match", token_id)
        return Principal(stored.id, stored.name, stored.role)

    def _refresh(self) -> None:
        with self._lock:
            for path in self.paths:
                try:
                    status = path.stat()
                    mark: tuple[int, int, int] | None = (status.st_mtime_ns, status.st_size, status.st_ino)
                except OSError:
                    mark = None
                if path in self._seen and self._seen[path] == mark:
                    continue
                self._seen[path] = mark
                self._tokens[path] = _read_store(path) if mark is not None else {}


def _read_store(path: Path) -> dict[str, StoredToken]:
    try:
        document = json.loads(path.read_text())
        return {entry["id"]: StoredToken(**entry) for entry in document.get("tokens", [])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.error("API token store %s cannot be read (%s): no token of it is accepted until it is fixed", path, exc)
        return {}


# -- writing a store (the ``edgeloop token`` command) ---------------------------------------------------------


def read_store_file(path: Path) -> list[StoredToken]:
    """The tokens of one store file (none when it does not exist yet); a broken file raises ValueError."""
    if not path.exists():
        return []
    try:
        document = json.loads(path.read_text())
        return [StoredToken(**entry) for entry in document.get("tokens", [])]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"{path} is not an API token store: {exc}") from exc


def write_store_file(path: Path, tokens: Iterable[StoredToken]) -> None:
    """Replace the store atomically (a reader sees the old file or the new one), readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"version": STORE_VERSION, "tokens": [asdict(token) for token in tokens]}
    fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(document, out, indent=2)
            out.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def add_token(path: Path, name: str, role: str, *, token_id: str | None = None) -> tuple[StoredToken, str]:
    tokens = read_store_file(path)
    stored, token = new_token(name, role, token_id=token_id)
    if any(t.id == stored.id for t in tokens):
        raise ValueError(f"a token with id {stored.id!r} is in {path} already")
    write_store_file(path, [*tokens, stored])
    return stored, token


def remove_token(path: Path, id_or_name: str) -> list[StoredToken]:
    """Remove the tokens whose id (or, failing that, name) is ``id_or_name``; the removed ones."""
    tokens = read_store_file(path)
    removed = [t for t in tokens if t.id == id_or_name] or [t for t in tokens if t.name == id_or_name]
    if removed:
        write_store_file(path, [t for t in tokens if t not in removed])
    return removed


# -- settings -------------------------------------------------------------------------------------------------


def token_files(common: CommonSettings) -> list[Path]:
    return [Path(part.strip()) for part in common.api_tokens_file.split(",") if part.strip()]


def own_token(common: CommonSettings) -> str:
    """This process's own token (EDGELOOP_API_TOKEN, or the file EDGELOOP_API_TOKEN_FILE names), or ''."""
    token = common.api_token.get_secret_value().strip()
    if not token and common.api_token_file is not None:
        try:
            token = common.api_token_file.read_text().strip()
        except OSError as exc:
            raise ConfigurationError(f"EDGELOOP_API_TOKEN_FILE={common.api_token_file} cannot be read: {exc}") from exc
    return token


class BearerToken(httpx.Auth):
    """``Authorization: Bearer <token>`` on every request of an httpx client."""

    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


def service_auth(common: CommonSettings) -> httpx.Auth | None:
    """What a client calling another EdgeLoop service passes as ``auth=``: this process's token, if it has one.

    Only for EdgeLoop's own services: never give it to a client that reaches other hosts (a blob URL, a webhook),
    which would receive the token."""
    token = own_token(common)
    return BearerToken(token) if token else None


def service_headers(common: CommonSettings) -> dict[str, str]:
    token = own_token(common)
    return {"Authorization": f"Bearer {token}"} if token else {}


# -- the middleware -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    methods: frozenset[str]
    template: str
    route: Any


class ApiAuthMiddleware:
    """Checks every HTTP request's bearer token against the store and the route's access, before the route runs."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        fastapi_app: FastAPI,
        store: TokenStore,
        access: AccessTable,
        open_metrics: bool,
        refusals: Counter,
    ) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.store = store
        self.access = {_normal_key(key): value for key, value in access.items()}
        self.open_paths = OPEN_PATHS | ({METRICS_PATH} if open_metrics else frozenset())
        self.refusals = refusals
        self._rules: list[_Rule] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        method = scope["method"].upper()
        rule = self._match(scope["path"], method)
        template = rule.template if rule else None
        need = self.access.get(f"{method} {template}", default_access(method)) if template else READ
        if need is OPEN:
            await self.app(scope, receive, send)
            return
        try:
            principal = self.store.authenticate(_bearer(scope))
        except TokenRefusedError as refused:
            await self._refuse(scope, send, rule, 401, refused.reason, str(refused), refused.token_id)
            return
        if not need.allows(principal.role):
            detail = f"{method} {template} needs the {need.name} role ({', '.join(sorted(need.roles))}); this token "
            detail += f"({principal.token_id}) has {principal.role}"
            await self._refuse(scope, send, rule, 403, "role", detail, principal.token_id)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def _match(self, path: str, method: str) -> _Rule | None:
        """The route Starlette would pick: the first whose path and method match, else the first whose path does."""
        if self._rules is None:
            self._rules = _rules(self.fastapi_app)
        partial = None
        for rule in self._rules:
            if rule.regex.match(path):
                if not rule.methods or method in rule.methods:
                    return rule
                partial = partial or rule
        return partial

    async def _refuse(
        self, scope: Scope, send: Send, rule: _Rule | None, status: int, reason: str, detail: str, token_id: str | None
    ) -> None:
        client = scope.get("client")
        log.warning(
            "API %s %s refused (%d, %s): %s; token id %s, client %s",
            scope["method"],
            scope["path"],
            status,
            reason,
            detail,
            token_id or "-",
            client[0] if client else "?",
        )
        self.refusals.labels(reason).inc()
        if rule is not None:
            scope["route"] = rule.route  # the request metrics count the refusal under its route's template
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            challenge = 'Bearer realm="edgeloop"' + ("" if reason == "missing" else ', error="invalid_token"')
            headers.append((b"www-authenticate", challenge.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _normal_key(key: str) -> str:
    method, _, path = key.partition(" ")
    return f"{method.upper()} {path.strip()}"


def _bearer(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            text: str = value.decode("latin-1")
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise TokenRefusedError("malformed", "the Authorization header is not 'Bearer <token>'")
            return token.strip()
    raise TokenRefusedError("missing", "an API token is required: Authorization: Bearer <token>")


class _Template:
    """What the request metrics read off a refused request's route: its template."""

    def __init__(self, path: str) -> None:
        self.path = path


def _rules(app: FastAPI) -> list[_Rule]:
    rules = []
    for route in iter_route_contexts(app.routes):
        template = route.path_format or route.path
        if not template:
            continue
        regex = getattr(route, "path_regex", None) or compile_path(template)[0]
        rules.append(_Rule(regex, frozenset(route.methods or ()), template, _Template(template)))
    return rules


def routes_of(app: FastAPI) -> list[tuple[str, str]]:
    """(method, template) of every route of ``app`` (HEAD left out), as the access check sees them."""
    found = []
    for rule in _rules(app):
        for method in sorted(rule.methods - {"HEAD"}):
            found.append((method, rule.template))
    return found


def install_api_auth(
    app: FastAPI, common: CommonSettings, registry: CollectorRegistry, *, access: AccessTable | None = None
) -> None:
    """Require API tokens on ``app`` when ``EDGELOOP_API_AUTH=required`` (nothing changes when ``off``).

    ``access``: the routes whose method alone does not say what they need, ``{"POST /v1/classify": READ}``.
    Call it before ``instrument_http`` so the request metrics count the refusals too.
    """
    table = dict(access or {})
    app.state.api_access = table
    refusals = Counter(
        "edgeloop_api_auth_refusals_total",
        "API requests refused for their token, by reason (missing, malformed, unknown, wrong_secret, role).",
        ["reason"],
        registry=registry,
    )
    for reason in REFUSAL_REASONS:
        refusals.labels(reason)
    if common.api_auth != "required":
        return
    paths = token_files(common)
    if not paths:
        raise ConfigurationError("EDGELOOP_API_AUTH=required needs EDGELOOP_API_TOKENS_FILE (the token store)")
    for path in paths:
        if not path.exists():
            log.warning("API token store %s does not exist (yet): its tokens are refused until it does", path)
    document_auth(app, table, open_metrics=common.api_auth_open_metrics)
    app.add_middleware(
        ApiAuthMiddleware,
        fastapi_app=app,
        store=TokenStore(paths),
        access=table,
        open_metrics=common.api_auth_open_metrics,
        refusals=refusals,
    )


def document_auth(app: FastAPI, access: AccessTable, *, open_metrics: bool) -> None:
    """State the bearer scheme and the 401/403 answers in the OpenAPI document (the schemathesis sweep holds
    every service to its document)."""
    build = app.openapi
    open_paths = OPEN_PATHS | ({METRICS_PATH} if open_metrics else frozenset())

    def answer(description: str) -> dict[str, Any]:
        schema = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {})
            components.setdefault("securitySchemes", {})["apiToken"] = {"type": "http", "scheme": "bearer"}
            for path, item in schema.get("paths", {}).items():
                if path in open_paths:
                    continue
                for method, operation in item.items():
                    if not isinstance(operation, dict) or "responses" not in operation:
                        continue
                    need = access.get(f"{method.upper()} {path}", default_access(method))
                    if need is OPEN:
                        continue
                    operation["security"] = [{"apiToken": []}]
                    operation["responses"].setdefault("401", answer("No API token, or an unknown one."))
                    operation["responses"].setdefault("403", answer(f"The token's role may not (needs {need.name})."))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
