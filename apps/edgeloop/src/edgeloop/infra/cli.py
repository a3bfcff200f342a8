"""``edgeloop infra up|down|status``: the typer commands over :mod:`edgeloop.infra.api`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgeloop.infra import api
from edgeloop.infra.component import ComponentStatus
from edgeloop.infra.errors import InfraError
from edgeloop.infra.secure import write_server_certificates
from edgeloop.paths import repo_root

app = typer.Typer(
    no_args_is_help=True,
    help="Local Kafka, Mosquitto, PostgreSQL and SeaweedFS (S3) on 127.0.0.1, state in .edgeloop/: up, down, status.",
)

Only = Annotated[
    str | None,
    typer.Option(
        "--only", help="Comma-separated components: kafka, mosquitto (mqtt), postgres, seaweedfs (s3). Default: all."
    ),
]

ENVIRONMENT = {
    "kafka": "EDGELOOP_KAFKA_BOOTSTRAP_SERVERS",
    "mosquitto": "EDGELOOP_MQTT_HOST / EDGELOOP_MQTT_PORT",
    "postgres": "EDGELOOP_DATABASE_URL",
    "seaweedfs": "EDGELOOP_BLOB_STORE=s3 / EDGELOOP_S3_*",
    "mqtts": "EDGELOOP_MQTT_* of secure.env, plus EDGELOOP_MQTT_USERNAME / EDGELOOP_MQTT_PASSWORD_FILE",
}


def _names(only: str | None) -> list[str] | None:
    return [name for name in only.split(",") if name.strip()] if only else None


Secure = Annotated[
    bool,
    typer.Option(
        "--secure",
        help="Kafka and PostgreSQL also over TLS with credentials (SASL_SSL/SCRAM on 9095, TLS roles on 5432), "
        "beside the plain listeners, and a secured Mosquitto (mqtts: TLS on 8883, device and service identities) "
        "beside the anonymous one; a local CA and passwords under .edgeloop/secure/ (remembered by later ups), "
        "client settings in .edgeloop/secure/secure.env.",
    ),
]


@app.command()
def up(only: Only = None, secure: Secure = False) -> None:
    """Install what is missing and start every server that is not running (idempotent)."""
    try:
        statuses = api.up(_names(only), secure=secure, echo=typer.echo)
    except InfraError as exc:
        typer.echo(f"infra up failed:\n{exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo("")
    _print_table(statuses)


@app.command()
def down(only: Only = None) -> None:
    """Stop the servers `up` started (by their pid files); nothing else is touched."""
    try:
        api.down(_names(only), echo=typer.echo)
    except InfraError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc


@app.command()
def status(
    only: Only = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per component, in a list.")] = False,
) -> None:
    """What runs where. Exit status 0 when every selected server runs, 3 otherwise."""
    try:
        statuses = api.status(_names(only))
    except InfraError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps([_as_dict(item) for item in statuses], indent=2))
    else:
        _print_table(statuses)
    if not all(item.running for item in statuses):
        raise typer.Exit(3)


def _print_table(statuses: list[ComponentStatus]) -> None:
    header = ("COMPONENT", "STATE", "ADDRESS", "PID", "RSS", "DATA")
    rows = [header] + [
        (
            item.name,
            item.state,
            item.address,
            str(item.pid) if item.pid else "-",
            f"{item.rss_bytes / 2**20:.0f} MiB" if item.rss_bytes else "-",
            _shown(item.data_dir),
        )
        for item in statuses
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for item in statuses:
        if item.detail:
            typer.echo(f"{item.name}: {item.detail}")
    typer.echo("")
    for item in statuses:
        hint = api.component(item.name).connection_hint()
        typer.echo(f"{item.name}: {hint}  ({ENVIRONMENT[item.name]})")
    typer.echo(f"logs: {_shown(api.component('kafka').log_file.parent)}/")


def _as_dict(item: ComponentStatus) -> dict[str, object]:
    return {
        "component": item.name,
        "state": item.state,
        "address": item.address,
        "pid": item.pid,
        "rss_bytes": item.rss_bytes,
        "data_dir": str(item.data_dir),
        "connection": api.component(item.name).connection_hint(),
        "detail": item.detail,
    }


def _shown(path: object) -> str:
    text = str(path)
    root = f"{repo_root()}/"
    return text[len(root) :] if text.startswith(root) else text


@app.command()
def certs(
    directory: Annotated[Path, typer.Argument(help="Where to write them (a volume the servers and services mount).")],
    hosts: Annotated[str, typer.Option(help="Comma-separated names the server certificate is for.")] = "kafka,postgres",
    kafka_uid: Annotated[int | None, typer.Option(help="Owner of kafka-keystore.pem (the broker's user).")] = None,
    postgres_uid: Annotated[int | None, typer.Option(help="Owner of postgres.key (PostgreSQL's user).")] = None,
) -> None:
    """A local CA and a server certificate for a compose or cluster deployment (made once; kept when present):
    ca.pem (clients verify with it), server.pem, kafka-keystore.pem (key + certificate), postgres.key."""
    made = write_server_certificates(directory, tuple(h for h in hosts.split(",") if h), kafka_uid, postgres_uid)
    typer.echo(f"{'made' if made else 'kept'} the CA and server certificate in {directory} (clients: ca.pem)")
