"""``create_app(settings, *, bus=None)``: the deployer as a FastAPI app.

The lifespan builds the store, the target and the service, subscribes the handlers of
:data:`~edgeloop_deployer.handlers.SUBSCRIPTIONS` (ModelPromoted; InferenceCompleted for canaries), starts the bus
if the app owns it, and resumes the rollouts (and canaries) a previous run left unfinished.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from edgeloop_common.api_auth import install_api_auth, service_auth
from edgeloop_common.bus import EventBus
from edgeloop_common.bus.factory import create_bus
from edgeloop_common.health import health_router
from edgeloop_common.http_errors import install_error_handlers
from edgeloop_common.http_metrics import instrument_http
from edgeloop_common.idempotency import SqlProcessedEventStore
from edgeloop_common.subscriptions import subscribed, with_consumer_group_setting
from fastapi import FastAPI

from edgeloop_deployer import api
from edgeloop_deployer.adapters.manifests import ServingSpec
from edgeloop_deployer.adapters.store import SqlDeploymentStore, create_sql_engine
from edgeloop_deployer.canary import CanaryPolicy
from edgeloop_deployer.handlers import SUBSCRIPTIONS, DeployerHandlers
from edgeloop_deployer.metrics import DeployerMetrics
from edgeloop_deployer.service import SERVICE_NAME, DeploymentTarget, RolloutConfig, RolloutService
from edgeloop_deployer.settings import Settings

log = logging.getLogger(__name__)


def serving_spec(settings: Settings) -> ServingSpec:
    return ServingSpec(
        server_kind=settings.server_kind,
        image=settings.resolved_image(),
        image_pull_policy=settings.image_pull_policy,
        replicas=settings.replicas,
        models_claim=settings.models_claim,
        models_host_path=settings.models_host_path,
        rest_port=settings.rest_port,
        grpc_port=settings.grpc_port,
        cpu_request=settings.cpu_request,
        memory_request=settings.memory_request,
        cpu_limit=settings.cpu_limit,
        memory_limit=settings.memory_limit,
        progress_deadline_s=settings.resolved_progress_deadline_s(),
        run_as_user=settings.run_as_user,
        run_as_group=settings.run_as_group,
        fs_group=settings.fs_group,
    )


def target_from_settings(settings: Settings) -> DeploymentTarget:
    if settings.resolved_target() == "local":
        from edgeloop_deployer.adapters.local import LocalModelServerTarget, NodeGroupModelServersTarget

        servers = settings.node_group_servers()
        if servers:
            return NodeGroupModelServersTarget(
                servers,
                models_root=settings.resolved_local_models_root(),
                model_base=settings.resolved_local_model_base(),
                auth=service_auth(settings.common),
                canary_servers=settings.canary_servers(),
                canary_models_root=settings.resolved_local_canary_models_root(),
            )
        return LocalModelServerTarget(settings.model_server_url, auth=service_auth(settings.common))
    from edgeloop_deployer.adapters.kubernetes import KubernetesTarget, api_client_from

    return KubernetesTarget(
        api_client_from(settings.kubeconfig, settings.kube_context),
        namespace=settings.namespace,
        spec=serving_spec(settings),
        workload=settings.workload,
        endpoint_template=settings.endpoint_template,
    )


def rollout_config(settings: Settings) -> RolloutConfig:
    return RolloutConfig(
        node_groups=settings.groups(),
        rollout_timeout_s=settings.rollout_timeout_s,
        poll_interval_s=settings.poll_interval_s,
        promotion_alias=settings.promotion_alias,
        annotations_for=settings.pod_annotations_for,
        canary=CanaryPolicy(
            weight=settings.canary_weight,
            window_s=settings.canary_window_s,
            settle_s=settings.canary_settle_s,
            min_samples=settings.canary_min_samples,
            max_error_rate=settings.canary_max_error_rate,
            max_latency_ratio=settings.canary_max_latency_ratio,
            max_confidence_drop=settings.canary_max_confidence_drop,
            max_wait_s=settings.canary_max_wait_s,
            check_interval_s=settings.canary_check_interval_s,
        ),
    )


def create_app(
    settings: Settings | None = None, *, bus: EventBus | None = None, target: DeploymentTarget | None = None
) -> FastAPI:
    """The deployer. ``bus``: use it and leave starting/stopping it to the caller (standalone mode).
    ``target`` replaces the one the settings would build (tests)."""
    settings = settings or Settings()
    metrics = DeployerMetrics()
    engine = create_sql_engine(settings.common.resolved_database_url(SERVICE_NAME))
    owns_bus = bus is None
    if bus is None:
        processed = SqlProcessedEventStore(engine)  # a redelivered promotion starts no second rollout
        bus = create_bus(settings.common, source=SERVICE_NAME, processed=processed)
    event_bus: EventBus = bus

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.callback(engine.dispose)
            store = await asyncio.to_thread(SqlDeploymentStore, engine)
            chosen: DeploymentTarget = (
                target if target is not None else await asyncio.to_thread(target_from_settings, settings)
            )
            if target is None:
                stack.push_async_callback(chosen.close)
            service = RolloutService(
                target=chosen, store=store, publish=event_bus.publish, config=rollout_config(settings), metrics=metrics
            )
            app.state.service = service
            app.state.store = store
            app.state.target = chosen
            stack.push_async_callback(service.close)
            await service.load_canaries()  # before answers are delivered: those of a watched canary are recorded
            stack.enter_context(
                subscribed(event_bus, with_consumer_group_setting(SUBSCRIPTIONS, settings), DeployerHandlers(service))
            )
            if owns_bus:
                await event_bus.start()
                stack.push_async_callback(event_bus.stop)
            resumed = await service.resume_unfinished()
            log.info(
                "deployer up: %s target, node groups %s, %d rollout(s) resumed",
                chosen.name,
                ",".join(settings.groups()),
                len(resumed),
            )
            yield

    app = FastAPI(title="EdgeLoop deployer", version="1", lifespan=lifespan)
    app.include_router(api.router)
    app.include_router(health_router(lambda: _checks(app, event_bus), registry=metrics.registry))
    install_api_auth(app, settings.common, metrics.registry)
    instrument_http(app, metrics.registry)
    install_error_handlers(app, api.STATUS_FOR_ERROR)
    app.state.bus = event_bus
    app.state.metrics = metrics
    return app


def _checks(app: FastAPI, bus: EventBus) -> dict[str, Callable[[], Awaitable[bool]]]:
    target: DeploymentTarget | None = getattr(app.state, "target", None)
    store: SqlDeploymentStore | None = getattr(app.state, "store", None)
    if target is None or store is None:
        return {"started": _not_started}
    return {
        "bus": bus.ready,
        target.name: target.ready,
        "store": lambda: asyncio.to_thread(store.reachable),
    }


async def _not_started() -> bool:
    return False
