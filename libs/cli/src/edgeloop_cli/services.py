"""``edgeloop <service>``: run one EdgeLoop service in the foreground.

Every service package has the same shape: ``edgeloop_<name>.settings.Settings``
(pydantic-settings, prefix ``EDGELOOP_<NAME>_``, with ``http_host`` and
``http_port``) and ``edgeloop_<name>.app.create_app(settings)``. The help text
of each command lists the service's environment variables, read off its
settings class, so it cannot go stale.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import typer
from edgeloop_common.settings import CommonSettings


@dataclass(frozen=True)
class ServiceSpec:
    command: str
    package: str
    summary: str


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("ingest", "edgeloop_ingest", "MQTT -> Kafka bridge and sample store (HTTP :8081)."),
    ServiceSpec(
        "inference-gateway", "edgeloop_inference_gateway", "Classifies images through the TF Serving API (HTTP :8082)."
    ),
    ServiceSpec(
        "model-server", "edgeloop_model_server", "TF Serving-compatible lite model server (REST :8501, gRPC :8500)."
    ),
    ServiceSpec("registry", "edgeloop_registry", "Models, versions, aliases and the promotion policy (HTTP :8083)."),
    ServiceSpec("trainer", "edgeloop_trainer", "Snapshots, training runs, evaluation and registration (HTTP :8084)."),
    ServiceSpec("drift", "edgeloop_drift", "Data and concept drift (PSI, KS, ADWIN) per model and site (HTTP :8085)."),
    ServiceSpec("deployer", "edgeloop_deployer", "Rolls promoted model versions out to the edge (HTTP :8086)."),
)


def env_help(settings_cls: type[Any]) -> str:
    """One paragraph per environment variable the settings class reads, then the shared ones."""
    prefix = settings_cls.model_config.get("env_prefix", "")
    paragraphs = ["Environment variables:"]
    for name, field in settings_cls.model_fields.items():
        if name == "common":
            continue
        default = field.default if field.default is not None else ""
        description = f" {field.description}" if field.description else ""
        paragraphs.append(f"{prefix}{name.upper()} (default: {default!s}).{description}")
    shared = ", ".join(f"EDGELOOP_{name.upper()}" for name in CommonSettings.model_fields)
    paragraphs.append(f"Shared: {shared} (see README, 'Configuration').")
    return "\n\n".join(paragraphs)


def _runner(spec: ServiceSpec) -> Callable[..., None]:
    def run(
        host: str = typer.Option(None, help="Bind address (overrides the settings' http_host)."),
        port: int = typer.Option(None, help="HTTP port (overrides the settings' http_port)."),
    ) -> None:
        import uvicorn

        settings_module = importlib.import_module(f"{spec.package}.settings")
        app_module = importlib.import_module(f"{spec.package}.app")
        settings = settings_module.Settings()
        logging.basicConfig(level=settings.common.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        uvicorn.run(
            freeze_after_startup(app_module.create_app(settings)),
            host=host or settings.http_host,
            port=port or settings.http_port,
            log_level=settings.common.log_level.lower(),
        )

    return run


def freeze_after_startup(app: Any) -> Any:
    """Once the service has started, move everything alive into the collector's permanent generation.

    What a service loads at start (its libraries, settings, clients: hundreds of thousands of objects) lives as
    long as the process; without this every full collection walks all of it again, a pause of tens of
    milliseconds in the middle of a request now and then (gc.freeze's documented use).
    """
    startup = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(running_app: Any) -> AsyncIterator[Any]:
        async with startup(running_app) as state:
            freeze_what_is_loaded()
            yield state

    app.router.lifespan_context = lifespan
    return app


def freeze_what_is_loaded() -> None:
    """Collect once, then keep every object alive now out of future collections (see freeze_after_startup)."""
    gc.collect()
    gc.freeze()


def register(app: typer.Typer) -> None:
    for spec in SERVICES:
        try:
            settings_module = importlib.import_module(f"{spec.package}.settings")
        except ModuleNotFoundError:
            continue  # service not installed in this environment
        app.command(spec.command, help=spec.summary, epilog=env_help(settings_module.Settings))(_runner(spec))
