"""The API token store: hashed at rest, compared in constant time, read again when its file changes, a removed
token refused at once, a broken file refusing everything (fail closed)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from edgeloop_common.api_auth import (
    TokenRefusedError,
    TokenStore,
    add_token,
    own_token,
    remove_token,
    service_headers,
    split_token,
)
from edgeloop_common.settings import CommonSettings, ConfigurationError


def test_the_store_keeps_only_the_hash_of_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    stored, token = add_token(path, "alice", "operator")
    token_id, secret = split_token(token)
    text = path.read_text()
    assert token_id == stored.id and secret not in text and token not in text
    entry = json.loads(text)["tokens"][0]
    assert entry["sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert set(entry) == {"id", "name", "role", "created_at", "sha256"}
    assert os.stat(path).st_mode & 0o777 == 0o600
    principal = TokenStore([path]).authenticate(token)
    assert (principal.token_id, principal.name, principal.role) == (stored.id, "alice", "operator")


def test_a_wrong_secret_an_unknown_id_and_a_malformed_token_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    stored, token = add_token(path, "alice", "viewer")
    store = TokenStore([path])
    cases = {
        token[:-1] + ("A" if token[-1] != "A" else "B"): "wrong_secret",
        token.replace(stored.id, "f" * 12): "unknown",
        "elt_" + stored.id: "malformed",
        "Bearer " + token: "malformed",
        "": "malformed",
    }
    for offered, reason in cases.items():
        with pytest.raises(TokenRefusedError) as refused:
            store.authenticate(offered)
        assert refused.value.reason == reason, offered


def test_a_token_added_or_removed_counts_at_the_next_request(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = TokenStore([path])  # the file does not exist yet: nothing is accepted
    _, first = add_token(path, "first", "viewer")
    assert store.authenticate(first).name == "first"
    second_stored, second = add_token(path, "second", "admin")
    assert store.authenticate(second).role == "admin"
    assert [t.id for t in remove_token(path, second_stored.id)] == [second_stored.id]
    with pytest.raises(TokenRefusedError, match="unknown or removed"):
        store.authenticate(second)
    assert store.authenticate(first).name == "first"
    assert remove_token(path, "first") and not remove_token(path, "first")  # by name too, once


def test_a_broken_store_refuses_every_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    _, token = add_token(path, "alice", "viewer")
    store = TokenStore([path])
    assert store.authenticate(token)
    path.write_text('{"tokens": [{"id": "half"')  # e.g. edited by hand and broken
    with pytest.raises(TokenRefusedError):
        store.authenticate(token)


def test_several_store_files_are_read(tmp_path: Path) -> None:
    chart, own = tmp_path / "chart.json", tmp_path / "own.json"
    _, service = add_token(chart, "ingest", "service", token_id="ingest")
    _, person = add_token(own, "bob", "operator")
    store = TokenStore.from_settings(CommonSettings(api_tokens_file=f"{chart}, {own}"))
    assert store.authenticate(service).role == "service" and store.authenticate(person).role == "operator"


def test_an_unknown_role_or_a_duplicate_id_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    with pytest.raises(ValueError, match="unknown role"):
        add_token(path, "x", "root")
    add_token(path, "ingest", "service", token_id="ingest")
    with pytest.raises(ValueError, match="already"):
        add_token(path, "ingest again", "service", token_id="ingest")


def test_own_token_from_the_setting_or_its_file(tmp_path: Path) -> None:
    assert own_token(CommonSettings(api_token="elt_a_" + "x" * 20)) == "elt_a_" + "x" * 20
    file = tmp_path / "token"
    file.write_text("elt_b_" + "y" * 20 + "\n")
    assert service_headers(CommonSettings(api_token_file=file)) == {"Authorization": "Bearer elt_b_" + "y" * 20}
    assert service_headers(CommonSettings()) == {}
    with pytest.raises(ConfigurationError, match="EDGELOOP_API_TOKEN_FILE"):
        own_token(CommonSettings(api_token_file=tmp_path / "missing"))
