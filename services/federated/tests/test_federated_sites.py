"""Federated training over real processes: three sites' Flower clients dial the service's Flower server over gRPC.

* one site is killed (SIGKILL) in the middle of a round: the round completes with the two that answered, and the
  training still registers a version in the real registry, with its lineage (rounds, sites, window counts);
* FedProx runs, and nothing of a site's raw readings crosses its channel to the server (a recording TCP proxy sits
  between them), while the weights do.
"""

from __future__ import annotations

import itertools
import signal
import struct
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from edgeloop_common.settings import CommonSettings
from edgeloop_common.telemetry.history import SiteHistory
from federated_testing import RecordingProxy, fill_sites, serving, start_client, stop

from tests.helpers import free_port

pytestmark = [pytest.mark.tf, pytest.mark.slow]


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return fill_sites(tmp_path_factory.mktemp("sites"), devices=8, readings=1500)


def _wait(url: str, training_id: str, done: callable, timeout: float = 240) -> dict:  # type: ignore[valid-type]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        training = httpx.get(f"{url}/v1/trainings/{training_id}", timeout=10).json()
        if done(training) or training["state"] == "failed":
            return training
        time.sleep(0.05)
    raise AssertionError(f"training {training_id} still {training['state']}: {training['message']}")


def test_a_site_killed_mid_round_still_gives_a_registered_version_with_its_lineage(
    sites: dict[str, Path], tmp_path: Path
) -> None:
    from edgeloop_federated.app import create_app
    from edgeloop_federated.settings import Settings
    from edgeloop_registry.app import create_app as registry_app
    from edgeloop_registry.settings import Settings as RegistrySettings

    flower = f"127.0.0.1:{free_port()}"
    registry = registry_app(RegistrySettings(common=CommonSettings(mode="standalone", data_dir=tmp_path / "registry")))
    clients = []
    with serving(registry) as registry_url:
        settings = Settings(
            flower_address=flower,
            registry_url=registry_url,
            model_base=tmp_path / "models",
            rounds=3,
            local_epochs=3,
            min_available_clients=3,
            min_fit_clients=2,
            round_timeout_s=60,
            # three TensorFlow processes starting at once take a minute or more on 2 busy cores
            connect_timeout_s=300,
            common=CommonSettings(mode="standalone", data_dir=tmp_path / "federated"),
        )
        with serving(create_app(settings)) as url:
            accepted = httpx.post(f"{url}/v1/trainings", json={"requested_by": "test"}, timeout=10)
            assert accepted.status_code == 202, accepted.text
            training_id = accepted.json()["training_id"]
            try:
                for site, path in sites.items():
                    clients.append(start_client(site, path, flower, tmp_path / f"{site}.log"))
                after_round_1 = _wait(url, training_id, lambda t: len(t["rounds"]) >= 1)
                assert after_round_1["state"] == "running", after_round_1
                clients[2].send_signal(signal.SIGKILL)  # round 2 has just been sent out: site-c dies fitting it
                finished = _wait(url, training_id, lambda t: t["state"] in ("succeeded", "failed"))
            finally:
                for process in clients:
                    stop(process)
            assert finished["state"] == "succeeded", (finished, (tmp_path / "site-c.log").read_text()[-2000:])
            rounds = finished["rounds"]
            assert [len(r["clients"]) for r in rounds] == [3, 2, 2], rounds
            assert rounds[1]["failures"] == 1 and sorted(rounds[1]["clients"]) == ["site-a", "site-b"], rounds[1]
            assert rounds[1]["duration_s"] < settings.round_timeout_s  # the dead site did not hold the round up

        version = httpx.get(f"{registry_url}/v1/models/machine-failure/versions/1", timeout=10).json()
        lineage = version["lineage"]["parameters"]
        assert lineage["trained_by"] == "federated" and lineage["strategy"] == "fedavg"
        assert lineage["rounds"] == 3 and lineage["clients_per_round"] == [3, 2, 2]
        assert lineage["failures_per_round"] == [0, 1, 0]
        windows = {site: len(SiteHistory(path).training_windows().labels) for site, path in sites.items()}
        for site, count in lineage["samples_per_client"].items():
            assert 0 < count < windows[site]  # its training devices' windows: the held-out ones stayed out
        assert set(lineage["sample_counts_per_round"][0]) == {"site-a", "site-b", "site-c"}
        metrics = version["metrics"]
        assert metrics["policy_metric"] == "pr_auc"
        assert metrics["pr_auc"] > 2 * metrics["positive_rate"], metrics  # it learned something
        assert {"precision", "recall", "threshold"} <= set(metrics)
        assert version["signature"]["kind"] == "tabular"
        assert version["reference_stats"]["kind"] == "telemetry_features"
        assert len(version["reference_stats"]["features"]["rpm_mean"]) > 100
        assert Path(version["artifact_uri"].removeprefix("file://"), "saved_model.pb").exists()
        aliases = httpx.get(f"{registry_url}/v1/models/machine-failure/aliases", timeout=10).json()
        entries = aliases["aliases"] if isinstance(aliases, dict) else aliases
        assert any(a["alias"] == "production" and a["version"] == 1 for a in entries), aliases


def _raw_readings(history: Path) -> list[list[list[float]]]:
    """Each device's readings, as rows of the signals' values in arrival order."""
    store = SiteHistory(history)
    devices = []
    for site, device in store.devices():
        rows = [
            [float(v) for v in reading.readings.values() if isinstance(v, int | float)]
            for reading in store.device_history(site, device)
        ]
        devices.append([row for row in rows if row])
    store.close()
    return devices


def _distinctive(value: float) -> bool:
    """A value a byte search can pin on a reading: four or more significant digits (2.0 or 1.75 are in any stream)."""
    return len(repr(abs(value)).replace(".", "").strip("0")) >= 4


def test_fedprox_runs_and_no_raw_reading_crosses_the_channel_while_the_weights_do(
    sites: dict[str, Path], tmp_path: Path
) -> None:
    from edgeloop_federated.adapters.flower_server import FlowerFederation
    from edgeloop_federated.ports import TrainingSpec

    port = free_port()
    proxy = RecordingProxy(("127.0.0.1", port))
    spec = TrainingSpec(
        rounds=2,
        strategy="fedprox",
        proximal_mu=0.5,
        local_epochs=2,
        min_fit_clients=2,
        min_available_clients=2,
        round_timeout_s=60,
        connect_timeout_s=120,
    )
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = FlowerFederation(f"127.0.0.1:{port}").run("t", spec, None, lambda *a: None)
        except Exception as exc:  # noqa: BLE001 -- reported by the assertion below
            outcome["error"] = exc

    server = threading.Thread(target=run, daemon=True)
    server.start()
    watched = start_client("site-a", sites["site-a"], proxy.address, tmp_path / "site-a.log")
    other = start_client("site-b", sites["site-b"], f"127.0.0.1:{port}", tmp_path / "site-b.log")
    try:
        server.join(timeout=240)
    finally:
        stop(watched)
        stop(other)
        proxy.close()
    assert "result" in outcome, (outcome.get("error"), (tmp_path / "site-a.log").read_text()[-2000:])
    result = outcome["result"]
    assert [len(r.clients) for r in result.rounds] == [2, 2]

    sent = bytes(proxy.to_server)
    received = bytes(proxy.to_client)
    crossed = sent + received
    assert len(sent) > 1000 and len(received) > 1000
    # FedProx went over the wire: its mu is in every fit instruction the site received
    assert b"proximal_mu" in received
    # the weights did cross: the final global model's kernel reached the site (evaluation round), as float32
    kernel = result.weights[-2].astype("<f4").tobytes()
    assert kernel in received
    # and the site's own fitted weights went up: some float32 array of the right size left the site
    assert sent.count(b"\x93NUMPY") >= 2 * len(result.weights)  # Flower's ndarray encoding, per round

    # Raw readings, searched as a leak would carry them. Each distinctive value alone as float64 and as text; as
    # float32 a single value is 4 bytes, which ~1 MB of traffic matches by chance, so float32 is searched as a
    # reading's row of signals and as two consecutive readings of one signal (how arrays of readings travel).
    devices = _raw_readings(sites["site-a"])
    singles = {value for rows in devices for row in rows for value in row if _distinctive(value)}
    assert len(singles) > 1000
    leaks = []
    for value in singles:
        as_float64 = struct.pack("<d", value)
        # A whole number such as rpm 1438.0 has four zero low bytes as float64: its eight bytes are a float32 0.0
        # followed by one particular float32, which weights carry by chance. Such a value is searched as text only
        # (and in the rows below), not by a pattern with 20 significant bits.
        encodings = [repr(value).encode()] if as_float64[:4] == bytes(4) else [as_float64, repr(value).encode()]
        for encoded in encodings:
            if encoded in crossed:
                leaks.append((value, encoded))
    for rows in devices:
        for row, following in itertools.pairwise(rows):
            if np.asarray(row, "<f4").tobytes() in crossed:
                leaks.append((row, "row as float32"))
            for a, b in zip(row, following, strict=False):
                if _distinctive(a) and np.asarray([a, b], "<f4").tobytes() in crossed:
                    leaks.append(((a, b), "consecutive float32"))
    assert not leaks, f"{len(leaks)} raw readings crossed the channel, e.g. {leaks[:12]}"
