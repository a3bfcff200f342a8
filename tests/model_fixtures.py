"""pytest plugin: a small real model, trained once per session on the cat/dog photos and cached on disk.

Load it from a conftest with ``pytest_plugins = ["tests.model_fixtures"]``.

* ``trained_model_base``: the model base path holding ``<TEST_MODEL_NAME>/1/``
  (a SavedModel in TF Serving layout with its ``assets.extra/edgeloop.json``).
  Treat it as read-only; a test that adds or breaks versions copies it first
  (``copy_model_base(trained_model_base, tmp_path)``).
* ``trained_model_name``: the model's name.

The model is tiny (32 px, 2 epochs: a few seconds of CPU), so its scores are
real but its accuracy is not the point. It is cached under
``<repo>/.edgeloop/test-cache/`` keyed by the training parameters, the
trainer's source code, the TensorFlow version and the photos, so it is
retrained only when one of those changes. A file lock keeps parallel test
processes from training it twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / ".edgeloop" / "test-cache"
TEST_MODEL_NAME = "catdog"
TRAINING_PARAMETERS = {
    "backbone": "small-cnn",
    "epochs": 2,
    "image_size": 32,
    "batch_size": 32,
    "eval_fraction": 0.2,
    "seed": 7,
}
STALE_AFTER_S = 24 * 3600  # cache entries of older code or data, untouched this long, are removed


def _cache_key(data_dir: Path) -> str:
    import edgeloop_trainer

    digest = hashlib.sha256(json.dumps(TRAINING_PARAMETERS, sort_keys=True).encode())
    digest.update(TEST_MODEL_NAME.encode())
    for source in sorted(Path(edgeloop_trainer.__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    from importlib.metadata import version

    digest.update(version("tensorflow").encode())
    for image in sorted(data_dir.rglob("*")):
        if image.is_file():
            digest.update(f"{image.relative_to(data_dir)}:{image.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def _train_into(model_base: Path, data_dir: Path) -> None:
    from edgeloop_trainer.training import train_classifier

    train_classifier(data_dir, TEST_MODEL_NAME, model_base, version=1, progress=False, **TRAINING_PARAMETERS)


def _remove_stale_entries(current: Path) -> None:
    cutoff = time.time() - STALE_AFTER_S
    for entry in CACHE_DIR.glob("model-*"):
        if entry.is_dir() and entry != current and entry.stat().st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True)
            entry.with_name(entry.name + ".lock").unlink(missing_ok=True)


def copy_model_base(model_base: Path, destination: Path) -> Path:
    """A writable copy of a model base (for tests that add, remove or corrupt versions)."""
    target = destination / "models"
    shutil.copytree(model_base, target)
    return target


def export_constant_model(path: Path, scores: tuple[float, float], *, fail: bool = False) -> None:
    """An image classifier's signature (encoded images in, scores and class names out) that answers ``scores`` for
    every image, or (``fail``) whose predict raises InvalidArgument on every call."""
    import tensorflow as tf  # only where a test makes a model

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        images = tf.compat.v1.placeholder(tf.string, [None], name="image_bytes")
        count = tf.shape(images)[0]
        answer = tf.tile(tf.constant([list(scores)], tf.float32), [count, 1])
        if fail:
            check = tf.debugging.assert_less(count, 0, message="this version cannot classify anything")
            with tf.control_dependencies([check]):
                answer = tf.identity(answer)
        classes = tf.tile(tf.constant([["cat", "dog"]]), [count, 1])
        builder = tf.compat.v1.saved_model.Builder(str(path))
        builder.add_meta_graph_and_variables(
            session,
            ["serve"],
            signature_def_map={
                "serving_default": tf.compat.v1.saved_model.predict_signature_def(
                    {"image_bytes": images}, {"scores": answer, "classes": classes}
                )
            },
        )
        builder.save()


def lite_server_settings(model_base: Path, model_name: str, **overrides: Any) -> Any:
    """Settings of the lite model server on free local ports (REST and gRPC), serving ``model_base``: what a test
    hands ``edgeloop_model_server.embedded.serve_in_thread``. Two inference threads unless ``overrides`` say."""
    from edgeloop_model_server.settings import Settings as ModelServerSettings

    from tests.helpers import free_port

    values: dict[str, Any] = {
        "http_host": "127.0.0.1",
        "http_port": free_port(),
        "grpc_host": "127.0.0.1",
        "grpc_port": free_port(),
        "model_name": model_name,
        "model_base_path": model_base,
        "inference_threads": 2,
    }
    return ModelServerSettings(**(values | overrides))


@pytest.fixture(scope="session")
def trained_model_name() -> str:
    return TEST_MODEL_NAME


@pytest.fixture(scope="session")
def trained_model_base(catdog_train_dir: Path) -> Path:
    key = _cache_key(catdog_train_dir)
    cached = CACHE_DIR / f"model-{key}"
    if (cached / TEST_MODEL_NAME / "1" / "saved_model.pb").exists():
        return cached
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f"model-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be training the same model
        if not (cached / TEST_MODEL_NAME / "1" / "saved_model.pb").exists():
            staging = CACHE_DIR / f".staging-{key}-{uuid.uuid4().hex[:8]}"
            try:
                _train_into(staging, catdog_train_dir)
                if cached.exists():
                    shutil.rmtree(cached)  # an incomplete entry left by an interrupted run
                os.rename(staging, cached)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            _remove_stale_entries(cached)
    return cached
