"""`edgeloop demo --telemetry` plays the sensor loop standalone: alerts, drift after the change only, a federated
retraining across three site processes, the gate's promotion, and the new version scoring the readings.

The command runs as a user runs it (its own process, a fresh state folder) with the distributed path's addresses
pointed at closed ports: nothing of Kafka or PostgreSQL may be needed. The assertions read what it prints.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SITES = ("site-a", "site-b", "site-c")
CHANGED = "site-b"  # the demo's change happens at the second site


def _run(tmp_path: Path, *extra: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "EDGELOOP_MODE": "standalone"}
    environment.update(EDGELOOP_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", EDGELOOP_DATABASE_URL="postgresql://nowhere:1/x")
    command = [sys.executable, "-m", "edgeloop.main", "demo", "--telemetry", "--state", str(tmp_path / "demo"), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=environment)


def _section(output: str, title: str, following: str | None) -> str:
    start = output.index(f"--- {title}")
    return output[start : output.index(f"--- {following}", start)] if following else output[start:]


@pytest.mark.tf
@pytest.mark.slow
def test_the_telemetry_demo_alerts_detects_the_change_retrains_across_sites_and_rolls_out(tmp_path: Path) -> None:
    completed = _run(tmp_path, timeout_s=900)
    output = completed.stdout
    assert completed.returncode == 0, output + completed.stderr
    first, sensors = output[: output.index("--- sensors")], _section(output, "sensors", "drift:")
    drift = _section(output, "drift:", "federated")
    federated, rollout = _section(output, "federated", "rollout"), _section(output, "rollout", None)

    # The first version: trained centrally, registered, promoted, rolled out to every site.
    assert "ModelRegistered machine-failure version 1" in first
    assert "ModelPromoted machine-failure version 1 to production" in first
    for site in SITES:
        assert f"DeploymentUpdated {site}: ready, machine-failure version 1" in first, first

    # 1. Readings become alerts at the devices, from version 1.
    alerts = re.findall(
        r"alert +(site-\w-\d+) at (site-\w): failure probability ([\d.]+) >= ([\d.]+) \((\S+) v(\d)\)", sensors
    )
    assert alerts, sensors
    assert all(
        device.startswith(site) and float(p) >= float(t) and (model, v) == ("machine-failure", "1")
        for device, site, p, t, model, v in alerts
    ), alerts
    # No drift before the change: every site compared with its own reference, no alarm.
    for site in SITES:
        assert re.search(
            rf"drift +{site}: \d+ checks of its last 200 sampled windows against its own reference of "
            r"v1: no drift",
            sensors,
        ), sensors
    assert "DriftDetected" not in first + sensors

    # 2. Drift after the change, at the changed site only, and a training request.
    assert f"sensors   {CHANGED}: a new machine type" in drift, drift
    detected = re.findall(r"DriftDetected on machine-failure v1 at (site-\w): .*after the change\)", drift)
    assert detected == [CHANGED], drift
    assert "TrainingRequested for machine-failure (drift by drift)" in drift
    assert re.search(
        rf"verdict: drift at {CHANGED} once [\d,]+ of its readings from after the change had been scored", drift
    ), drift
    assert re.search(rf"site +{CHANGED}: [\d,]+ readings in its history, [1-9][\d,]* since the change", drift), drift

    # 3. The federated retraining: every site's client, every round with every site, a version with its lineage.
    for site in SITES:
        assert f"edgeloop federated client --site {site} --history" in federated, federated
    rounds = re.findall(
        r"round (\d)/2: 3 sites answered \(site-a ([\d,]+) windows, site-b ([\d,]+) windows, "
        r"site-c ([\d,]+) windows\)",
        federated,
    )
    assert [number for number, *_ in rounds] == ["1", "2"], federated
    assert all(int(count.replace(",", "")) > 0 for _, *counts in rounds for count in counts), rounds
    registered = re.search(
        r"ModelRegistered machine-failure version 2: PR-AUC ([\d.]+) on held-out machines, "
        r"production v1 ([\d.]+) on the same held-out windows",
        federated,
    )
    assert registered, federated
    assert re.search(
        r"version 2 lineage: trained_by federated \(fedavg\), 2 rounds x \d+ local epochs, reason drift", federated
    ), federated
    assert "version 2 lineage: sites site-a, site-b, site-c, clients per round [3, 3]" in federated, federated
    verdict = re.search(
        r"promotion gate on version 2: promoted: candidate version 2 pr_auc ([\d.]+) vs production "
        r"version 1 ([\d.]+)",
        federated,
    )
    assert verdict and float(verdict[1]) >= float(verdict[2]), federated
    assert (verdict[1], verdict[2]) == (f"{float(registered[1]):.4f}", f"{float(registered[2]):.4f}")

    # 4. The rollout, and new readings scored by version 2 (none by version 1).
    for site in SITES:
        assert f"DeploymentUpdated {site}: ready, machine-failure version 2" in federated + rollout, rollout
    scored = re.findall(
        r"TelemetryScored (site-\w-\d+) at (site-\w): failure probability [\d.]+ \(threshold [\d.]+, "
        r"machine-failure v(\d), served by cloud\)",
        rollout,
    )
    assert {site for _, site, _ in scored} == set(SITES) and {v for *_, v in scored} == {"2"}, rollout
    summary = re.search(
        r"after the rollout: ([\d,]+) readings scored, ([\d,]+) by version 2 .*, 0 by version 1", rollout
    )
    assert summary and summary[1] == summary[2] and int(summary[2].replace(",", "")) > 0, rollout
    assert "telemetry: done: drift at site-b; federated version 2 promoted over version 1" in output

    # What stays where: each site's readings in its own history file; the versions in the local model folder.
    state = tmp_path / "demo" / "telemetry"
    assert all((state / "sites" / site / "site-history.sqlite3").is_file() for site in SITES)
    assert all((state / "models" / "machine-failure" / v / "saved_model.pb").is_file() for v in ("1", "2"))


def test_the_telemetry_demo_refuses_what_it_cannot_play(tmp_path: Path) -> None:
    unknown = _run(tmp_path, "--sensor-change", "melted-sensor")
    assert unknown.returncode == 2
    assert "the sensors' change must be one of recalibrated-temperature, new-machine-type" in unknown.stderr
    alone = _run(tmp_path, "--sites", "1")
    assert alone.returncode == 2 and "--sites" in alone.stderr
    assert not (tmp_path / "demo").exists()  # nothing started
