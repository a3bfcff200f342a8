"""`edgeloop demo`'s edge site: an edge agent with its own broker and model server beside the cloud services, and
``--offline``: the cloud cut off from the site, the edge answering, the uplink backlog growing and draining."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.tf, pytest.mark.slow]


def _run_demo_with_the_test_model(
    tmp_path: Path, model_base: Path, model_name: str, captures_dir: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """The demo on the session's small test model (copied in: no training), embedded brokers, no learning loop."""
    shutil.copytree(model_base, tmp_path / "demo" / "models")
    environment = {**os.environ, "EDGELOOP_MODE": "standalone"}
    # Nothing of the distributed path may be needed: point its addresses at closed ports.
    environment.update(EDGELOOP_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", EDGELOOP_DATABASE_URL="postgresql://nowhere:1/x")
    command = [sys.executable, "-m", "edgeloop.main", "demo", "--broker", "embedded", "--no-learning-loop"]
    command += ["--model", model_name, "--backbone", "small-cnn", "--state", str(tmp_path / "demo")]
    command += ["--images", str(captures_dir), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)


def test_the_edge_site_answers_while_the_cloud_is_cut_off_and_its_backlog_drains_after(
    tmp_path: Path, trained_model_base: Path, trained_model_name: str, catdog_captures_dir: Path
) -> None:
    completed = _run_demo_with_the_test_model(
        tmp_path,
        trained_model_base,
        trained_model_name,
        catdog_captures_dir,
        *("--count", "3", "--rate", "10", "--offline", "--offline-s", "2"),
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    cloud_act, _, edge_act = output.partition("--- an edge site: site-edge")
    assert edge_act, output
    online, _, offline = edge_act.partition("--- offline: the cloud is cut off from site-edge for 2 s ---")
    assert offline, edge_act

    # The cloud's own camera: every answer says where it came from and the version.
    cloud_results = [line for line in cloud_act.splitlines() if line.startswith("result: ")]
    assert len(cloud_results) == 3 and all(
        line.endswith("served by cloud") and f"({trained_model_name} v1)" in line for line in cloud_results
    ), cloud_results

    # The site's node group serves the model from its own folder, linked as the deployer's local target does.
    assert f"{trained_model_name} v1 ({tmp_path / 'demo' / 'data' / 'node-groups' / 'site-edge'})" in online
    assert (tmp_path / "demo" / "data" / "node-groups" / "site-edge" / trained_model_name / "1").is_symlink()
    online_results = [line for line in online.splitlines() if line.startswith("result: ")]
    assert len(online_results) == 3, online
    assert all(
        re.search(rf"\({trained_model_name} v1\).* served by (edge|cloud) at site-edge$", line)
        for line in online_results
    ), online_results
    assert "uplink: backlog 0 at site-edge: every record is at ingest (link up;" in online

    # Offline: the cloud is down for the site, the edge answers every picture, the backlog grows ...
    assert "cloud: DOWN for site-edge" in offline
    offline_results = [line for line in offline.splitlines() if line.startswith("result: ")]
    assert len(offline_results) == 3 and all(
        line.endswith("served by edge at site-edge") and f"({trained_model_name} v1)" in line
        for line in offline_results
    ), offline_results
    while_away = re.search(r"uplink: backlog (\d+) records at site-edge while the cloud was away \(link down", offline)
    assert while_away and int(while_away[1]) == 3, offline
    # ... and once the cloud is back it drains to 0, and ingest holds every record the site answered.
    back = offline.index("cloud: back for site-edge after")
    assert "uplink: backlog 0 at site-edge: every record is at ingest (link up;" in offline[back:], offline
    assert re.search(r"ingest: holds 6 of the 6 records site-edge answered \(.*3 by edge", offline), offline
    assert "sent 3, acked 3, results 3 (0 missing)" in offline
    # The edge store is a local file under the demo's data folder.
    assert (tmp_path / "demo" / "data" / "edge-site-edge" / "edge.sqlite3").is_file()


def test_the_edge_site_can_be_left_out_and_offline_needs_it(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "edgeloop.main", "demo", "--no-edge-site", "--offline", "--state", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "--offline cuts the cloud off from the edge site: it needs --edge-site" in completed.stderr
