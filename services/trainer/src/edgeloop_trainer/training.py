"""Train an image classifier and export it for TF Serving.

``train_classifier`` is the entry point of ``edgeloop train`` and the tests:
folder of class sub-folders in, ``MODEL_BASE/NAME/VERSION/`` SavedModel and its
evaluation figures out. The model is built by a :class:`~edgeloop_trainer.classifier.Recipe`:
a pretrained backbone whose weights ship in an installed package (EfficientNet-Lite0 by
default) with a trained head, or the small CNN from scratch. Nothing is downloaded.
The trainer service uses the same pieces (``build_classifier``, ``fit_classifier``,
``serving_scores``) on dataset snapshots.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from edgeloop_trainer import export
from edgeloop_trainer.classifier import FeatureCache, FitReport, build_classifier, fit_classifier
from edgeloop_trainer.dataset import DatasetError, DatasetSplit, Sample, load_split
from edgeloop_trainer.evaluation import classification_report
from edgeloop_trainer.preprocessing import load_images
from edgeloop_trainer.recipe import DEFAULT_BACKBONE, Recipe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingParameters:
    recipe: Recipe = field(default_factory=Recipe)
    epochs: int | None = None  # None: the recipe's own (Recipe.default_epochs)
    batch_size: int = 32
    eval_fraction: float = 0.2
    seed: int = 42
    learning_rate: float | None = None  # None: the recipe's own

    def validate(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")

    @property
    def resolved_epochs(self) -> int:
        return self.epochs if self.epochs is not None else self.recipe.default_epochs

    @property
    def resolved_learning_rate(self) -> float:
        return self.learning_rate if self.learning_rate is not None else self.recipe.default_learning_rate


@dataclass(frozen=True)
class TrainingResult:
    model_name: str
    version: int
    path: Path
    class_names: tuple[str, ...]
    metrics: dict[str, Any]
    duration_s: float
    skipped_files: tuple[Path, ...] = field(default=())

    @property
    def metadata_path(self) -> Path:
        return self.path / export.METADATA_FILE


def oversample(
    images: np.ndarray, labels: np.ndarray, is_new: np.ndarray, factor: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every image marked new ``factor`` times, the others once (factor 1: the arrays as they are).

    Used by warm starts so that a few dozen new labels are not drowned among hundreds of images the parent
    already learned from. :func:`~edgeloop_trainer.classifier.compile_and_fit` computes the class weights on
    what it is given, so they stay balanced on the oversampled set.
    """
    if len(is_new) != len(labels):
        raise ValueError(f"{len(is_new)} new/old flags for {len(labels)} images")
    indices = oversample_indices(is_new, factor)
    if len(indices) == len(labels):
        return images, labels  # nothing repeated
    return images[indices], labels[indices]


def oversample_indices(is_new: np.ndarray, factor: int) -> np.ndarray:
    """The index of every image, an image marked new ``factor`` times in a row (see :func:`oversample`)."""
    if factor < 1:
        raise ValueError(f"the new-sample factor must be at least 1, got {factor}")
    flags = np.asarray(is_new, dtype=bool)
    repeats = np.where(flags, factor, 1) if factor > 1 else np.ones(len(flags), dtype=np.int64)
    return np.repeat(np.arange(len(flags)), repeats)


class _ProgressBar(keras.callbacks.Callback):  # type: ignore[misc]
    """One progress bar over every training step, with the latest loss and accuracy."""

    def __init__(self, epochs: int, steps_per_epoch: int) -> None:
        super().__init__()
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._epochs = epochs
        self._epoch = 0
        self._progress = Progress(
            TextColumn("[bold]training[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task = self._progress.add_task("", total=epochs * steps_per_epoch)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._progress.start()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        self._progress.update(
            self._task,
            advance=1,
            description=f"epoch {self._epoch}/{self._epochs} loss {logs.get('loss', 0):.3f} "
            f"acc {logs.get('accuracy', 0):.3f}",
        )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        shown_every = max(1, self._epochs // 8)  # about eight lines, whatever the number of epochs
        if "val_accuracy" in logs and ((epoch + 1) % shown_every == 0 or epoch + 1 == self._epochs):
            self._progress.console.print(
                f"epoch {epoch + 1}/{self._epochs}: loss {logs['loss']:.3f} acc {logs['accuracy']:.3f} "
                f"held-out acc {logs['val_accuracy']:.3f}"
            )

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._progress.stop()


def serving_scores(saved_model_dir: Path, files: Sequence[Path], batch_size: int) -> tuple[np.ndarray, list[str]]:
    """Scores ``[N, C]`` and the class names of a SavedModel's serving signature for raw image files.

    The files' bytes go through ``serving_default`` exactly as a server would
    receive them, so the figures are what the deployed version will answer.
    """
    serving = tf.saved_model.load(str(saved_model_dir)).signatures[export.SIGNATURE_NAME]
    scores: list[np.ndarray] = []
    class_names: list[str] = []
    for start in range(0, len(files), batch_size):
        batch = [path.read_bytes() for path in files[start : start + batch_size]]
        outputs = serving(**{export.INPUT_NAME: tf.constant(batch, dtype=tf.string)})
        scores.append(outputs[export.SCORES_OUTPUT].numpy())
        if not class_names:
            class_names = [name.decode() for name in outputs[export.CLASSES_OUTPUT].numpy()[0]]
    return (np.concatenate(scores) if scores else np.zeros((0, 0), np.float32)), class_names


def _predict_with_signature(saved_model_dir: Path, samples: Sequence[Sample], batch_size: int) -> np.ndarray:
    """Predicted labels of ``samples``, sent as raw file bytes through the exported serving signature."""
    scores, _ = serving_scores(saved_model_dir, [sample.path for sample in samples], batch_size)
    return np.argmax(scores, axis=1) if len(scores) else np.zeros((0,), np.int64)


def train_classifier(
    data_dir: Path | str,
    model_name: str,
    model_base: Path | str,
    *,
    backbone: str = DEFAULT_BACKBONE,
    fine_tune: int = 0,
    epochs: int | None = None,
    image_size: int | None = None,
    batch_size: int = 32,
    eval_fraction: float = 0.2,
    seed: int = 42,
    learning_rate: float | None = None,
    version: int | None = None,
    progress: bool = True,
    feature_cache: Path | None = None,
) -> TrainingResult:
    """Train on ``data_dir`` (one sub-folder per class) and export ``model_base/model_name/VERSION``.

    ``version`` defaults to one more than the highest version present. The
    evaluation figures are measured on the held-out split by sending its raw
    files through the exported serving signature, i.e. exactly what a
    server will answer. ``feature_cache``: a folder keeping the backbone's
    features of each image (by sha256), so that the next training on the same
    photos skips them.
    """
    started = time.monotonic()
    data_dir, model_base = Path(data_dir), Path(model_base)
    recipe = Recipe(backbone, image_size, fine_tune)
    params = TrainingParameters(recipe, epochs, batch_size, eval_fraction, seed, learning_rate)
    params.validate()
    export.validate_model_name(model_name)
    if version is not None and (model_base / model_name / str(version)).exists():
        raise export.VersionExistsError(
            f"{model_base / model_name / str(version)} already exists; versions are never overwritten"
        )
    split = load_split(data_dir, eval_fraction, seed)
    keras.utils.set_random_seed(seed)

    train = load_images(split.train, recipe.size)
    held_out = load_images(split.evaluation, recipe.size)
    if len(train.labels) == 0 or not held_out.kept:
        raise DatasetError(f"no decodable images of usable quality left in {data_dir} for training and evaluation")
    train_counts = dict.fromkeys(split.class_names, 0)
    for label in train.labels:
        train_counts[split.class_names[label]] += 1

    model = build_classifier(recipe, len(split.class_names), seed)
    fit = fit_classifier(
        model,
        recipe,
        train.images,
        train.labels,
        train.sha256s,
        len(split.class_names),
        epochs=params.resolved_epochs,
        learning_rate=params.resolved_learning_rate,
        batch_size=batch_size,
        seed=seed,
        cache=FeatureCache(feature_cache) if feature_cache is not None else None,
        callbacks=[_ProgressBar(params.resolved_epochs, math.ceil(len(train.labels) / batch_size))] if progress else [],
        validation=(held_out.images, held_out.labels) if progress else None,
    )

    evaluation = held_out.kept
    with export.staged_version(model_base, model_name, version) as (chosen_version, staging):
        export.write_saved_model(model, split.class_names, recipe.size, staging)
        export.write_keras_checkpoint(model, staging)
        predicted = _predict_with_signature(staging, evaluation, batch_size)
        metrics = classification_report(
            np.asarray([s.label for s in evaluation]), predicted, split.class_names, train_counts
        )
        duration_s = time.monotonic() - started
        export.write_warmup_request(staging, model_name, evaluation[0].path.read_bytes())
        export.write_metadata(
            staging,
            _metadata(
                model_name,
                chosen_version,
                split,
                params,
                metrics,
                data_dir,
                duration_s,
                fit,
                left_out=[*train.poor_quality, *held_out.poor_quality],
            ),
        )
    path = model_base / model_name / str(chosen_version)
    log.info(
        "exported %s version %d to %s (held-out accuracy %.3f)", model_name, chosen_version, path, metrics["accuracy"]
    )
    return TrainingResult(
        model_name=model_name,
        version=chosen_version,
        path=path,
        class_names=split.class_names,
        metrics=metrics,
        duration_s=duration_s,
        skipped_files=tuple(s.path for s in (*train.left_out, *held_out.left_out)),
    )


def _metadata(
    model_name: str,
    version: int,
    split: DatasetSplit,
    params: TrainingParameters,
    metrics: dict[str, Any],
    data_dir: Path,
    duration_s: float,
    fit: FitReport,
    left_out: list[tuple[Sample, str]],
) -> dict[str, Any]:
    return {
        "format": export.METADATA_FORMAT,
        "model_name": model_name,
        "version": version,
        "class_names": list(split.class_names),
        "created_at": datetime.now(UTC).isoformat(),
        "signature": export.signature_description(len(split.class_names)),
        "image_size": params.recipe.size,
        "backbone": params.recipe.description(),
        "training": {
            "data_dir": str(data_dir.resolve()),
            "backbone": params.recipe.backbone,
            "fine_tune": params.recipe.fine_tune,
            "epochs": params.resolved_epochs,
            "batch_size": params.batch_size,
            "learning_rate": params.resolved_learning_rate,
            "features_computed": fit.features_computed,
            "features_cached": fit.features_cached,
            "left_out_poor_quality": {str(sample.path): verdict for sample, verdict in left_out},
            "eval_fraction": params.eval_fraction,
            "seed": params.seed,
            "duration_s": round(duration_s, 2),
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
        },
        "metrics": metrics,
    }
