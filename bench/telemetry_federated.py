"""Federated vs centralised training of the failure model (issue 14, docs/telemetry.md "Federated learning").

Three sites (``edgeloop.sensors``: profiles temperate, hot, cold; so not identically distributed) each get a
SiteHistory. Then, on the same held-out machines (the failure model's ``is_held_out``, by device):

* federated: the service's Flower server (``FlowerFederation``, in this process) and one
  ``edgeloop federated client`` process per site over Flower's gRPC; ``rounds`` x ``local_epochs``; the held-out
  figures come from the sites' summed per-bin counts (``metrics_from_counts``), nothing else left the sites;
* centralised: the failure model trained on the union of the same sites' training windows for
  ``rounds x local_epochs`` epochs (as ``edgeloop train --telemetry`` does: normalisation adapted on them, threshold
  F1-best on them), scored on the union of the held-out windows: PR-AUC exact and from the same per-bin counts.

Target (issue 14): federated PR-AUC within 0.02 of centralised; and the time per federated round with 3 sites.

    .venv/bin/python bench/telemetry_federated.py                       # FedAvg, logistic
    .venv/bin/python bench/telemetry_federated.py --strategy fedprox --rounds 5

``federated_figures(...)`` is what ``bench/telemetry.py`` calls for its ``federated`` section.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

SITES = (("site-a", "temperate", 1), ("site-b", "hot", 2), ("site-c", "cold", 3))
TARGET_PR_AUC_GAP = 0.02


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _fill(folder: Path, devices: int, readings: int) -> dict[str, Path]:
    from edgeloop.sensors import fill_history
    from edgeloop_common.telemetry.history import SiteHistory

    paths = {}
    for site, profile, seed in SITES:
        path = folder / f"{site}.db"
        history = SiteHistory(path)
        fill_history(history, site, devices, readings, seed=seed, profile=profile)
        history.close()
        paths[site] = path
    return paths


def _federated(paths: dict[str, Path], spec: Any, logs: Path) -> Any:
    from edgeloop_federated.adapters.flower_server import FlowerFederation

    address = f"127.0.0.1:{_free_port()}"
    outcome: dict[str, Any] = {}

    def progress(state: str, message: str, record: Any = None) -> None:
        print(f"  federated: {message}", flush=True)

    def run() -> None:
        try:
            outcome["result"] = FlowerFederation(address).run("bench", spec, None, progress)
        except Exception as exc:  # noqa: BLE001 -- reported below with the clients' logs
            outcome["error"] = exc

    server = threading.Thread(target=run, daemon=True)
    server.start()
    clients = []
    for site, path in paths.items():
        command = [sys.executable, "-m", "edgeloop.main", "federated", "client", "--site", site]
        command += ["--history", str(path), "--server", address, "--once", "--connect-timeout-s", "120"]
        with (logs / f"{site}.log").open("wb") as out:
            clients.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT))
    server.join()
    for process in clients:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    if "error" in outcome:
        raise RuntimeError(f"federated training failed: {outcome['error']} (client logs in {logs})")
    return outcome["result"]


def _centralised(paths: dict[str, Path], epochs: int, kind: str, seed: int) -> dict[str, Any]:
    from edgeloop_common.telemetry import model as failure_model
    from edgeloop_common.telemetry.features import concatenate
    from edgeloop_common.telemetry.history import SiteHistory
    from edgeloop_federated.site import site_windows

    parts = []
    for site, path in paths.items():
        history = SiteHistory(path)
        parts.append(site_windows(history, site))
        history.close()
    train = concatenate(part.train for part in parts)
    held = concatenate(part.held_out for part in parts)
    started = time.perf_counter()
    network = failure_model.build_model(kind, normalization_from=train.features, seed=seed)  # type: ignore[arg-type]
    failure_model.fit(network, train, epochs=epochs, seed=seed)
    seconds = time.perf_counter() - started
    threshold = failure_model.evaluate(failure_model.predict(network, train.features), train.labels)["threshold"]
    scores = failure_model.predict(network, held.features)
    exact = failure_model.evaluate(scores, held.labels, threshold=threshold)
    binned_threshold = failure_model.metrics_from_counts(
        failure_model.score_counts(failure_model.predict(network, train.features), train.labels)
    )["threshold"]
    binned = failure_model.metrics_from_counts(
        failure_model.score_counts(scores, held.labels), threshold=binned_threshold
    )
    return {
        "exact": exact,
        "binned": binned,
        "train_windows": len(train.labels),
        "held_out_windows": len(held.labels),
        "seconds": seconds,
    }


def federated_figures(
    *,
    devices: int = 12,
    readings: int = 2500,
    rounds: int = 5,
    local_epochs: int = 4,
    strategy: str = "fedavg",
    proximal_mu: float = 0.1,
    kind: str = "logistic",
    seed: int = 0,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Run both trainings on the same three sites and held-out machines; print and return the figures."""
    from edgeloop_federated.ports import TrainingSpec

    with tempfile.TemporaryDirectory(prefix="edgeloop-federated-bench-") as scratch:
        folder = workdir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        paths = _fill(folder, devices, readings)
        print(f"3 sites x {devices} machines x {readings} readings filled in {time.perf_counter() - started:.1f} s")
        spec = TrainingSpec(
            rounds=rounds,
            strategy=strategy,  # type: ignore[arg-type]
            proximal_mu=proximal_mu,
            model_kind=kind,  # type: ignore[arg-type]
            local_epochs=local_epochs,
            min_fit_clients=3,
            min_available_clients=3,
            round_timeout_s=300,
            connect_timeout_s=300,
            seed=seed,
        )
        result = _federated(paths, spec, folder)
        central = _centralised(paths, rounds * local_epochs, kind, seed)
    federated_pr_auc = float(result.metrics["pr_auc"])
    gap = federated_pr_auc - float(central["binned"]["pr_auc"])
    durations = [record.duration_s for record in result.rounds]
    later = durations[1:] or durations
    figures = {
        "sites": len(SITES),
        "devices_per_site": devices,
        "readings_per_device": readings,
        "strategy": strategy,
        "model_kind": kind,
        "rounds": rounds,
        "local_epochs": local_epochs,
        "held_out_windows": central["held_out_windows"],
        "federated_held_out_windows": int(result.metrics["windows"]),
        "train_windows": central["train_windows"],
        "positive_rate": round(float(result.metrics["positive_rate"]), 4),
        "federated_pr_auc": round(federated_pr_auc, 4),
        "federated_precision": round(float(result.metrics["precision"]), 4),
        "federated_recall": round(float(result.metrics["recall"]), 4),
        "centralised_pr_auc": round(float(central["binned"]["pr_auc"]), 4),
        "centralised_pr_auc_exact": round(float(central["exact"]["pr_auc"]), 4),
        "centralised_precision": round(float(central["exact"]["precision"]), 4),
        "centralised_recall": round(float(central["exact"]["recall"]), 4),
        "pr_auc_gap": round(gap, 4),
        "round_seconds": [round(d, 2) for d in durations],
        "round_seconds_mean_after_first": round(sum(later) / len(later), 2),
        "federated_seconds": round(result.duration_s, 1),
        "centralised_seconds": round(central["seconds"], 1),
        "verdict": "PASS" if abs(gap) <= TARGET_PR_AUC_GAP else "MISS",
    }
    print(
        f"federated ({strategy}, {rounds} rounds x {local_epochs} local epochs, 3 sites) vs centralised "
        f"({rounds * local_epochs} epochs on the union) on the same {figures['held_out_windows']} held-out windows "
        f"(positive rate {figures['positive_rate']}): PR-AUC {figures['federated_pr_auc']} vs "
        f"{figures['centralised_pr_auc']} (exact {figures['centralised_pr_auc_exact']}), "
        f"gap {figures['pr_auc_gap']:+}: "
        f"{figures['verdict']} (target within {TARGET_PR_AUC_GAP}); per round {figures['round_seconds']} s "
        f"(mean after the first {figures['round_seconds_mean_after_first']} s); "
        f"federated {figures['federated_seconds']} s in all, centralised {figures['centralised_seconds']} s"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=12, help="machines per site")
    parser.add_argument("--readings", type=int, default=2500, help="readings per machine")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=4)
    parser.add_argument("--strategy", choices=("fedavg", "fedprox"), default="fedavg")
    parser.add_argument("--proximal-mu", type=float, default=0.1)
    parser.add_argument("--kind", choices=("logistic", "mlp"), default="logistic")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    figures = federated_figures(
        devices=args.devices,
        readings=args.readings,
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        strategy=args.strategy,
        proximal_mu=args.proximal_mu,
        kind=args.kind,
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
