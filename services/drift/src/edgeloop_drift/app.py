"""``create_app(settings, *, bus=None)``: the drift service as a FastAPI app.

The lifespan builds the service, then subscribes the handlers of
:data:`~edgeloop_drift.handlers.SUBSCRIPTIONS` (InferenceCompleted and
SampleLabeled, one consumer group), then starts the bus if the app owns it.

No database: windows, ADWIN detectors and the alarm history live in memory
(docs/drift.md, "State"), and so do the handled event ids.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta

from edgeloop_common.api_auth import install_api_auth, service_auth
from edgeloop_common.bus import EventBus
from edgeloop_common.health import health_router
from edgeloop_common.http_errors import install_error_handlers
from edgeloop_common.http_metrics import instrument_http
from edgeloop_common.subscriptions import subscribed, with_consumer_group_setting
from fastapi import FastAPI

from edgeloop_drift import api
from edgeloop_drift.adapters.registry import NoReferences, RegistryReferences
from edgeloop_drift.handlers import SUBSCRIPTIONS, DriftHandlers
from edgeloop_drift.metrics import DriftMetrics
from edgeloop_drift.service import SERVICE_NAME, DriftPolicy, DriftService, ReferenceLookup, TelemetryDriftConfig
from edgeloop_drift.settings import Settings
from edgeloop_drift.windows import WindowConfig, parse_features

log = logging.getLogger(__name__)


def window_config(settings: Settings) -> WindowConfig:
    return WindowConfig(
        window_size=settings.window_size,
        check_every=settings.check_every,
        min_reference_samples=settings.min_reference_samples,
        psi_threshold=settings.psi_threshold,
        psi_bins=settings.psi_bins,
        psi_epsilon=settings.psi_epsilon,
        psi_noise_alpha=settings.psi_noise_alpha,
        ks_alpha=settings.ks_alpha,
        features=parse_features(settings.features),
    )


def telemetry_drift_config(settings: Settings) -> TelemetryDriftConfig:
    window = window_config(settings)
    return TelemetryDriftConfig(
        window=WindowConfig(
            window_size=settings.telemetry_window_size,
            check_every=settings.telemetry_check_every,
            min_reference_samples=window.min_reference_samples,
            psi_threshold=window.psi_threshold,
            psi_bins=window.psi_bins,
            psi_epsilon=window.psi_epsilon,
            psi_noise_alpha=window.psi_noise_alpha,
            ks_alpha=window.ks_alpha,
            features=parse_features(settings.telemetry_features),
        ),
        sample_every=settings.telemetry_sample_every,
    )


def drift_policy(settings: Settings) -> DriftPolicy:
    return DriftPolicy(
        debounce=timedelta(seconds=settings.debounce_s),
        request_training=settings.request_training,
        reference_retry=timedelta(seconds=settings.reference_retry_s),
        adwin_delta=settings.adwin_delta,
        adwin_clock=settings.adwin_clock,
        alarm_history=settings.alarm_history,
        max_streams=settings.max_streams,
        prediction_memory=settings.prediction_memory,
    )


def create_app(
    settings: Settings | None = None, *, bus: EventBus | None = None, references: ReferenceLookup | None = None
) -> FastAPI:
    """The drift service. ``bus``: use it and leave starting/stopping it to the caller (standalone mode).

    ``references`` replaces the registry client the settings would build (tests).
    """
    settings = settings or Settings()
    config = window_config(settings)  # bad settings fail here, at start-up, with the reason
    metrics = DriftMetrics(site_limit=settings.metric_site_limit)
    owns_bus = bus is None
    if bus is None:
        from edgeloop_common.bus.factory import create_bus

        bus = create_bus(settings.common, source=SERVICE_NAME)
    event_bus: EventBus = bus

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            lookup = references
            if lookup is None:
                client = (
                    RegistryReferences(
                        settings.registry_url,
                        timeout_s=settings.registry_timeout_s,
                        auth=service_auth(settings.common),
                    )
                    if settings.registry_url
                    else NoReferences()
                )
                stack.push_async_callback(client.close)
                lookup = client
            service = DriftService(
                config,
                lookup,
                policy=drift_policy(settings),
                metrics=metrics,
                telemetry=telemetry_drift_config(settings),
            )
            app.state.drift = service
            stack.callback(_forget_service, app)  # after the bus stopped (callbacks run last-in, first-out)
            stack.enter_context(
                subscribed(
                    event_bus, with_consumer_group_setting(SUBSCRIPTIONS, settings), DriftHandlers(service, event_bus)
                )
            )
            if owns_bus:
                await event_bus.start()
                stack.push_async_callback(event_bus.stop)
            log.info(
                "drift up: window %d, check every %d, PSI > %.3g, KS p < %.1e, ADWIN delta %.3g, registry %s",
                config.window_size,
                config.check_every,
                config.psi_threshold,
                config.ks_alpha,
                settings.adwin_delta,
                settings.registry_url or "off",
            )
            yield

    app = FastAPI(title="EdgeLoop drift", version="1", lifespan=lifespan)

    async def bus_ready() -> bool:
        ready: bool = await event_bus.ready()
        return ready

    async def started() -> bool:
        return getattr(app.state, "drift", None) is not None

    app.include_router(api.router)
    app.include_router(health_router({"bus": bus_ready, "started": started}, registry=metrics.registry))
    install_api_auth(app, settings.common, metrics.registry)
    instrument_http(app, metrics.registry)
    install_error_handlers(app, api.STATUS_FOR_ERROR)
    app.state.metrics = metrics
    app.state.bus = event_bus
    return app


def _forget_service(app: FastAPI) -> None:
    app.state.drift = None
