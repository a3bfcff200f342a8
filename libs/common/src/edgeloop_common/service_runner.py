"""Run one EdgeLoop service in the foreground: its own ``edgeloop-<service>`` script and ``edgeloop <service>``.

Every service package has the same shape: ``edgeloop_<name>.settings.Settings`` (pydantic-settings, prefix
``EDGELOOP_<NAME>_``, with ``http_host`` and ``http_port``) and ``edgeloop_<name>.app.create_app(settings)``. This
module is the one place that turns that shape into a running process, so a service's container image needs only
``edgeloop-common`` and the service itself; the ``edgeloop`` command on top reuses the same functions.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import logging
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from edgeloop_common.otel import configure_tracing, shutdown_tracing
from edgeloop_common.settings import CommonSettings, ConfigurationError


def env_help(settings_cls: type[Any]) -> str:
    """One paragraph per environment variable the settings class reads, then the shared ones.

    Read off the settings class, so the help of every service's command cannot go stale.
    """
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


def run_service(
    package: str, *, host: str | None = None, port: int | None = None, settings: Mapping[str, Any] | None = None
) -> None:
    """Build the service of ``package`` from its environment (``settings`` over it) and serve it until stopped."""
    import uvicorn

    settings_module = importlib.import_module(f"{package}.settings")
    app_module = importlib.import_module(f"{package}.app")
    overrides = {name: value for name, value in (settings or {}).items() if value is not None}
    try:
        service_settings = settings_module.Settings(**overrides)
        logging.basicConfig(
            level=service_settings.common.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        configure_tracing(package.removeprefix("edgeloop_").replace("_", "-"), service_settings.common.otlp_endpoint)
        app = app_module.create_app(service_settings)
    except (ValidationError, ConfigurationError) as exc:  # the operator's to fix: the reason, not a traceback
        print(f"{package.replace('_', '-')}: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        uvicorn.run(
            freeze_after_startup(app),
            host=host or service_settings.http_host,
            port=port or service_settings.http_port,
            log_level=service_settings.common.log_level.lower(),
        )
    finally:
        shutdown_tracing()  # the spans still buffered go out


def service_main(package: str, summary: str, argv: Sequence[str] | None = None, *, flags: Sequence[str] = ()) -> None:
    """The ``edgeloop-<service>`` script: ``--host``, ``--port`` and a ``--<flag>`` per setting named in ``flags``
    (``edge``'s ``--site``), each over the environment's settings."""
    settings_cls = importlib.import_module(f"{package}.settings").Settings
    parser = argparse.ArgumentParser(
        description=summary, epilog=env_help(settings_cls), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", help="Bind address (overrides the settings' http_host).")
    parser.add_argument("--port", type=int, help="HTTP port (overrides the settings' http_port).")
    for name in flags:
        field = settings_cls.model_fields[name]
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, help=field.description)
    arguments = parser.parse_args(argv)
    overrides = {name: getattr(arguments, name) for name in flags}
    run_service(package, host=arguments.host, port=arguments.port, settings=overrides)


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
