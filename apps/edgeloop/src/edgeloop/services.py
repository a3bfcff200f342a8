"""``edgeloop <service>``: run one EdgeLoop service in the foreground.

The same as the service's own ``edgeloop-<service>`` script (``edgeloop_common.service_runner``); this module only
makes each service a sub-command of ``edgeloop``, with its environment variables in the help text.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import typer
from edgeloop_common.service_runner import env_help, run_service

# The services this application is built from, in the order `edgeloop --help` lists them.
SERVICE_PACKAGES: dict[str, str] = {
    "ingest": "edgeloop_ingest",
    "inference-gateway": "edgeloop_inference_gateway",
    "model-server": "edgeloop_model_server",
    "registry": "edgeloop_registry",
    "trainer": "edgeloop_trainer",
    "drift": "edgeloop_drift",
    "deployer": "edgeloop_deployer",
    "edge": "edgeloop_edge",
    "console": "edgeloop_console",
}


def _runner(package: str) -> Callable[..., None]:
    def run(
        host: str = typer.Option(None, help="Bind address (overrides the settings' http_host)."),
        port: int = typer.Option(None, help="HTTP port (overrides the settings' http_port)."),
    ) -> None:
        run_service(package, host=host, port=port)

    return run


def _edge_runner(package: str) -> Callable[..., None]:
    """``edgeloop edge --site S``: the site is the one setting an operator always gives (the service's FLAGS)."""

    def run(
        site: str = typer.Option(None, help="The edge site this agent serves (overrides EDGELOOP_EDGE_SITE)."),
        host: str = typer.Option(None, help="Bind address (overrides the settings' http_host)."),
        port: int = typer.Option(None, help="HTTP port (overrides the settings' http_port)."),
    ) -> None:
        run_service(package, host=host, port=port, settings={"site": site})

    return run


def _model_server_runner(package: str) -> Callable[..., None]:
    """``edgeloop model-server [TF Serving flags]``: tensorflow_model_server's command line, handed to the
    service's own script (``--port`` is gRPC there, as in TF Serving)."""

    def run(ctx: typer.Context) -> None:
        importlib.import_module(f"{package}.__main__").main(ctx.args)

    return run


# Commands whose arguments are not typer's: everything after the command goes to the service's script.
_PASS_THROUGH = {"context_settings": {"allow_extra_args": True, "ignore_unknown_options": True}}


def register(app: typer.Typer) -> None:
    for command, package in SERVICE_PACKAGES.items():
        # Each service's __main__ holds its one-line summary; importing it loads only the settings module.
        main = importlib.import_module(f"{package}.__main__")
        settings = importlib.import_module(f"{package}.settings").Settings
        if command == "model-server":
            help_text = f"{main.SUMMARY}\n\n{main.FLAGS_HELP}"
            app.command(command, help=help_text, epilog=env_help(settings), **_PASS_THROUGH)(  # type: ignore[arg-type]
                _model_server_runner(package)
            )
            continue
        runner = _edge_runner(package) if command == "edge" else _runner(package)
        app.command(command, help=main.SUMMARY, epilog=env_help(settings))(runner)
