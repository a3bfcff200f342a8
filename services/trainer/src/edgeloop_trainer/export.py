"""Export a trained Keras classifier as a SavedModel in TF Serving layout: ``MODEL_BASE/NAME/VERSION/``.

The ``serving_default`` signature takes encoded JPEG/PNG bytes and does its own
decoding and resizing, so a client sends the picture as it is:

* input ``image_bytes``: DT_STRING ``[batch]`` (over REST: ``{"b64": "..."}``)
* output ``scores``: DT_FLOAT ``[batch, C]``, softmax scores (each row sums to 1)
* output ``classes``: DT_STRING ``[batch, C]``, the class names in score order

Beside the model, ``assets.extra/edgeloop.json`` records the class names, the
training parameters and the evaluation figures, ``assets.extra/model.keras``
keeps the Keras model (the starting point of an incremental training), and
``assets.extra/tf_serving_warmup_requests`` holds one real request that TF
Serving (and EdgeLoop's model server) replay before declaring the version
AVAILABLE. A version is written to a hidden temporary folder next to its final
place and renamed in one step, so a server never sees a half-written version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from edgeloop_trainer.preprocessing import decode_and_resize

SIGNATURE_NAME = "serving_default"
INPUT_NAME = "image_bytes"
SCORES_OUTPUT = "scores"
CLASSES_OUTPUT = "classes"
METADATA_FILE = Path("assets.extra") / "edgeloop.json"
# The trained Keras model itself, so a later training can continue from these weights (warm start).
KERAS_CHECKPOINT = Path("assets.extra") / "model.keras"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
METADATA_FORMAT = "edgeloop.image-classifier.v1"

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)


class VersionExistsError(FileExistsError):
    """The requested version folder is already there; versions are never overwritten."""


def validate_model_name(name: str) -> str:
    if not _MODEL_NAME.match(name):
        raise ValueError(f"model name {name!r} must be letters, digits, '_', '.' or '-' (it is part of URLs and paths)")
    return name


def existing_versions(model_dir: Path) -> list[int]:
    """Integer version folders under ``model_dir`` (TF Serving ignores every other name)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_dir: Path) -> int:
    versions = existing_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def build_serving_function(model: keras.Model, class_names: Sequence[str], image_size: int) -> Any:
    """The ``serving_default`` function: encoded image bytes in, per-class scores and class names out."""
    names = tf.constant(list(class_names), dtype=tf.string)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])  # type: ignore[untyped-decorator]
    def serve(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(
            lambda one: decode_and_resize(one, image_size),
            image_bytes,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
        )
        scores = tf.cast(model(images, training=False), tf.float32)
        batch = tf.shape(image_bytes)[0]
        classes = tf.tile(tf.expand_dims(names, 0), [batch, 1])
        return {SCORES_OUTPUT: scores, CLASSES_OUTPUT: classes}

    return serve


def signature_description(num_classes: int) -> dict[str, Any]:
    """The ``serving_default`` signature as recorded in ``edgeloop.json``."""
    return {
        "name": SIGNATURE_NAME,
        "inputs": {INPUT_NAME: {"dtype": "DT_STRING", "shape": [-1], "content": "encoded JPEG or PNG"}},
        "outputs": {
            SCORES_OUTPUT: {"dtype": "DT_FLOAT", "shape": [-1, num_classes]},
            CLASSES_OUTPUT: {"dtype": "DT_STRING", "shape": [-1, num_classes]},
        },
    }


def write_saved_model(model: keras.Model, class_names: Sequence[str], image_size: int, path: Path) -> None:
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE_NAME, build_serving_function(model, class_names, image_size))
    archive.write_out(str(path), verbose=False)


def write_keras_checkpoint(model: keras.Model, path: Path) -> None:
    """``assets.extra/model.keras``: architecture and weights, the starting point of a warm start."""
    target = path / KERAS_CHECKPOINT
    target.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(target))


def write_warmup_request(path: Path, model_name: str, image_bytes: bytes) -> None:
    """One PredictionLog in TF Serving's warmup format (``assets.extra/tf_serving_warmup_requests``)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SIGNATURE_NAME),
        inputs={INPUT_NAME: tf.make_tensor_proto([image_bytes], dtype=tf.string)},
    )
    record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    (path / WARMUP_FILE).parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path / WARMUP_FILE)) as writer:
        writer.write(record.SerializeToString())


def write_metadata(path: Path, metadata: dict[str, Any]) -> None:
    target = path / METADATA_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(metadata, indent=2) + "\n")


def discard_version(model_base: Path, model_name: str, version: int) -> bool:
    """Remove a version folder: first renamed to a hidden name (servers stop seeing it at once), then deleted."""
    final = model_base / validate_model_name(model_name) / str(version)
    if not final.exists():
        return False
    doomed = final.with_name(f".discard-{version}-{uuid.uuid4().hex[:8]}")
    os.rename(final, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def remove_stale_staging(model_base: Path) -> list[Path]:
    """Hidden folders (``.tmp-*``, ``.discard-*``) that a killed process left under ``MODEL_BASE/<model>/``."""
    removed: list[Path] = []
    if not model_base.is_dir():
        return removed
    for model_dir in (p for p in model_base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for leftover in model_dir.iterdir():
            if leftover.is_dir() and leftover.name.startswith((".tmp-", ".discard-")):
                shutil.rmtree(leftover, ignore_errors=True)
                removed.append(leftover)
    return removed


def read_metadata(version_dir: Path) -> dict[str, Any]:
    metadata: dict[str, Any] = json.loads((version_dir / METADATA_FILE).read_text())
    return metadata


@contextmanager
def staged_version(model_base: Path, model_name: str, version: int | None) -> Iterator[tuple[int, Path]]:
    """Yield ``(version, temporary folder)``; on success rename the folder to ``MODEL_BASE/NAME/VERSION``.

    The temporary folder is hidden (its name starts with a dot and is not an
    integer), so TF Serving and EdgeLoop's model server never look at it.
    """
    model_dir = model_base / validate_model_name(model_name)
    model_dir.mkdir(parents=True, exist_ok=True)
    chosen = next_version(model_dir) if version is None else version
    if chosen < 1:
        raise ValueError(f"version must be a positive integer, got {chosen}")
    final = model_dir / str(chosen)
    if final.exists():
        raise VersionExistsError(f"{final} already exists; versions are never overwritten (pick another --version)")
    staging = model_dir / f".tmp-{chosen}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield chosen, staging
        try:
            os.rename(staging, final)
        except OSError as exc:
            if final.exists():
                raise VersionExistsError(f"{final} appeared while this version was being written") from exc
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
