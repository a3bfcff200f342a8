"""``edgeloop train --register URL`` against the real registry, and ``--trainer URL`` against the trainer service.

Both servers run in a thread under uvicorn on a free local port, as a person's
terminal would reach them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from edgeloop.main import app as cli
from edgeloop_common.settings import CommonSettings
from fastapi import FastAPI
from trainer_testing import FakeEngine, FakeRegistry, catdog_subset, seed_folder
from typer.testing import CliRunner

from tests.helpers import free_port


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.mark.tf
def test_a_version_trained_by_hand_is_registered_and_promoted(tmp_path: Path, catdog_train_dir: Path) -> None:
    from edgeloop_registry.app import create_app
    from edgeloop_registry.settings import Settings

    data = catdog_subset(catdog_train_dir, tmp_path / "data", per_class=12)
    registry = create_app(Settings(common=CommonSettings(mode="standalone", data_dir=tmp_path / "registry")))
    with serving(registry) as url:
        trained = CliRunner().invoke(
            cli,
            [
                *("train", "--data", str(data), "--model", "catdog", "--out", str(tmp_path / "models")),
                *("--epochs", "5", "--batch-size", "16", "--no-progress"),  # the default backbone: Lite0
                *("--register", url, "--promote"),
            ],
        )
        version = httpx.get(f"{url}/v1/models/catdog/versions/1").json()
        aliases = httpx.get(f"{url}/v1/models/catdog/aliases").json()
    unreachable = CliRunner().invoke(
        cli,
        [
            *("train", "--data", str(data), "--model", "catdog", "--out", str(tmp_path / "models")),
            *("--backbone", "small-cnn", "--epochs", "1", "--image-size", "32", "--no-progress"),
            *("--register", "http://127.0.0.1:9"),
        ],
    )

    assert trained.exit_code == 0, trained.output
    assert "registered catdog version 1" in trained.output and "promoted:" in trained.output
    assert version["artifact_uri"] == (tmp_path / "models" / "catdog" / "1").as_uri()
    assert 0.0 <= version["metrics"]["accuracy"] <= 1.0
    assert version["metrics"]["evaluation_set_id"].startswith("evalset-")
    assert version["reference_stats"]["n"] == sum(version["metrics"]["eval_counts"].values()) > 0
    assert version["lineage"]["parameters"]["epochs"] == 5
    backbone = version["lineage"]["parameters"]["backbone"]
    assert backbone["name"] == "efficientnet-lite0" and backbone["input_size"] == 224, backbone
    assert len(backbone["weights_sha256"]) == 64 and backbone["fine_tuned_blocks"] == 0
    assert version["metrics"]["accuracy"] >= 0.8, version["metrics"]  # pretrained: right on photos it never saw
    assert [(a["alias"], a["version"]) for a in aliases] == [("production", 1)]
    assert unreachable.exit_code == 1 and "not registered" in unreachable.output
    assert (tmp_path / "models" / "catdog" / "2").is_dir()  # the export stays; it is only not registered


def test_the_cli_asks_the_trainer_service_and_follows_the_run(tmp_path: Path) -> None:
    from edgeloop_trainer.app import create_app
    from edgeloop_trainer.settings import Settings

    settings = Settings(
        seed_data_dir=seed_folder(tmp_path / "seed", {"cat": 8, "dog": 8}),
        ingest_url="",
        eval_fraction=0.3,
        common=CommonSettings(mode="standalone", data_dir=tmp_path / "data"),
    )
    trainer = create_app(settings, registry=FakeRegistry(), engine=FakeEngine(tmp_path / "models"))
    with serving(trainer) as url:
        followed = CliRunner().invoke(cli, ["train", "--model", "catdog", "--trainer", url, "--requested-by", "bob"])
        runs = httpx.get(f"{url}/v1/trainings").json()["trainings"]
    refused = CliRunner().invoke(cli, ["train", "--model", "../x", "--trainer", url])
    nothing = CliRunner().invoke(cli, ["train", "--model", "catdog"])

    assert followed.exit_code == 0, followed.output
    assert "catdog version 1 registered" in followed.output and "promoted" in followed.output
    assert runs[0]["requests"][0]["requested_by"] == "bob"
    assert refused.exit_code == 1 and "error" in refused.output
    assert nothing.exit_code == 2 and "--data and --out" in nothing.output
