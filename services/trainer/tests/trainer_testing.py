"""In-memory fakes of the trainer's ports (registry, samples, engine) and helpers shared by its tests."""

from __future__ import annotations

import hashlib
import io
import threading
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from edgeloop_common.events import TrainingRequested
from edgeloop_trainer.adapters.runs import SqlRunStore, create_sql_engine
from edgeloop_trainer.adapters.snapshots import LocalSnapshotStore
from edgeloop_trainer.ports import (
    Candidate,
    LabeledSample,
    Progress,
    ProgressCallback,
    PromotionDecision,
    Publisher,
    RegisteredVersion,
    RegistryError,
    RegistryUnavailableError,
    SampleImageMissingError,
    TrainingJob,
)
from edgeloop_trainer.service import TrainerConfig, TrainerService
from PIL import Image

from tests.helpers import eventually


def png(colour: tuple[int, int, int], seed: int, size: int = 12) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def seed_folder(root: Path, counts: dict[str, int], *, offset: int = 0) -> Path:
    colours = [(220, 30, 30), (30, 200, 40), (40, 40, 220)]
    for index, (name, count) in enumerate(sorted(counts.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for number in range(count):
            (root / name / f"{offset + number:03d}.png").write_bytes(
                png(colours[index % 3], offset + number * 7 + index)
            )
    return root


def catdog_subset(train_dir: Path, destination: Path, per_class: int) -> Path:
    """Links to the first photos of each class (the photos stay where they are)."""
    for class_dir in sorted(p for p in train_dir.iterdir() if p.is_dir()):
        (destination / class_dir.name).mkdir(parents=True)
        for photo in sorted(class_dir.iterdir())[:per_class]:
            (destination / class_dir.name / photo.name).symlink_to(photo)
    return destination


class FakeRegistry:
    """The registry's behaviour that the trainer relies on, with a simple accuracy policy."""

    def __init__(self) -> None:
        self.versions: dict[str, dict[int, dict[str, Any]]] = {}
        self.production_of: dict[str, int] = {}
        self.promotions: list[tuple[str, int, bool, str]] = []
        self.fail_register: Exception | None = None
        self.commit_then_fail = False  # register, then lose the answer (RegistryUnavailableError)

    def add(self, model: str, version: int, artifact_uri: str, accuracy: float, *, production: bool = False) -> None:
        self.versions.setdefault(model, {})[version] = {
            "version": version,
            "artifact_uri": artifact_uri,
            "metrics": {"accuracy": accuracy},
        }
        if production:
            self.production_of[model] = version

    def _registered(self, model: str, body: dict[str, Any]) -> RegisteredVersion:
        return RegisteredVersion(model, int(body["version"]), body["artifact_uri"], body.get("metrics", {}))

    async def production(self, model_name: str) -> RegisteredVersion | None:
        version = self.production_of.get(model_name)
        return None if version is None else self._registered(model_name, self.versions[model_name][version])

    async def latest_version(self, model_name: str) -> int | None:
        return max(self.versions.get(model_name, {}), default=None)

    async def get_version(self, model_name: str, version: int) -> RegisteredVersion | None:
        body = self.versions.get(model_name, {}).get(version)
        return None if body is None else self._registered(model_name, body)

    async def register(self, model_name: str, body: dict[str, Any]) -> RegisteredVersion:
        if self.fail_register is not None:
            raise self.fail_register
        versions = self.versions.setdefault(model_name, {})
        if body["version"] in versions:
            raise RegistryError(f"version {body['version']} exists (409)")
        versions[body["version"]] = dict(body)
        if self.commit_then_fail:
            raise RegistryUnavailableError("connection reset after the registry committed")
        return self._registered(model_name, body)

    async def promote(self, model_name: str, version: int, *, reason: str, actor: str) -> PromotionDecision:
        candidate = self.versions[model_name][version]["metrics"]
        previous = self.production_of.get(model_name)
        if previous is None:
            promoted, decision = True, "no production version yet"
        else:
            baseline = candidate.get("baseline", {}).get("accuracy", 1.0)
            promoted = candidate["accuracy"] >= baseline
            decision = f"candidate {candidate['accuracy']:.3f} vs production {baseline:.3f}"
        if promoted:
            self.production_of[model_name] = version
        self.promotions.append((model_name, version, promoted, reason))
        return PromotionDecision(promoted, decision, previous)


class FakeSamples:
    def __init__(self) -> None:
        self.samples: list[LabeledSample] = []
        self.images: dict[str, bytes] = {}
        self.reads = 0

    def label(self, sample_id: str, label: str, data: bytes, *, sha256: str | None = None) -> None:
        digest = sha256 or hashlib.sha256(data).hexdigest()
        self.samples.append(LabeledSample(sample_id, label, digest, "s3://elsewhere/" + digest, f"/img/{sample_id}"))
        self.images[sample_id] = data

    async def labeled_samples(self) -> list[LabeledSample]:
        return list(self.samples)

    async def read_image(self, sample: LabeledSample) -> bytes:
        self.reads += 1
        if sample.sample_id not in self.images:
            raise SampleImageMissingError(f"no image for {sample.sample_id}")
        return self.images[sample.sample_id]


class FakeEngine:
    """Exports a placeholder version folder (hidden, then renamed) and reports two epochs of progress.

    ``gate`` (when set) holds the training until the test opens it; ``fail_at``
    raises at the given stage, after the hidden folder exists when the stage is
    ``exporting``.
    """

    def __init__(self, model_base: Path, *, accuracy: float = 0.8) -> None:
        self.model_base = model_base
        self.accuracy = accuracy
        self.jobs: list[TrainingJob] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.fail_at: str | None = None

    def train(self, job: TrainingJob, progress: ProgressCallback) -> Candidate:
        self.jobs.append(job)
        self.started.set()
        progress(Progress("training", 0.0, epoch=1, epochs=2))
        if self.gate is not None and not self.gate.wait(timeout=30):
            raise TimeoutError("the test never opened the gate")
        if self.fail_at == "training":
            raise RuntimeError("out of memory (simulated) in epoch 2")
        progress(Progress("training", 1.0, epoch=2, epochs=2))
        model_dir = self.model_base / job.model_name
        model_dir.mkdir(parents=True, exist_ok=True)
        existing = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
        version = max([job.min_version, *(v + 1 for v in existing)])
        staging = model_dir / f".tmp-{version}-fake"
        staging.mkdir()
        (staging / "saved_model.pb").write_bytes(b"placeholder")
        if self.fail_at == "exporting":
            raise RuntimeError("disk full (simulated) while exporting")
        final = model_dir / str(version)
        staging.rename(final)
        warm = job.warm_start_from is not None
        metrics: dict[str, Any] = {
            "accuracy": self.accuracy,
            "evaluation_set_id": job.snapshot.evaluation_set_id,
            "dataset_snapshot_id": job.snapshot.snapshot_id,  # as the Keras engine records it
            "train_counts": job.snapshot.counts("train"),
            "eval_counts": job.snapshot.counts("eval"),
        }
        if job.baseline is not None:
            metrics["baseline"] = {"version": job.baseline.version, "accuracy": job.baseline.metrics["accuracy"]}
        return Candidate(
            model_name=job.model_name,
            version=version,
            path=final,
            artifact_uri=final.as_uri(),
            signature={"inputs": {"image_bytes": "DT_STRING"}},
            metrics=metrics,
            reference_stats={"n": 0, "features": {}, "class_frequencies": {}},
            parameters={"warm_start": warm, "parent_version": job.warm_start_from.version if warm else None},
            warm_started=warm,
            train_started_at=datetime.now(UTC),
            train_duration_s=0.01,
        )

    def discard(self, model_name: str, version: int) -> bool:
        final = self.model_base / model_name / str(version)
        if not final.exists():
            return False
        for child in final.iterdir():
            child.unlink()
        final.rmdir()
        return True

    def remove_stale_staging(self) -> list[Path]:
        removed = []
        for leftover in self.model_base.glob("*/.tmp-*"):
            for child in leftover.iterdir():
                child.unlink()
            leftover.rmdir()
            removed.append(leftover)
        return removed


class Published:
    """A publisher that records the events (the bus's part in the unit tests)."""

    def __init__(self) -> None:
        self.events: list[tuple[TrainingRequested, str | None]] = []

    async def __call__(self, event: TrainingRequested, event_id: str | None = None) -> str:
        self.events.append((event, event_id))
        return event_id or f"event-{len(self.events)}"


def make_service(
    tmp_path: Path,
    *,
    registry: FakeRegistry | None = None,
    samples: FakeSamples | None = None,
    engine: FakeEngine | None = None,
    publish: Publisher | None = None,
    config: TrainerConfig | None = None,
    database: str | None = None,
) -> TrainerService:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return TrainerService(
        runs=SqlRunStore(create_sql_engine(database or f"sqlite:///{tmp_path / 'trainer.sqlite3'}")),
        registry=registry or FakeRegistry(),
        samples=samples,
        snapshots=LocalSnapshotStore(tmp_path / "trainer-data"),
        engine=engine or FakeEngine(tmp_path / "models"),
        publish=publish or Published(),
        config=config or TrainerConfig(seed_data_dir=tmp_path / "seed", eval_fraction=0.3),
    )


def version_folders(model_base: Path, model: str) -> list[str]:
    folder = model_base / model
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


wait_for = partial(eventually, timeout_s=10.0, interval_s=0.01)
