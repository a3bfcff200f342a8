"""Centralised training of the failure model (``edgeloop train --telemetry``) on simulated site histories.

What a user observes: the model finds the failures of machines it never saw (held out by device), the exported
SavedModel answers ``:predict`` on EdgeLoop's model server with the Keras model's probabilities, and the version is
registered with its tabular signature, its PR-AUC as the policy metric, and promoted through the registry's gate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from edgeloop.main import app as cli
from edgeloop.sensors import fill_history
from edgeloop.train_telemetry import load_split
from edgeloop_common.settings import CommonSettings
from edgeloop_common.telemetry import model as failure
from edgeloop_common.telemetry.history import SiteHistory
from fastapi import FastAPI
from typer.testing import CliRunner

from tests.helpers import free_port

pytestmark = pytest.mark.tf

SITES = (("plant-a", "temperate", 1), ("plant-b", "hot", 2), ("plant-c", "cold", 3))
# Measured on these histories (seeded): held-out PR-AUC 0.95-0.98 for the logistic regression at a positive rate
# of about 0.1. The floor leaves room for other seeds and TensorFlow versions, and is still far above chance.
PR_AUC_FLOOR = 0.8


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


def flat(output: str) -> str:
    """The CLI's output with rich's line wrapping undone."""
    return " ".join(output.split())


@dataclass(frozen=True)
class Trained:
    histories: list[Path]
    out: Path
    registry_url: str
    output: str
    registry: Any


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    """Three site histories, the registry, and version 1 trained, registered and promoted by the CLI."""
    from edgeloop_registry.app import create_app
    from edgeloop_registry.settings import Settings

    root = tmp_path_factory.mktemp("telemetry-training")
    histories = []
    for site, profile, seed in SITES:
        history = SiteHistory(root / f"{site}.db")
        fill_history(history, site, 10, 1500, seed=seed, profile=profile)
        history.close()
        histories.append(root / f"{site}.db")
    registry = create_app(Settings(common=CommonSettings(mode="standalone", data_dir=root / "registry")))
    with serving(registry) as url:
        args = ["train", "--telemetry", "--out", str(root / "models"), "--register", url, "--epochs", "10"]
        for path in histories:
            args += ["--history", str(path)]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        yield Trained(histories, root / "models", url, flat(result.output), registry)


def test_the_model_finds_failures_of_machines_it_never_saw(trained: Trained) -> None:
    split = load_split(trained.histories, eval_fraction=0.25, seed=42)
    train, held_out = split.train, split.held_out
    assert len(held_out.labels) > 0 and held_out.labels.sum() > 10
    version_dir = trained.out / "machine-failure" / "1"
    model = failure.load_keras(version_dir)
    figures = failure.evaluate(failure.predict(model, held_out.features), held_out.labels)
    positive_rate = float(held_out.labels.mean())
    assert figures["pr_auc"] >= PR_AUC_FLOOR, figures
    assert figures["pr_auc"] > 4 * positive_rate  # far above a model that knows nothing (PR-AUC = positive rate)
    recorded = failure.read_metadata(version_dir)["metrics"]
    assert recorded["pr_auc"] == pytest.approx(figures["pr_auc"], abs=1e-6)  # the figure it registered is this one
    assert recorded["windows"] == len(held_out.labels) and recorded["train_windows"] == len(train.labels)
    assert 0.0 < recorded["threshold"] < 1.0 and recorded["recall"] > 0.5 and recorded["precision"] > 0.5
    assert "held out: PR-AUC" in trained.output and "epoch 10/10" in trained.output


def test_the_exported_model_is_served_with_the_keras_probabilities(trained: Trained) -> None:
    from edgeloop_model_server.embedded import serve_in_thread
    from edgeloop_model_server.settings import Settings

    held_out = load_split(trained.histories, eval_fraction=0.25, seed=42).held_out
    rows = held_out.features[:: max(1, len(held_out.labels) // 64)][:64]
    expected = failure.predict(failure.load_keras(trained.out / "machine-failure" / "1"), rows)
    settings = Settings(
        http_host="127.0.0.1",
        http_port=free_port(),
        grpc_host="127.0.0.1",
        grpc_port=free_port(),
        model_name="machine-failure",
        model_base_path=trained.out,
        poll_interval_s=0.3,
        inference_threads=2,
    )
    with serve_in_thread(settings) as server, httpx.Client(base_url=server.rest_url, timeout=30) as client:
        metadata = client.get("/v1/models/machine-failure/metadata").json()
        signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert list(signature["inputs"]) == ["features"] and list(signature["outputs"]) == ["failure_probability"]
        response = client.post("/v1/models/machine-failure:predict", json={"instances": rows.tolist()})
        assert response.status_code == 200, response.text
        served = np.array(response.json()["predictions"], dtype=np.float32)
        assert served.shape == (len(rows),)
        assert np.allclose(served, expected, atol=1e-5)
        wrong = client.post("/v1/models/machine-failure:predict", json={"instances": [[1.0, 2.0]]})
        assert wrong.status_code == 400  # 2 features instead of 25: refused with a reason
        assert "error" in wrong.json()


def test_the_version_is_registered_as_a_tabular_model_and_promoted_on_pr_auc(trained: Trained) -> None:
    with httpx.Client(base_url=trained.registry_url, timeout=10) as client:
        version = client.get("/v1/models/machine-failure/versions/1").json()
        assert client.get("/v1/models/machine-failure").json()["production_version"] == 1
    assert version["signature"]["kind"] == "tabular"
    assert version["signature"]["feature_names"] == list(failure.FEATURE_NAMES)
    assert version["signature"]["inputs"]["features"]["shape"] == [-1, 25]
    metrics = version["metrics"]
    assert metrics["policy_metric"] == "pr_auc" and metrics["pr_auc"] >= PR_AUC_FLOOR
    assert {"precision", "recall", "threshold", "positives", "windows", "evaluation_set_id"} <= set(metrics)
    assert version["reference_stats"]["kind"] == "telemetry_features"
    assert set(version["reference_stats"]["features"]) == set(failure.FEATURE_NAMES)
    sites = version["reference_stats"]["sites"]  # each site's own reference, for drift per site
    assert sorted(sites) == [site for site, _, _ in SITES]
    assert all(set(site["features"]) == set(failure.FEATURE_NAMES) and site["n"] > 100 for site in sites.values())
    assert version["lineage"]["parameters"]["training"] == "centralised"
    assert "promoted: no production version yet" in trained.output


def test_a_retraining_is_compared_with_production_on_its_own_held_out_machines(trained: Trained) -> None:
    # Another split (seed): another evaluation set, so the gate needs production measured on the candidate's set.
    args = ["train", "--telemetry", "--out", str(trained.out), "--register", trained.registry_url]
    args += ["--kind", "mlp", "--epochs", "8", "--seed", "7"]
    for path in trained.histories:
        args += ["--history", str(path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    output = flat(result.output)
    with httpx.Client(base_url=trained.registry_url, timeout=10) as client:
        version = client.get("/v1/models/machine-failure/versions/2").json()
    baseline = version["metrics"]["baseline"]
    assert baseline["version"] == 1 and 0.0 < baseline["pr_auc"] <= 1.0
    assert "production version 1 on the same held-out windows" in output
    assert version["lineage"]["parameters"]["model_kind"] == "mlp"
    # The gate's decision names the figure it compared and production's figure on the candidate's windows.
    assert f"version 1 {baseline['pr_auc']:.4f} (measured by the trainer" in output
    assert f"candidate version 2 pr_auc {version['metrics']['pr_auc']:.4f}" in output


def test_telemetry_training_without_histories_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "--telemetry", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--history" in result.output
    missing = CliRunner().invoke(
        cli, ["train", "--telemetry", "--out", str(tmp_path), "--history", str(tmp_path / "nowhere.db")]
    )
    assert missing.exit_code == 2 and "does not exist" in flat(missing.output)
