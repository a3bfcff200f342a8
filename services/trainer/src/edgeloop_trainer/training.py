"""Train a small image classifier from scratch and export it for TF Serving.

``train_classifier`` is the entry point of ``edgeloop train`` and the tests:
folder of class sub-folders in, ``MODEL_BASE/NAME/VERSION/`` SavedModel and its
evaluation figures out. The trainer service uses the same pieces
(``build_model``, ``compile_and_fit``, ``serving_scores``) on dataset snapshots.
No weights are downloaded: the network starts from random weights (seeded).
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
from edgeloop_trainer.dataset import DatasetError, DatasetSplit, Sample, load_split
from edgeloop_trainer.evaluation import classification_report
from edgeloop_trainer.preprocessing import load_images

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingParameters:
    epochs: int = 15
    image_size: int = 128
    batch_size: int = 32
    eval_fraction: float = 0.2
    seed: int = 42
    learning_rate: float = 1e-3

    def validate(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.image_size < 16:
            raise ValueError(f"image size must be at least 16 pixels, got {self.image_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")


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


def build_model(num_classes: int, image_size: int, seed: int) -> keras.Model:
    """A small CNN: augmentation, conv blocks (3x3 conv, ReLU, max pooling), global pooling, dropout, softmax."""
    blocks = min(4, max(1, int(math.log2(image_size)) - 2))
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = keras.layers.RandomFlip("horizontal", seed=seed)(inputs)
    x = keras.layers.RandomRotation(0.08, fill_mode="reflect", seed=seed + 1)(x)
    x = keras.layers.RandomZoom(0.12, fill_mode="reflect", seed=seed + 2)(x)
    x = keras.layers.RandomContrast(0.15, seed=seed + 3)(x)
    x = keras.layers.Rescaling(1.0 / 255)(x)
    for filters in (16, 32, 64, 128)[:blocks]:
        # No BatchNormalization: on a few hundred images its moving statistics made the held-out
        # accuracy swing from epoch to epoch and ended lower (measured: 0.54-0.65 with, 0.68-0.71 without).
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3, seed=seed + 4)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="scores")(x)
    return keras.Model(inputs, outputs, name="edgeloop_image_classifier")


def _class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Weights that make every class count equally, whatever its number of images."""
    counts = np.bincount(labels, minlength=num_classes)
    return {index: float(len(labels) / (num_classes * count)) if count else 0.0 for index, count in enumerate(counts)}


def oversample(
    images: np.ndarray, labels: np.ndarray, is_new: np.ndarray, factor: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every image marked new ``factor`` times, the others once (factor 1: the arrays as they are).

    Used by warm starts so that a few dozen new labels are not drowned among hundreds of images the parent
    already learned from. :func:`compile_and_fit` computes the class weights on what it is given, so they
    stay balanced on the oversampled set.
    """
    if factor < 1:
        raise ValueError(f"the new-sample factor must be at least 1, got {factor}")
    if len(is_new) != len(labels):
        raise ValueError(f"{len(is_new)} new/old flags for {len(labels)} images")
    if factor == 1 or not np.any(is_new):
        return images, labels
    repeats = np.where(np.asarray(is_new, dtype=bool), factor, 1)
    return np.repeat(images, repeats, axis=0), np.repeat(labels, repeats, axis=0)


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
        if "val_accuracy" in logs:
            self._progress.console.print(
                f"epoch {epoch + 1}/{self._epochs}: loss {logs['loss']:.3f} acc {logs['accuracy']:.3f} "
                f"held-out acc {logs['val_accuracy']:.3f}"
            )

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._progress.stop()


def compile_and_fit(
    model: keras.Model,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    num_classes: int,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Train ``model`` (new or warm-started) with Adam at ``learning_rate``, class-balanced, seeded shuffling."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    train = (
        tf.data.Dataset.from_tensor_slices((train_images, train_labels))
        .shuffle(len(train_labels), seed=seed, reshuffle_each_iteration=True)
        .map(lambda image, label: (tf.cast(image, tf.float32), label))
        .batch(batch_size)
        .prefetch(2)
    )
    held_out = None
    if validation is not None:
        held_out = (
            tf.data.Dataset.from_tensor_slices(validation)
            .map(lambda image, label: (tf.cast(image, tf.float32), label))
            .batch(batch_size)
        )
    # The held-out split is only displayed per epoch, never used to pick a model (no leakage into the figures).
    model.fit(
        train,
        epochs=epochs,
        validation_data=held_out,
        class_weight=_class_weights(train_labels, num_classes),
        callbacks=list(callbacks),
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=0,
    )


def _fit(
    model: keras.Model,
    split: DatasetSplit,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    eval_images: np.ndarray,
    eval_labels: np.ndarray,
    params: TrainingParameters,
    progress: bool,
) -> None:
    steps = math.ceil(len(train_labels) / params.batch_size)
    compile_and_fit(
        model,
        train_images,
        train_labels,
        len(split.class_names),
        epochs=params.epochs,
        learning_rate=params.learning_rate,
        batch_size=params.batch_size,
        seed=params.seed,
        callbacks=[_ProgressBar(params.epochs, steps)] if progress else [],
        validation=(eval_images, eval_labels) if progress else None,
    )


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
    epochs: int = 15,
    image_size: int = 128,
    batch_size: int = 32,
    eval_fraction: float = 0.2,
    seed: int = 42,
    version: int | None = None,
    progress: bool = True,
) -> TrainingResult:
    """Train on ``data_dir`` (one sub-folder per class) and export ``model_base/model_name/VERSION``.

    ``version`` defaults to one more than the highest version present. The
    evaluation figures are measured on the held-out split by sending its raw
    files through the exported serving signature, i.e. exactly what a
    server will answer.
    """
    started = time.monotonic()
    data_dir, model_base = Path(data_dir), Path(model_base)
    params = TrainingParameters(epochs, image_size, batch_size, eval_fraction, seed)
    params.validate()
    export.validate_model_name(model_name)
    if version is not None and (model_base / model_name / str(version)).exists():
        raise export.VersionExistsError(
            f"{model_base / model_name / str(version)} already exists; versions are never overwritten"
        )
    split = load_split(data_dir, eval_fraction, seed)
    keras.utils.set_random_seed(seed)

    train_images, train_labels, skipped_train = load_images(split.train, image_size)
    eval_images, eval_labels, skipped_eval = load_images(split.evaluation, image_size)
    unreadable_eval = set(skipped_eval)
    evaluation = tuple(s for s in split.evaluation if s not in unreadable_eval)
    if len(train_labels) == 0 or not evaluation:
        raise DatasetError(f"no decodable images left in {data_dir} for training and evaluation")
    train_counts = dict.fromkeys(split.class_names, 0)
    for label in train_labels:
        train_counts[split.class_names[label]] += 1

    model = build_model(len(split.class_names), image_size, seed)
    _fit(model, split, train_images, train_labels, eval_images, eval_labels, params, progress)

    with export.staged_version(model_base, model_name, version) as (chosen_version, staging):
        export.write_saved_model(model, split.class_names, image_size, staging)
        export.write_keras_checkpoint(model, staging)
        predicted = _predict_with_signature(staging, evaluation, batch_size)
        metrics = classification_report(
            np.asarray([s.label for s in evaluation]), predicted, split.class_names, train_counts
        )
        duration_s = time.monotonic() - started
        export.write_warmup_request(staging, model_name, evaluation[0].path.read_bytes())
        export.write_metadata(
            staging,
            _metadata(model_name, chosen_version, split, params, metrics, data_dir, duration_s),
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
        skipped_files=tuple(s.path for s in (*skipped_train, *skipped_eval)),
    )


def _metadata(
    model_name: str,
    version: int,
    split: DatasetSplit,
    params: TrainingParameters,
    metrics: dict[str, Any],
    data_dir: Path,
    duration_s: float,
) -> dict[str, Any]:
    return {
        "format": export.METADATA_FORMAT,
        "model_name": model_name,
        "version": version,
        "class_names": list(split.class_names),
        "created_at": datetime.now(UTC).isoformat(),
        "signature": export.signature_description(len(split.class_names)),
        "image_size": params.image_size,
        "training": {
            "data_dir": str(data_dir.resolve()),
            "epochs": params.epochs,
            "batch_size": params.batch_size,
            "learning_rate": params.learning_rate,
            "eval_fraction": params.eval_fraction,
            "seed": params.seed,
            "duration_s": round(duration_s, 2),
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
        },
        "metrics": metrics,
    }
