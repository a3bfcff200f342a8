"""The Keras training engine: one candidate from a snapshot, evaluated against production, exported for TF Serving.

Runs in a worker thread (blocking TensorFlow calls). Steps:

1. decode the snapshot's images (cached by sha256) at the configured size;
2. start from production's Keras checkpoint (``assets.extra/model.keras``) when
   warm start is asked for and possible (same class names, same image size),
   else from random weights, and train; a warm start trains fewer epochs at a
   lower learning rate, so it refines rather than forgets, and repeats the images
   that are new since the parent version ``new_sample_weight`` times, so that a
   few dozen new labels are not drowned among the photos the parent learned from;
3. export into a hidden folder, evaluate the candidate *and* production through
   their serving signatures on the snapshot's evaluation images, compute the
   drift reference, write the metadata, rename the folder into place.

An exception anywhere (the progress callback raises one to cancel) leaves no
visible version folder: the hidden one is removed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import keras
import numpy as np
import tensorflow as tf
from edgeloop_common.images import InvalidImageError, inspect_image
from edgeloop_common.reference_stats import compute_reference_stats

from edgeloop_trainer import export
from edgeloop_trainer.classifier import FeatureCache, build_classifier, fit_classifier
from edgeloop_trainer.dataset import DatasetError, Sample
from edgeloop_trainer.evaluation import classification_report
from edgeloop_trainer.ports import Candidate, Progress, ProgressCallback, RegisteredVersion, TrainingJob
from edgeloop_trainer.preprocessing import load_images
from edgeloop_trainer.recipe import Recipe, recipe_of
from edgeloop_trainer.snapshot import Snapshot, SnapshotItem, new_since_parent
from edgeloop_trainer.training import oversample_indices, serving_scores

log = logging.getLogger(__name__)

SIGNATURE = {
    "name": export.SIGNATURE_NAME,
    "inputs": {export.INPUT_NAME: "DT_STRING"},
    "outputs": {export.SCORES_OUTPUT: "DT_FLOAT", export.CLASSES_OUTPUT: "DT_STRING"},
}


@dataclass(frozen=True)
class EngineParameters:
    recipe: Recipe = field(default_factory=Recipe)
    epochs: int | None = None  # None: the recipe's own
    learning_rate: float | None = None  # None: the recipe's own
    incremental_epochs: int | None = None  # None: the recipe's own (Recipe.incremental)
    incremental_learning_rate: float | None = None  # None: the recipe's own (Recipe.incremental)
    batch_size: int = 32
    seed: int = 42
    new_sample_weight: int = 1  # a warm start repeats the images new since the parent this many times
    feature_cache: Path | None = None  # features of each image by sha256, for pretrained backbones
    model_recipes: Mapping[str, Recipe] = field(default_factory=dict)  # models built otherwise than ``recipe``

    def recipe_for(self, model_name: str) -> Recipe:
        return self.model_recipes.get(model_name, self.recipe)

    def epochs_and_learning_rate(self, recipe: Recipe, warm: bool) -> tuple[int, float]:
        epochs = self.epochs if self.epochs is not None else recipe.default_epochs
        rate = self.learning_rate if self.learning_rate is not None else recipe.default_learning_rate
        if not warm:
            return epochs, rate
        incremental_epochs, incremental_rate = recipe.incremental(epochs, rate)
        return (
            self.incremental_epochs if self.incremental_epochs is not None else incremental_epochs,
            self.incremental_learning_rate if self.incremental_learning_rate is not None else incremental_rate,
        )


@dataclass(frozen=True)
class _Start:
    model: keras.Model
    warm: bool
    parent_version: int | None
    note: str


@dataclass(frozen=True)
class _Emphasis:
    """Which decoded training images are new since the parent version, and how many times each is seen."""

    is_new: np.ndarray  # one flag per decoded training image
    factor: int
    rule: str

    @classmethod
    def of(
        cls,
        job: TrainingJob,
        items: tuple[SnapshotItem, ...],
        samples: list[Sample],
        skipped: list[Sample],
        factor: int,
    ) -> _Emphasis:
        flags, rule = new_since_parent(items, job.parent_snapshot)
        unreadable = set(skipped)
        kept = [flag for flag, sample in zip(flags, samples, strict=True) if sample not in unreadable]
        return cls(np.asarray(kept, dtype=bool), factor, rule)


class _RunProgress(keras.callbacks.Callback):  # type: ignore[misc]
    """Reports every training step to the run; an exception raised by the callback stops training."""

    def __init__(self, report: ProgressCallback, epochs: int, steps_per_epoch: int) -> None:
        super().__init__()
        self._report = report
        self._epochs = epochs
        self._steps = max(1, steps_per_epoch)
        self._epoch = 0
        self.last_epoch = ""  # "(epoch N: loss L, accuracy A)" of the last finished epoch

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch + 1
        self._send(0)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._send(batch + 1)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        self.last_epoch = (
            f"(epoch {epoch + 1}: loss {logs.get('loss', 0.0):.3f}, accuracy {logs.get('accuracy', 0.0):.3f})"
        )
        self._send(self._steps)

    def _send(self, step: int) -> None:
        done = (self._epoch - 1) * self._steps + min(step, self._steps)
        self._report(
            Progress(
                "training",
                fraction=done / (self._epochs * self._steps),
                epoch=self._epoch,
                epochs=self._epochs,
                message=self.last_epoch,
            )
        )


class KerasTrainingEngine:
    def __init__(self, model_base: Path, params: EngineParameters) -> None:
        self.model_base = model_base.resolve()
        self.params = params

    # -- the port -------------------------------------------------------------------

    def train(self, job: TrainingJob, progress: ProgressCallback) -> Candidate:
        started_at, started = datetime.now(UTC), time.monotonic()
        snapshot, params = job.snapshot, self.params
        progress(Progress("training", 0.0, message="decoding images"))
        train_items = snapshot.of_split("train")
        train = self._samples(job, train_items)
        evaluation = self._samples(job, snapshot.of_split("eval"))
        recipe = params.recipe_for(job.model_name)
        loaded = load_images(train, recipe.size)
        train_images, train_labels = loaded.images, loaded.labels
        held_out = load_images(evaluation, recipe.size)
        evaluation = held_out.kept
        if len(train_labels) == 0 or not evaluation:
            raise DatasetError(
                f"snapshot {snapshot.snapshot_id} has no decodable images of usable quality to train or evaluate on"
            )
        train_counts = _counts(train_labels, snapshot.class_names)

        keras.utils.set_random_seed(params.seed)
        start = self._initial_model(job)
        log.info("run %s: %s", job.run_id, start.note)
        epochs, learning_rate = params.epochs_and_learning_rate(recipe, start.warm)
        emphasis = _Emphasis.of(job, train_items, train, loaded.left_out, params.new_sample_weight if start.warm else 1)
        fit_order = oversample_indices(emphasis.is_new, emphasis.factor)
        fit_labels = train_labels[fit_order]
        if start.warm:
            log.info(
                "run %s: %d of %d training images new since version %s (%s), each seen %d times: %d per epoch",
                job.run_id,
                int(emphasis.is_new.sum()),
                len(train_labels),
                start.parent_version,
                emphasis.rule,
                emphasis.factor,
                len(fit_labels),
            )
        reporter = _RunProgress(progress, epochs, math.ceil(len(fit_labels) / params.batch_size))
        fit = fit_classifier(
            start.model,
            recipe,
            train_images[fit_order],
            fit_labels,
            [loaded.sha256s[index] for index in fit_order],
            len(snapshot.class_names),
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=params.batch_size,
            seed=params.seed,
            cache=FeatureCache(params.feature_cache) if params.feature_cache is not None else None,
            callbacks=[reporter],
            on_features=lambda done, total: progress(
                Progress("training", 0.0, message=f"backbone features of {done}/{total} new images")
            ),
        )
        parameters = {
            "backbone": recipe.description(),
            "features_computed": fit.features_computed,
            "features_cached": fit.features_cached,
            "epochs": epochs,
            "learning_rate": learning_rate,
            "warm_start": start.warm,
            "warm_start_note": start.note,
            "parent_version": start.parent_version,
            "new_sample_weight": emphasis.factor,
            "new_train_images": int(emphasis.is_new.sum()) if start.warm else None,
            "new_images_rule": emphasis.rule if start.warm else None,
            "train_images": len(train_labels),
            "train_images_per_epoch": len(fit_labels),
            "image_size": recipe.size,
            "batch_size": params.batch_size,
            "seed": params.seed,
            "eval_fraction": snapshot.eval_fraction,
            "skipped_files": len(loaded.unreadable) + len(held_out.unreadable),
            "left_out_poor_quality": len(loaded.poor_quality) + len(held_out.poor_quality),
        }
        model_dir = self.model_base / export.validate_model_name(job.model_name)
        version = max(job.min_version, export.next_version(model_dir))
        progress(
            Progress("exporting", 1.0, epoch=epochs, epochs=epochs, message=f"version {version} {reporter.last_epoch}")
        )
        with export.staged_version(self.model_base, job.model_name, version) as (version, staging):
            export.write_saved_model(start.model, snapshot.class_names, recipe.size, staging)
            export.write_keras_checkpoint(start.model, staging)
            progress(Progress("evaluating", 1.0, epoch=epochs, epochs=epochs, message="candidate and production"))
            metrics, reference = self._evaluate(job, staging, evaluation, train_counts)
            duration_s = time.monotonic() - started
            export.write_warmup_request(staging, job.model_name, evaluation[0].path.read_bytes())
            export.write_metadata(
                staging,
                _metadata(job, version, snapshot, recipe, parameters, metrics, reference, started_at, duration_s),
            )
        path = model_dir / str(version)
        log.info(
            "run %s: exported %s version %d to %s (accuracy %.3f%s)",
            job.run_id,
            job.model_name,
            version,
            path,
            metrics["accuracy"],
            _baseline_text(metrics),
        )
        return Candidate(
            model_name=job.model_name,
            version=version,
            path=path,
            artifact_uri=path.as_uri(),
            signature=SIGNATURE,
            metrics=metrics,
            reference_stats=reference,
            parameters=parameters,
            warm_started=start.warm,
            train_started_at=started_at,
            train_duration_s=duration_s,
        )

    def discard(self, model_name: str, version: int) -> bool:
        return export.discard_version(self.model_base, model_name, version)

    def remove_stale_staging(self) -> list[Path]:
        return export.remove_stale_staging(self.model_base)

    # -- steps ------------------------------------------------------------------------

    @staticmethod
    def _samples(job: TrainingJob, items: tuple[SnapshotItem, ...]) -> list[Sample]:
        index = {name: position for position, name in enumerate(job.snapshot.class_names)}
        return [Sample(job.image_path(item.sha256), index[item.label]) for item in items]

    def _initial_model(self, job: TrainingJob) -> _Start:
        source, params = job.warm_start_from, self.params
        recipe = params.recipe_for(job.model_name)

        def fresh() -> keras.Model:  # built only when needed: a pretrained backbone takes a second or two
            return build_classifier(recipe, len(job.snapshot.class_names), params.seed)

        if source is None:
            return _Start(fresh(), False, None, "training from scratch")
        version_dir = local_artifact(source.artifact_uri)
        checkpoint = version_dir / export.KERAS_CHECKPOINT if version_dir else None
        if version_dir is None or checkpoint is None or not checkpoint.is_file():
            why = f"production version {source.version} has no Keras checkpoint at {source.artifact_uri}"
            return _Start(fresh(), False, None, f"{why}: training from scratch")
        recorded = export.read_metadata(version_dir)
        if tuple(recorded.get("class_names", ())) != job.snapshot.class_names:
            why = (
                f"production version {source.version} knows classes {recorded.get('class_names')}, "
                f"the snapshot has {list(job.snapshot.class_names)}"
            )
            return _Start(fresh(), False, None, f"{why}: training from scratch")
        wanted, parent = recipe.description(), recipe_of(recorded)
        if parent != wanted:  # backbone, its weights, input size, fine-tuned blocks
            why = f"production version {source.version} is built as {parent}, this training as {wanted}"
            return _Start(fresh(), False, None, f"{why}: training from scratch")
        model = keras.models.load_model(str(checkpoint))
        return _Start(model, True, source.version, f"warm start from production version {source.version}")

    def _evaluate(
        self, job: TrainingJob, staging: Path, evaluation: list[Sample], train_counts: dict[str, int]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        class_names = job.snapshot.class_names
        files = [sample.path for sample in evaluation]
        truth = [class_names[sample.label] for sample in evaluation]
        scores, output_names = serving_scores(staging, files, self.params.batch_size)
        predicted = np.argmax(scores, axis=1)
        report = classification_report(
            np.asarray([sample.label for sample in evaluation]), predicted, class_names, train_counts
        )
        for figures in report["per_class"].values():
            figures["support"] = figures["eval_samples"]
        metrics: dict[str, Any] = {
            **report,
            "train_counts": train_counts,
            "eval_counts": {name: truth.count(name) for name in class_names},
            "evaluation_set_id": job.snapshot.evaluation_set_id,
            "dataset_snapshot_id": job.snapshot.snapshot_id,
        }
        baseline = self._baseline(job.baseline, files, truth)
        if baseline is not None:
            metrics["baseline"] = baseline
        reference = compute_reference_stats(_reference_records(files, scores, output_names))
        return metrics, reference

    def _baseline(
        self, production: RegisteredVersion | None, files: list[Path], truth: list[str]
    ) -> dict[str, Any] | None:
        """Production's accuracy on the same evaluation images, through its own serving signature."""
        if production is None:
            return None
        version_dir = local_artifact(production.artifact_uri)
        if version_dir is None or not (version_dir / "saved_model.pb").is_file():
            log.warning(
                "production version %d cannot be evaluated here (artifact %s is not a local SavedModel)",
                production.version,
                production.artifact_uri,
            )
            return None
        scores, names = serving_scores(version_dir, files, self.params.batch_size)
        hits = sum(names[int(index)] == label for index, label in zip(np.argmax(scores, axis=1), truth, strict=True))
        return {"version": production.version, "accuracy": hits / len(truth) if truth else 0.0}


def local_artifact(uri: str) -> Path | None:
    """The folder of a ``file://`` artifact URI (or a plain path) when it exists here."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", "") or parsed.netloc not in ("", "localhost"):
        return None
    path = Path(unquote(parsed.path))
    return path if path.is_dir() else None


def _counts(labels: np.ndarray, class_names: tuple[str, ...]) -> dict[str, int]:
    counted = np.bincount(labels, minlength=len(class_names)) if len(labels) else np.zeros(len(class_names), int)
    return {name: int(counted[index]) for index, name in enumerate(class_names)}


def _reference_records(files: list[Path], scores: np.ndarray, class_names: list[str]) -> list[dict[str, Any]]:
    """Per evaluation image: the candidate's scores and the image statistics the gateway measures live."""
    records = []
    for path, row in zip(files, scores, strict=True):
        try:
            image_stats = inspect_image(path.read_bytes()).stats
        except InvalidImageError:
            image_stats = {}  # TensorFlow decoded it, Pillow does not: keep the scores, skip the image features
        records.append(
            {
                "scores": {name: float(score) for name, score in zip(class_names, row, strict=True)},
                "confidence": float(np.max(row)),
                "image_stats": image_stats,
            }
        )
    return records


def _baseline_text(metrics: dict[str, Any]) -> str:
    baseline = metrics.get("baseline")
    if not baseline:
        return ", no production version to compare with"
    return f", production version {baseline['version']}: {baseline['accuracy']:.3f} on the same images"


def _metadata(
    job: TrainingJob,
    version: int,
    snapshot: Snapshot,
    recipe: Recipe,
    parameters: dict[str, Any],
    metrics: dict[str, Any],
    reference: dict[str, Any],
    started_at: datetime,
    duration_s: float,
) -> dict[str, Any]:
    """``assets.extra/edgeloop.json``: what ``edgeloop train`` writes, plus lineage and the drift reference."""
    return {
        "format": export.METADATA_FORMAT,
        "model_name": job.model_name,
        "version": version,
        "class_names": list(snapshot.class_names),
        "created_at": datetime.now(UTC).isoformat(),
        "signature": export.signature_description(len(snapshot.class_names)),
        "image_size": parameters["image_size"],
        "backbone": recipe.description(),
        "training": {
            **parameters,
            "run_id": job.run_id,
            "started_at": started_at.isoformat(),
            "duration_s": round(duration_s, 2),
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
        },
        "lineage": {
            "dataset_snapshot_id": snapshot.snapshot_id,
            "evaluation_set_id": snapshot.evaluation_set_id,
            "parent_version": parameters["parent_version"],
        },
        "metrics": metrics,
        "reference_stats": reference,
    }
