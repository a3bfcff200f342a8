"""``edgeloop token add|list|remove``: the API tokens of the HTTP services (docs/security.md, "API tokens and roles").

The store is a JSON file of hashed tokens (``edgeloop_common.api_auth``); the services read it again as soon as it
changes, so a token added works at once and a token removed is refused at once, with no restart. The file is
``--file`` or the first of ``EDGELOOP_API_TOKENS_FILE``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import typer
from edgeloop_common.api_auth import ROLES, add_token, read_store_file, remove_token, token_files
from edgeloop_common.settings import CommonSettings

app = typer.Typer(no_args_is_help=True, help="API tokens and roles of the HTTP services.")

FileOption = typer.Option(None, "--file", help="The token store; default: the first of EDGELOOP_API_TOKENS_FILE.")


def _store(file: Path | None) -> Path:
    if file is not None:
        return file
    files = token_files(CommonSettings())
    if not files:
        typer.echo("no token store: pass --file or set EDGELOOP_API_TOKENS_FILE", err=True)
        raise typer.Exit(2)
    return files[0]


@app.command("add")
def add(
    name: str = typer.Argument(..., help="Who or what the token is for (a person, a service, a CI job)."),
    role: str = typer.Option(..., "--role", help=f"One of {', '.join(ROLES)}."),
    token_id: str = typer.Option(None, "--id", help="The token's id (default: random); letters, digits and '-'."),
    file: Path | None = FileOption,
) -> None:
    """Make a token and print it once: only its hash is kept."""
    try:
        stored, token = add_token(_store(file), name, role, token_id=token_id)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    typer.echo(token)
    typer.echo(f"token {stored.id} ({stored.role}) for {stored.name!r} added; it is not shown again", err=True)


@app.command("list")
def list_(
    file: Path | None = FileOption,
    as_json: bool = typer.Option(False, "--json", help="JSON (no hashes)."),
) -> None:
    """The tokens of the store: id, role, name, created (never a secret nor its hash)."""
    try:
        tokens = read_store_file(_store(file))
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    rows = [{k: v for k, v in asdict(token).items() if k != "sha256"} for token in tokens]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        typer.echo(f"{row['id']:<14} {row['role']:<9} {row['created_at']:<26} {row['name']}")


@app.command("remove")
def remove(
    id_or_name: str = typer.Argument(..., help="The token's id (or its name: every token of that name)."),
    file: Path | None = FileOption,
) -> None:
    """Remove a token: every service refuses it from its next request on."""
    try:
        removed = remove_token(_store(file), id_or_name)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    if not removed:
        typer.echo(f"no token with id or name {id_or_name!r}", err=True)
        raise typer.Exit(1)
    for token in removed:
        typer.echo(f"removed token {token.id} ({token.role}) of {token.name!r}")


@app.command("bootstrap")
def bootstrap(
    folder: Path = typer.Argument(..., help="Where the store (tokens.json) and each service's <name>.token go."),
    services: str = typer.Option(..., "--services", help="Comma-separated service names, e.g. ingest,registry."),
    owner: int = typer.Option(-1, "--owner", help="Give the files to this uid (and its group), e.g. 10001."),
) -> None:
    """A token per service (kept across runs) and, the first time, an admin token printed once (only its hash is
    kept): what `docker compose up` runs before the services (docker-compose.yml, the api-tokens service)."""
    store = folder / "tokens.json"
    try:
        known = {token.id for token in read_store_file(store)}
        for name in (s.strip() for s in services.split(",") if s.strip()):
            token_file = folder / f"{name}.token"
            if token_file.exists() and name in known:
                continue
            remove_token(store, name)  # a half-made one from an earlier run
            _, token = add_token(store, f"{name} service", "service", token_id=name)
            token_file.write_text(token + "\n")
            token_file.chmod(0o600)
            typer.echo(f"service token {name} made", err=True)
        if "admin" not in known:
            _, token = add_token(store, "first admin (bootstrap)", "admin", token_id="admin")
            typer.echo(f"the admin's API token (shown once, kept nowhere): {token}")
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    if owner >= 0:
        for path in [folder, *folder.iterdir()]:
            os.chown(path, owner, owner)
