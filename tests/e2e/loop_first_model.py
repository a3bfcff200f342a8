"""The model the closed loop starts from: trained once by the trainer's own engine, cached on disk.

The loop starts with a version 1 already in production. Training it in every run
would cost the test ~15 s of CPU for something that is not under test, so it is
trained once with the trainer's engine on the seed photos (exactly what the
trainer service does for a first training: snapshot, train, evaluate, compute the
drift reference, export) and cached under ``<repo>/.edgeloop/test-cache/``, keyed by
the parameters, the seed photos, the trainer's and the gateway's image-statistics
code and the TensorFlow version (like ``tests/model_fixtures.py``). A run copies the
exported version into its own model base and registers it with the registry body
the trainer would have sent.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".edgeloop" / "test-cache"
REGISTRATION_FILE = "registration.json"
STALE_AFTER_S = 24 * 3600  # entries of older code or data, untouched this long, are removed


@dataclass(frozen=True)
class FirstModelParameters:
    """What the trainer service of the test is configured with too (so a warm start can continue from v1)."""

    backbone: str = "efficientnet-lite0"
    epochs: int | None = None  # None: the backbone's default
    learning_rate: float | None = None
    image_size: int | None = None  # None: the backbone's own
    batch_size: int = 32
    seed: int = 42
    eval_fraction: float = 0.2


@dataclass(frozen=True)
class FirstModel:
    model_name: str
    version_dir: Path  # cached <model>/1/, read-only: copy it with install_into
    registration: dict[str, Any]  # POST /v1/models/{name}/versions body, artifact_uri still pointing at the cache

    def install_into(self, model_base: Path) -> dict[str, Any]:
        """Copy version 1 into ``model_base`` and return its registration body pointing at the copy."""
        target = model_base / self.model_name / "1"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.version_dir, target)
        return {**self.registration, "artifact_uri": target.as_uri()}


def _cache_key(seed_dir: Path, model_name: str, parameters: FirstModelParameters) -> str:
    import edgeloop_common.images as images
    import edgeloop_trainer

    digest = hashlib.sha256(json.dumps(dataclasses.asdict(parameters), sort_keys=True).encode())
    digest.update(model_name.encode())
    sources = [*sorted(Path(edgeloop_trainer.__file__).parent.rglob("*.py")), Path(images.__file__)]
    for source in sources:
        digest.update(source.name.encode() + source.read_bytes())
    digest.update(package_version("tensorflow").encode())
    for image in sorted(seed_dir.rglob("*")):
        if image.is_file():
            digest.update(f"{image.relative_to(seed_dir)}:".encode() + hashlib.sha256(image.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _train(seed_dir: Path, model_name: str, parameters: FirstModelParameters, staging: Path) -> dict[str, Any]:
    """The trainer's first training, run directly on its engine: snapshot of the seed folder, train, export."""
    from edgeloop_trainer.adapters.keras_engine import EngineParameters, KerasTrainingEngine
    from edgeloop_trainer.adapters.snapshots import LocalSnapshotStore
    from edgeloop_trainer.ports import TrainingJob
    from edgeloop_trainer.recipe import Recipe
    from edgeloop_trainer.service import registration_body
    from edgeloop_trainer.snapshot import build_snapshot

    store = LocalSnapshotStore(staging / "trainer")
    snapshot = build_snapshot(store.seed_items(seed_dir), parameters.eval_fraction)
    store.save(snapshot)
    engine = KerasTrainingEngine(
        staging / "models",
        EngineParameters(
            recipe=Recipe(parameters.backbone, parameters.image_size),
            epochs=parameters.epochs,
            learning_rate=parameters.learning_rate,
            batch_size=parameters.batch_size,
            seed=parameters.seed,
        ),
    )
    job = TrainingJob(
        run_id="e2e-first-model",
        model_name=model_name,
        snapshot=snapshot,
        image_path=store.image_path,
        min_version=1,
        warm_start_from=None,
        baseline=None,
    )
    candidate = engine.train(job, lambda progress: None)
    return registration_body(candidate, snapshot)


def _remove_stale_entries(current: Path) -> None:
    cutoff = time.time() - STALE_AFTER_S
    for entry in CACHE_DIR.glob("loop-*"):
        if entry.is_dir() and entry != current and entry.stat().st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True)
            entry.with_name(entry.name + ".lock").unlink(missing_ok=True)


def first_model(seed_dir: Path, model_name: str, parameters: FirstModelParameters) -> FirstModel:
    """Version 1 of ``model_name`` trained on ``seed_dir``: from the cache, or trained now (under a file lock)."""
    key = _cache_key(seed_dir, model_name, parameters)
    cached = CACHE_DIR / f"loop-{key}"
    version_dir = cached / "models" / model_name / "1"
    if not (cached / REGISTRATION_FILE).is_file():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        with open(CACHE_DIR / f"loop-{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be training the same model
            if not (cached / REGISTRATION_FILE).is_file():
                staging = CACHE_DIR / f".staging-loop-{key}-{uuid.uuid4().hex[:8]}"
                try:
                    registration = _train(seed_dir, model_name, parameters, staging)
                    (staging / REGISTRATION_FILE).write_text(json.dumps(registration, indent=1))
                    shutil.rmtree(staging / "trainer")  # the image cache is not needed again
                    if cached.exists():
                        shutil.rmtree(cached)  # an incomplete entry left by an interrupted run
                    os.rename(staging, cached)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
                _remove_stale_entries(cached)
    registration = json.loads((cached / REGISTRATION_FILE).read_text())
    return FirstModel(model_name=model_name, version_dir=version_dir, registration=registration)
