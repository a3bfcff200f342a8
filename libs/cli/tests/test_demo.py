"""`edgeloop demo` runs the whole standalone path: no Kafka, no Java, an embedded MQTT broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.tf, pytest.mark.slow]


def _run_tiny_demo(
    tmp_path: Path, train_dir: Path, captures_dir: Path, *extra: str, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """`edgeloop demo` with an embedded broker and a tiny first model (its accuracy is not the point here)."""
    environment = {**os.environ, "EDGELOOP_MODE": "standalone"}
    # Nothing of the distributed path may be needed: point its addresses at closed ports.
    environment.update(EDGELOOP_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", EDGELOOP_DATABASE_URL="postgresql://nowhere:1/x")
    command = [sys.executable, "-m", "edgeloop_cli.main", "demo", "--broker", "embedded", "--epochs", "1"]
    command += ["--image-size", "32", "--rate", "20", "--state", str(tmp_path / "demo")]
    command += ["--images", str(captures_dir), "--train-data", str(train_dir), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=environment)


def test_the_demo_classifies_every_capture_with_the_embedded_broker(
    tmp_path: Path, catdog_train_dir: Path, catdog_captures_dir: Path
) -> None:
    completed = _run_tiny_demo(tmp_path, catdog_train_dir, catdog_captures_dir, "--no-learning-loop")
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "mqtt:  embedded broker" in output
    assert "learning loop" not in output
    captures = sorted(path.name for path in catdog_captures_dir.glob("*.jpg"))
    result_lines = [line for line in output.splitlines() if line.startswith("result: ")]
    assert sorted(line.split()[1] for line in result_lines) == captures
    assert all("(edgeloop-classifier v1)" in line for line in result_lines), result_lines
    assert f"sent {len(captures)}, acked {len(captures)}, results {len(captures)} (0 missing)" in output
    # The standalone stores are local files under the state folder.
    assert (tmp_path / "demo" / "models" / "edgeloop-classifier" / "1" / "saved_model.pb").is_file()
    assert any((tmp_path / "demo" / "data").rglob("*.sqlite3"))


def test_the_demo_says_what_is_missing_when_it_has_no_photos(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "edgeloop_cli.main", "demo", "--images", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "is not a folder" in completed.stderr


def test_the_demo_plays_the_learning_loop_in_standalone_mode(
    tmp_path: Path, catdog_train_dir: Path, catdog_captures_dir: Path
) -> None:
    """After the captures: drift, labels, retraining, promotion, rollout (local target), and the new version."""
    completed = _run_tiny_demo(tmp_path, catdog_train_dir, catdog_captures_dir, "--learning-loop", timeout_s=600)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    act_two = output[output.index("--- the learning loop") :]
    steps = [
        "TrainingRequested (manual by demo)",
        "ModelRegistered version 1",
        "ModelPromoted version 1 to production",
        "DeploymentUpdated site-a: ready, version 1",
        "photos in normal light: answered by version 1,",
        "DriftDetected on edgeloop-classifier v1 at site-a",
        "darker photos: answered by version 1,",
        "labeled 64 of the",
        "TrainingRequested (new_labels",
        "ModelRegistered version 2: accuracy",
        "ModelPromoted version 2 to production",
        "DeploymentUpdated site-a: ready, version 2",
        "result: dark-",
        "the retrained version was promoted and serving version 2",
    ]
    positions = [act_two.find(step) for step in steps]
    assert all(position >= 0 for position in positions), [s for s, p in zip(steps, positions, strict=True) if p < 0]
    assert positions == sorted(positions), act_two
    results = [line for line in act_two.splitlines() if line.startswith("result: ")]
    assert results and all("(edgeloop-classifier v2;" in line for line in results), results
    # Every service of the loop kept its state in SQLite under the state folder, none in PostgreSQL.
    stores = {path.name for path in (tmp_path / "demo" / "loop" / "data").glob("*.sqlite3")}
    assert {"registry.sqlite3", "trainer.sqlite3", "deployer.sqlite3", "ingest.sqlite3"} <= stores, stores
