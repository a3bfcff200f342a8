"""`edgeloop demo` runs the whole standalone path: no Kafka, no Java, an embedded MQTT broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.tf, pytest.mark.slow]


def test_the_demo_classifies_every_capture_with_the_embedded_broker(
    tmp_path: Path, catdog_train_dir: Path, catdog_captures_dir: Path
) -> None:
    environment = {**os.environ, "EDGELOOP_MODE": "standalone"}
    # Nothing of the distributed path may be needed: point its addresses at closed ports.
    environment.update(EDGELOOP_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", EDGELOOP_DATABASE_URL="postgresql://nowhere:1/x")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeloop_cli.main",
            "demo",
            "--broker",
            "embedded",
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--rate",
            "20",
            "--state",
            str(tmp_path / "demo"),
            "--images",
            str(catdog_captures_dir),
            "--train-data",
            str(catdog_train_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "mqtt:  embedded broker" in output
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
