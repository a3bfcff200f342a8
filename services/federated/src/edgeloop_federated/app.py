"""``create_app``: the federated service wired together (Flower runner, registry client, model store, bus).

The lifespan builds the service, subscribes the handlers of :data:`~edgeloop_federated.handlers.SUBSCRIPTIONS`
(TrainingRequested), then starts the bus if the app owns it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack, asynccontextmanager

import httpx
from edgeloop_common.api_auth import install_api_auth, service_auth
from edgeloop_common.bus.base import EventBus
from edgeloop_common.bus.factory import create_bus
from edgeloop_common.health import health_router
from edgeloop_common.http_errors import install_error_handlers
from edgeloop_common.http_metrics import instrument_http
from edgeloop_common.registry_client import RegistryClient
from edgeloop_common.subscriptions import subscribed
from fastapi import FastAPI

from edgeloop_federated import api
from edgeloop_federated.adapters.flower_server import FlowerFederation
from edgeloop_federated.adapters.model_store import LocalModelStore
from edgeloop_federated.handlers import SUBSCRIPTIONS, FederatedHandlers
from edgeloop_federated.metrics import FederatedMetrics
from edgeloop_federated.ports import FederationRunner, ModelStore, RegistryPort
from edgeloop_federated.service import SERVICE_NAME, FederatedService
from edgeloop_federated.settings import Settings

log = logging.getLogger(__name__)


async def _constant(value: bool) -> bool:
    return value


def create_app(
    settings: Settings | None = None,
    *,
    bus: EventBus | None = None,
    registry: RegistryPort | None = None,
    runner: FederationRunner | None = None,
    store: ModelStore | None = None,
) -> FastAPI:
    """The federated app. With ``bus`` given (standalone, tests) the app uses it and does not start or stop it;
    ``registry``, ``runner`` and ``store`` replace the registry's HTTP client, the Flower runner and the model base
    (tests)."""
    settings = settings or Settings()
    metrics = FederatedMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        clients: list[httpx.AsyncClient] = []
        registry_port = registry
        if registry_port is None:
            timeout = httpx.Timeout(settings.request_timeout_s, connect=5.0)
            clients.append(
                httpx.AsyncClient(base_url=settings.registry_url, timeout=timeout, auth=service_auth(settings.common))
            )
            registry_port = RegistryClient(clients[-1])
        service = FederatedService(
            runner=runner or FlowerFederation(settings.flower_address),
            registry=registry_port,
            store=store or LocalModelStore(settings.resolved_model_base()),
            defaults=settings.training_defaults(),
            promote=settings.promote,
            actor=settings.actor,
            metrics=metrics,
        )
        event_bus = bus or create_bus(settings.common, source=SERVICE_NAME)
        subscriptions = ExitStack()
        subscriptions.enter_context(subscribed(event_bus, SUBSCRIPTIONS, FederatedHandlers(service)))
        if bus is None:
            await event_bus.start()
        service.start()
        app.state.service = service
        app.state.bus = event_bus
        log.info(
            "federated started: Flower on %s, registry %s, models %s, model %s",
            settings.flower_address,
            settings.registry_url,
            settings.resolved_model_base(),
            settings.model_name,
        )
        try:
            yield
        finally:
            app.state.service = None
            if bus is None:
                await event_bus.stop()
            subscriptions.close()
            await service.stop()
            for client in clients:
                await client.aclose()

    app = FastAPI(title="EdgeLoop federated", version="1", lifespan=lifespan)
    app.include_router(api.router)
    app.include_router(health_router(lambda: _checks(app), registry=metrics.registry))
    install_api_auth(app, settings.common, metrics.registry)
    instrument_http(app, metrics.registry)
    install_error_handlers(app, api.STATUS_FOR_ERROR)
    app.state.metrics = metrics
    return app


def _checks(app: FastAPI) -> dict[str, Callable[[], Awaitable[bool]]]:
    bus: EventBus | None = getattr(app.state, "bus", None)
    if getattr(app.state, "service", None) is None or bus is None:
        return {"started": lambda: _constant(False)}
    return {"bus": bus.ready}
