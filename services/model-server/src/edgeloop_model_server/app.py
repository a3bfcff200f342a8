"""``create_app``: the model server's FastAPI app (REST on the HTTP port) with the gRPC server in its lifespan.

The serving core loads what is on disk before the app (and the gRPC server)
accepts requests, as TF Serving does; then a background poll picks up new
versions. The model server publishes no events: ``bus`` is accepted for the
uniform ``create_app`` signature and not used.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from edgeloop_common.api_auth import READ, install_api_auth
from edgeloop_common.bus import EventBus
from edgeloop_common.health import ReadinessCheck, health_router
from edgeloop_common.http_metrics import instrument_http
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from edgeloop_model_server import config
from edgeloop_model_server.api import rest_router
from edgeloop_model_server.grpc_api import start_grpc_server
from edgeloop_model_server.metrics import ServerMetrics
from edgeloop_model_server.savedmodel import SavedModelServable
from edgeloop_model_server.service import ModelService
from edgeloop_model_server.settings import Settings

log = logging.getLogger(__name__)


def _readiness_checks(service: ModelService) -> dict[str, ReadinessCheck]:
    """One check per configured model, read at each /readyz: a reloaded config changes the models."""

    async def has_available_version(name: str) -> bool:
        return service.is_ready(name)

    return {f"model {name}": partial(has_available_version, name) for name in service.model_names}


def create_app(settings: Settings, *, bus: EventBus | None = None) -> FastAPI:
    metrics = ServerMetrics()
    service = ModelService(
        config.from_settings(settings),
        SavedModelServable,
        poll_interval_s=settings.poll_interval_s,
        warmup=settings.warmup,
        unload_grace_s=settings.unload_grace_s,
        inference_threads=settings.inference_threads,
        metrics=metrics,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        grpc_server, grpc_port = await start_grpc_server(service, metrics, settings.grpc_host, settings.grpc_port)
        app.state.grpc_port = grpc_port
        try:
            yield
        finally:
            await grpc_server.stop(grace=2.0)
            await service.stop()

    app = FastAPI(
        title="EdgeLoop model server",
        description="TF Serving-compatible REST API (gRPC on a second port).",
        lifespan=lifespan,
    )
    app.state.model_service = service
    app.state.grpc_port = settings.grpc_port

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error answering %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"Internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    app.include_router(rest_router(service, metrics))
    app.include_router(health_router(partial(_readiness_checks, service), registry=metrics.registry))
    # Every POST is inference (predict, classify, regress): a read, as the gateway's classify is.
    install_api_auth(app, settings.common, metrics.registry, access={"POST /v1/{rest}": READ})
    instrument_http(app, metrics.registry)
    return app
