"""`edgeloop demo` runs the whole standalone path: no Kafka, no Java, an embedded MQTT broker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.synthetic_photos import write_data_set

pytestmark = [pytest.mark.tf, pytest.mark.slow]


def _run_tiny_demo(
    tmp_path: Path, train_dir: Path, captures_dir: Path, *extra: str, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """`edgeloop demo` with an embedded broker and a quick first model (the pretrained backbone, few epochs)."""
    environment = {**os.environ, "EDGELOOP_MODE": "standalone"}
    # Nothing of the distributed path may be needed: point its addresses at closed ports.
    environment.update(EDGELOOP_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", EDGELOOP_DATABASE_URL="postgresql://nowhere:1/x")
    command = [sys.executable, "-m", "edgeloop.main", "demo", "--broker", "embedded", "--epochs", "5"]
    command += ["--rate", "20", "--state", str(tmp_path / "demo")]
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
    # The console over the demo's services, with a token made for this run (none was set).
    assert re.search(r"^console: http://127\.0\.0\.1:\d+ \(sign in with the token \S{20,}\)$", output, re.M), output
    cloud_act, _, edge_act = output.partition("--- an edge site: site-edge")
    captures = sorted(path.name for path in catdog_captures_dir.glob("*.jpg"))
    result_lines = [line for line in cloud_act.splitlines() if line.startswith("result: ")]
    assert sorted(line.split()[1] for line in result_lines) == captures
    assert all("(edgeloop-classifier v1)" in line and line.endswith("served by cloud") for line in result_lines)
    # The captures are photos kept out of train/, named by their class: a model that recognizes gets them right.
    answered = {line.split()[1]: line.split()[3] for line in result_lines}
    assert all(answered[name] == name.split(".")[0] for name in captures), result_lines
    assert f"sent {len(captures)}, acked {len(captures)}, results {len(captures)} (0 missing)" in cloud_act
    # Then the edge site (on by default): the same captures, answered at the site, each saying by whom.
    edge_results = [line for line in edge_act.splitlines() if line.startswith("result: ")]
    assert sorted(line.split()[1] for line in edge_results) == captures, edge_act
    served = r"\(edgeloop-classifier v1\).* served by (edge|cloud) at site-edge$"
    assert all(re.search(served, line) for line in edge_results), edge_results
    assert f"ingest: holds {len(captures)} of the {len(captures)} records site-edge answered" in edge_act
    # The standalone stores are local files under the state folder.
    assert (tmp_path / "demo" / "models" / "edgeloop-classifier" / "1" / "saved_model.pb").is_file()
    assert any((tmp_path / "demo" / "data").rglob("*.sqlite3"))


def test_the_demo_says_what_is_missing_when_it_has_no_photos(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "edgeloop.main", "demo", "--images", str(tmp_path / "nowhere")],
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
    completed = _run_tiny_demo(
        tmp_path, catdog_train_dir, catdog_captures_dir, "--learning-loop", "--no-edge-site", timeout_s=600
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    act_two = output[output.index("--- the learning loop") :]
    steps = [
        "TrainingRequested (manual by demo)",
        "ModelRegistered version 1",
        "ModelPromoted version 1 to production",
        "DeploymentUpdated site-a: ready, version 1",
        "photos before the change: answered by version 1,",
        "the pictures change: sensor noise (standard deviation 0.15 of full scale per pixel and channel): 160 photos",
        "DriftDetected on edgeloop-classifier v1 at site-a",
        "photos after the change: answered by version 1,",
        "photos before the change (",
        "the change was expected to move sharpness_laplacian_var: seen",
        "of the newest other photos",
        "TrainingRequested (new_labels",
        "ModelRegistered version 2: accuracy",
        "ModelPromoted version 2 to production",
        "DeploymentUpdated site-a: ready, version 2",
        "result: noise-",
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


def test_the_loop_runs_on_a_data_set_and_a_drift_it_has_never_seen(tmp_path: Path) -> None:
    """Three synthetic classes (tests/synthetic_photos.py), sensor noise: the sizes fit the data set, the alarm
    comes from the statistic noise moves, and the registry's verdict follows the accuracies it printed."""
    train_dir = write_data_set(tmp_path / "patterns", per_class=120)
    captures_dir = tmp_path / "captures"
    captures_dir.mkdir()
    for path in sorted(train_dir.rglob("*.jpg"))[:3]:
        shutil.copy(path, captures_dir / path.name)
    completed = _run_tiny_demo(
        tmp_path, train_dir, captures_dir, "--learning-loop", "--no-edge-site", "--drift", "noise"
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    act_two = output[output.index("--- the learning loop") :]
    assert "at site-a, sensor noise (standard deviation 0.08 of full scale per pixel and channel) ---" in act_two
    assert "3 classes (checks, dots, stripes); seed 59 photos per class, 23 before the change, 157 after, " in act_two
    assert "the change was expected to move sharpness_laplacian_var: seen" in act_two, act_two
    registered = re.search(r"ModelRegistered version 2: accuracy ([\d.]+), production v1 ([\d.]+)", act_two)
    decision = re.search(r"accuracy ([\d.]+) vs production version 1 [\d.]+ .*= ([\d.]+)", act_two)
    assert registered and decision, act_two
    promoted = float(decision[1]) >= float(decision[2])
    assert promoted == ("the retrained version was promoted and serving version 2" in act_two), act_two
    # Measured here: v2 0.841 against v1 0.730 on the same evaluation set (the new labels help).
    assert promoted, act_two
    results = [line for line in act_two.splitlines() if line.startswith("result: noise-")]
    assert results and all("(edgeloop-classifier v2;" in line for line in results), results


def test_a_refused_candidate_is_measured_on_the_same_unlabeled_photos(
    tmp_path: Path, catdog_train_dir: Path, catdog_captures_dir: Path
) -> None:
    """A change the retrained head does not learn well enough for the gate (a tenth of the resolution; measured:
    a tie on the evaluation set): version 2 is refused, the edge keeps version 1, and the demo still says how both
    versions did on the photos no one labeled, asking the model server for the refused version directly."""
    completed = _run_tiny_demo(
        tmp_path,
        catdog_train_dir,
        catdog_captures_dir,
        "--learning-loop",
        "--no-edge-site",
        "--drift",
        "downscale:0.1",
        timeout_s=600,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    act_two = output[output.index("--- the learning loop") :]
    assert "version 2 NOT promoted: refused:" in act_two, act_two
    measured = re.search(
        r"the (\d+) photos after the change that no one labeled: version 2 \(not promoted\) would have been right on "
        r"(\d+) \(\d+%\), version 1 was right on (\d+)",
        act_two,
    )
    assert measured, act_two
    unlabeled, right_v2, right_v1 = (int(group) for group in measured.groups())
    # 160 after the change, 96 labeled (hard examples first, some may be from before the change)
    assert 160 - 96 <= unlabeled < 160 and 0 <= right_v2 <= unlabeled and 0 <= right_v1 <= unlabeled
    assert "the retrained version was refused; the edge keeps version 1" in act_two
