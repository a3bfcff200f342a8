"""A small real failure model (docs/telemetry.md), trained once on simulated sensor histories and cached on disk.

``failure_model_base()`` returns the model base path holding ``machine-failure/1/`` (a SavedModel in TF Serving
layout, exported with ``edgeloop_common.telemetry.model.export_savedmodel``), with its evaluation
(``threshold``, ``pr_auc``...) and drift reference in ``assets.extra/edgeloop.json``. Cached under
``<repo>/.edgeloop/test-cache/`` keyed by the source of the model and of the simulator; a file lock keeps
parallel test processes from training it twice. Treat the folder as read-only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / ".edgeloop" / "test-cache"
FAILURE_MODEL_NAME = "machine-failure"
SITES = (("train-a", "temperate"), ("train-b", "hot"), ("train-c", "cold"))
DEVICES_PER_SITE = 24
READINGS_PER_DEVICE = 900
EPOCHS = 15


def _key() -> str:
    import edgeloop.sensors
    import edgeloop_common.telemetry.features
    import edgeloop_common.telemetry.model

    digest = hashlib.sha256(f"{SITES}{DEVICES_PER_SITE}{READINGS_PER_DEVICE}{EPOCHS}".encode())
    for module in (edgeloop.sensors, edgeloop_common.telemetry.model, edgeloop_common.telemetry.features):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()[:16]


def training_windows(sites: tuple[tuple[str, str], ...] = SITES, *, seed: int = 0) -> Any:
    """Labelled windows of simulated site histories (no MQTT, no SQLite)."""
    from edgeloop.sensors import generate_site_history
    from edgeloop_common.telemetry.features import Reading, concatenate, labelled_windows

    parts = []
    for site, profile in sites:
        by_device: dict[str, list[Reading]] = {}
        for record in generate_site_history(site, DEVICES_PER_SITE, READINGS_PER_DEVICE, seed=seed, profile=profile):
            by_device.setdefault(record.device_id, []).append(Reading(record.readings, record.machine_event))
        parts.extend(labelled_windows(history) for _, history in sorted(by_device.items()))
    return concatenate(parts)


def _train_into(model_base: Path) -> None:
    from edgeloop_common.telemetry import model as failure

    windows = training_windows()
    held_out = training_windows(((f"{site}-eval", profile) for site, profile in SITES), seed=1)  # type: ignore[arg-type]
    network = failure.build_model("logistic", normalization_from=windows.features)
    failure.fit(network, windows, epochs=EPOCHS)
    figures = failure.evaluate(failure.predict(network, held_out.features), held_out.labels)
    version_dir = model_base / FAILURE_MODEL_NAME / "1"
    reference = failure.reference_stats(windows.features)
    metadata = {"metrics": failure.finite_metrics(figures), "reference_stats": reference}
    failure.export_savedmodel(network, version_dir, metadata=metadata)


def failure_model_base() -> Path:
    """The cached model base (trains it the first time: about half a minute of CPU)."""
    key = _key()
    cached = CACHE_DIR / f"failure-model-{key}"
    done = cached / FAILURE_MODEL_NAME / "1" / "saved_model.pb"
    if done.exists():
        return cached
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f"failure-model-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            staging = CACHE_DIR / f".staging-failure-{key}-{uuid.uuid4().hex[:8]}"
            try:
                _train_into(staging)
                if cached.exists():
                    shutil.rmtree(cached)
                os.rename(staging, cached)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return cached


def failure_model_metadata(model_base: Path) -> dict[str, Any]:
    """``edgeloop.json`` of version 1: ``metrics`` (``threshold``, ``pr_auc``...) and ``reference_stats``."""
    recorded: dict[str, Any] = json.loads(
        (model_base / FAILURE_MODEL_NAME / "1" / "assets.extra" / "edgeloop.json").read_text()
    )
    return recorded
