"""``create_app(settings, *, bus=None)``: the console as a FastAPI app.

The console has no bus and no database: ``bus`` is accepted for the house's shape (standalone mode passes one
to every service) and not used. The lifespan opens one HTTP client per service and closes them.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from edgeloop_common.api_auth import TokenStore, token_files
from edgeloop_common.health import health_router
from edgeloop_common.http_errors import install_error_handlers
from edgeloop_common.http_metrics import instrument_http
from edgeloop_common.settings import ConfigurationError
from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry

from edgeloop_console import api
from edgeloop_console.adapters.services import ServiceClients
from edgeloop_console.auth import Signer
from edgeloop_console.settings import MIN_TOKEN_CHARS, Settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"

# Every answer: no framing, no sniffing, scripts and styles only from the console itself (no inline script).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


class MissingAdminTokenError(ConfigurationError):
    """No way to sign in (no token store, no admin token), or an admin token too short to be a secret: the console
    does not start."""


def create_app(
    settings: Settings | None = None, *, bus: object | None = None, transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """The console. ``transport`` replaces the network under the service clients (tests)."""
    settings = settings or Settings()
    token = settings.admin_token.get_secret_value()
    stores = token_files(settings.common)
    if token and len(token) < MIN_TOKEN_CHARS:
        raise MissingAdminTokenError(f"EDGELOOP_CONSOLE_ADMIN_TOKEN is too short (at least {MIN_TOKEN_CHARS} chars)")
    if not token and not stores:
        raise MissingAdminTokenError(
            "no one could sign in: set EDGELOOP_API_TOKENS_FILE (API tokens: `edgeloop token add NAME --role ...`) "
            f"or EDGELOOP_CONSOLE_ADMIN_TOKEN (a secret of at least {MIN_TOKEN_CHARS} characters)"
        )
    secret = settings.session_secret.get_secret_value() or token
    if not secret:
        log.warning("no EDGELOOP_CONSOLE_SESSION_SECRET: sessions end when this process stops, and replicas differ")
        secret = secrets.token_urlsafe(32)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        clients = ServiceClients(settings, transport=transport)
        app.state.clients = clients
        log.info(
            "console up: ingest %s, registry %s, deployer %s",
            settings.ingest_url,
            settings.registry_url,
            settings.deployer_url,
        )
        try:
            yield
        finally:
            app.state.clients = None
            await clients.close()

    app = FastAPI(
        title="EdgeLoop console", version="1", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.settings = settings
    app.state.signer = Signer(secret, max_age_s=settings.session_max_age_s, admin_token=token)
    app.state.token_store = TokenStore(stores) if stores else None
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(api.router)
    registry = CollectorRegistry()
    app.include_router(health_router({"started": lambda: _started(app)}, registry=registry))
    instrument_http(app, registry)
    install_error_handlers(app, api.STATUS_FOR_ERROR)
    api.install_page_handlers(app)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Any:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return app


async def _started(app: FastAPI) -> bool:
    return getattr(app.state, "clients", None) is not None
