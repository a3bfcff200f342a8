"""``edgeloop federated``: the federated service (cloud) and a site's Flower client (docs/telemetry.md).

``edgeloop federated server`` runs the service (HTTP :8088, a Flower server on :8089 during a training);
``edgeloop federated client --site S --history PATH --server HOST:PORT`` runs a site's client on its own
``SiteHistory``: it trains where the readings are and sends only weights and counts.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="Federated training across sites (Flower): the server and a site client.")


@app.command("server")
def server(
    host: str = typer.Option(None, help="Bind address (overrides EDGELOOP_FEDERATED_HTTP_HOST)."),
    port: int = typer.Option(None, help="HTTP port (overrides EDGELOOP_FEDERATED_HTTP_PORT)."),
) -> None:
    """Run the federated service in the foreground (the same as `edgeloop-federated`)."""
    from edgeloop_common.service_runner import run_service

    run_service("edgeloop_federated", host=host, port=port)


@app.command("client")
def client(
    site: str = typer.Option(..., help="The site whose devices this client trains on."),
    history: Path = typer.Option(..., exists=True, dir_okay=False, help="The site's SiteHistory (SQLite) file."),
    server_address: str = typer.Option("127.0.0.1:8089", "--server", help="The Flower server, HOST:PORT."),
    once: bool = typer.Option(False, help="Leave after one training (default: serve every training)."),
    held_out_fraction: float = typer.Option(0.25, min=0.0, max=0.9, help="Share of devices kept for evaluation."),
    split_seed: int = typer.Option(0, help="Seed of the held-out split (the same on every site and in the bench)."),
    connect_timeout_s: float = typer.Option(None, help="Give up dialling the server after this long (default: never)."),
) -> None:
    """A site's Flower client: fits the global model on this site's windows; only weights and counts leave."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from edgeloop_federated.adapters.flower_client import SiteClientConfig, run_site_client

    try:
        run_site_client(
            SiteClientConfig(site, history, held_out_fraction=held_out_fraction, split_seed=split_seed),
            server_address,
            once=once,
            connect_timeout_s=connect_timeout_s,
        )
    except ValueError as exc:  # no windows, a bad file: the operator's to fix
        typer.echo(f"edgeloop federated client: {exc}", err=True)
        raise typer.Exit(2) from None
