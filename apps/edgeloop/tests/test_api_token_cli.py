"""``edgeloop token add|list|remove`` against a store file, and a service reading that file while it changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from edgeloop.main import app
from edgeloop_common.api_auth import TokenRefusedError, TokenStore
from typer.testing import CliRunner


def test_add_list_remove(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store_file = tmp_path / "tokens.json"
    monkeypatch.setenv("EDGELOOP_API_TOKENS_FILE", str(store_file))
    runner = CliRunner()
    store = TokenStore([store_file])  # what a running service holds

    added = runner.invoke(app, ["token", "add", "carol", "--role", "operator"])
    assert added.exit_code == 0, added.output
    token = added.stdout.strip().splitlines()[0]
    assert token.startswith("elt_") and store.authenticate(token).name == "carol"

    listed = runner.invoke(app, ["token", "list", "--json"])
    assert listed.exit_code == 0 and '"carol"' in listed.stdout and token.split("_", 2)[2] not in listed.stdout
    assert "sha256" not in listed.stdout

    token_id = token.split("_")[1]
    removed = runner.invoke(app, ["token", "remove", token_id])
    assert removed.exit_code == 0 and token_id in removed.stdout
    with pytest.raises(TokenRefusedError):
        store.authenticate(token)
    assert runner.invoke(app, ["token", "remove", token_id]).exit_code == 1

    bad_role = runner.invoke(app, ["token", "add", "dave", "--role", "root"])
    assert bad_role.exit_code == 2 and "unknown role" in bad_role.output


def test_without_a_store_it_says_how_to_name_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGELOOP_API_TOKENS_FILE", raising=False)
    result = CliRunner().invoke(app, ["token", "list"])
    assert result.exit_code == 2 and "EDGELOOP_API_TOKENS_FILE" in result.output


def test_bootstrap_makes_each_service_a_token_once_and_the_admin_one_shown_once(tmp_path: Path) -> None:
    runner = CliRunner()
    folder = tmp_path / "auth"
    first = runner.invoke(app, ["token", "bootstrap", str(folder), "--services", "ingest,registry"])
    assert first.exit_code == 0, first.output
    admin = first.stdout.strip().rsplit(" ", 1)[-1]
    store = TokenStore([folder / "tokens.json"])
    assert store.authenticate(admin).role == "admin"
    ingest = (folder / "ingest.token").read_text().strip()
    assert store.authenticate(ingest).token_id == "ingest" and store.authenticate(ingest).role == "service"
    assert admin not in (folder / "tokens.json").read_text() and not (folder / "admin.token").exists()

    again = runner.invoke(app, ["token", "bootstrap", str(folder), "--services", "ingest,registry,drift"])
    assert again.exit_code == 0 and "elt_" not in again.stdout  # nothing shown again
    assert (folder / "ingest.token").read_text().strip() == ingest  # kept across runs
    assert store.authenticate(admin).role == "admin"
    assert store.authenticate((folder / "drift.token").read_text().strip()).token_id == "drift"
