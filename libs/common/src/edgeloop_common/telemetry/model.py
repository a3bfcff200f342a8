"""The failure model: windowed features -> probability that the machine fails within the horizon.

docs/telemetry.md ("The model", "Evaluation"). One Keras model, trained centrally (``edgeloop train
--telemetry``) or federated (every site fits it on its own windows), exported as a SavedModel that the model
server serves like any other:

* ``serving_default`` input ``features``: float32 ``[-1, len(FEATURE_NAMES)]``, the raw window features;
* output ``failure_probability``: float32 ``[-1]``.

The normalisation is a layer of the model (a ``keras.layers.Normalization`` adapted on the training features), so
a client sends raw features and the mean and variance travel with the weights (``model.get_weights()`` holds
them, which is what a federated average averages).

Evaluation is for rare failures: average precision (PR-AUC), and precision and recall at the alert threshold.
``score_counts`` / ``metrics_from_counts`` give the same figures from per-bin counts of positives and negatives,
so a federated server can sum the sites' counts without ever seeing a score or a label.

Only the training and export functions import TensorFlow; the metrics are numpy.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edgeloop_common.reference_stats import MAX_SAMPLES_PER_FEATURE
from edgeloop_common.telemetry.features import (
    FEATURE_NAMES,
    HORIZON_READINGS,
    WINDOW_READINGS,
    LabelledWindows,
    concatenate,
    labelled_windows,
)
from edgeloop_common.telemetry.history import SiteHistory

if TYPE_CHECKING:
    import keras

MODEL_NAME = "machine-failure"
SIGNATURE_NAME = "serving_default"
INPUT_NAME = "features"
OUTPUT_NAME = "failure_probability"
POLICY_METRIC = "pr_auc"
REFERENCE_KIND = "telemetry_features"
METADATA_FILE = Path("assets.extra") / "edgeloop.json"
KERAS_CHECKPOINT = Path("assets.extra") / "model.keras"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
METADATA_FORMAT = "edgeloop.failure-model.v1"
DEFAULT_BINS = 1000

ModelKind = Literal["logistic", "mlp"]
MODEL_KINDS: tuple[str, ...] = ("logistic", "mlp")


# --- the model ---------------------------------------------------------------------------------------------------


def build_model(
    kind: ModelKind = "logistic", *, normalization_from: np.ndarray | None = None, seed: int = 0
) -> keras.Model:
    """Features ``[-1, 25]`` -> probability ``[-1, 1]``: normalisation, then logistic regression or a small MLP.

    ``normalization_from``: training features to adapt the normalisation on; None leaves it the identity (mean 0,
    variance 1) until weights are set, e.g. a federated global model whose weights come from the sites.
    """
    import keras

    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
    inputs = keras.Input((len(FEATURE_NAMES),), name=INPUT_NAME, dtype="float32")
    normalization = keras.layers.Normalization(name="normalization")
    if normalization_from is not None:
        normalization.adapt(np.asarray(normalization_from, dtype=np.float32))
    hidden = normalization(inputs)
    if kind == "mlp":
        for index, units in enumerate((32, 16)):
            hidden = keras.layers.Dense(
                units,
                activation="relu",
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed + index),
                name=f"hidden_{index}",
            )(hidden)
    output = keras.layers.Dense(
        1, activation="sigmoid", kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 7), name="failure"
    )(hidden)
    model = keras.Model(inputs, output, name=f"failure_{kind}")
    _sync_normalization(model)
    return model


def model_kind(model: keras.Model) -> str:
    return "mlp" if any(layer.name.startswith("hidden_") for layer in model.layers) else "logistic"


def _sync_normalization(model: keras.Model) -> None:
    # Keras's Normalization computes on a copy of its mean and variance taken when it is adapted, built or loaded
    # (``finalize_state``), so weights set later (``model.set_weights``: a federated round) would not reach the
    # computation. Point it at the variables themselves instead: every call then reads the current weights.
    layer = model.get_layer("normalization")
    if layer.mean is layer.adapt_mean and layer.variance is layer.adapt_variance:
        return
    layer.mean, layer.variance = layer.adapt_mean, layer.adapt_variance
    model.predict_function = model.train_function = model.test_function = None  # traced with the copy


def set_weights(model: keras.Model, weights: Sequence[np.ndarray]) -> None:
    """``model.set_weights``, normalisation included (the same for a model of ``build_model`` or ``load_keras``)."""
    model.set_weights(list(weights))
    _sync_normalization(model)


def set_normalization(model: keras.Model, mean: np.ndarray, variance: np.ndarray) -> None:
    """Set the normalisation's mean and variance (e.g. from the sites' pooled moments)."""
    layer = model.get_layer("normalization")
    layer.adapt_mean.assign(np.asarray(mean, dtype=np.float32).reshape(layer.adapt_mean.shape))
    layer.adapt_variance.assign(np.asarray(variance, dtype=np.float32).reshape(layer.adapt_variance.shape))
    _sync_normalization(model)


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Balanced weights: positives and negatives weigh the same in total (failures are rare)."""
    positives = float(np.sum(labels > 0.5))
    negatives = float(labels.size) - positives
    if positives == 0 or negatives == 0:
        return {0: 1.0, 1: 1.0}
    return {0: labels.size / (2 * negatives), 1: labels.size / (2 * positives)}


def fit(
    model: keras.Model,
    windows: LabelledWindows,
    *,
    epochs: int = 20,
    batch_size: int = 128,
    learning_rate: float = 0.01,
    balanced: bool = True,
    seed: int = 0,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, list[float]]:
    """Train on labelled windows (binary cross-entropy, Adam, balanced class weights); the per-epoch history.

    The normalisation is not re-adapted here: ``build_model(normalization_from=...)`` (or ``set_normalization``)
    decides it, so a federated round keeps the global model's. Deterministic for a given ``seed``.
    """
    import keras

    if len(windows.labels) == 0:
        raise ValueError("no training windows")
    keras.utils.set_random_seed(seed)
    _sync_normalization(model)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy")
    callbacks: list[keras.callbacks.Callback] = []
    if on_epoch is not None:
        report = on_epoch
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: report(epoch + 1, {k: float(v) for k, v in (logs or {}).items()})
            )
        )
    history = model.fit(
        windows.features.astype(np.float32),
        windows.labels.astype(np.float32),
        epochs=epochs,
        batch_size=batch_size,
        class_weight=class_weights(windows.labels) if balanced else None,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    return {name: [float(value) for value in values] for name, values in history.history.items()}


def predict(model: keras.Model, features: np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
    """Failure probabilities ``[n]`` (float32) of raw feature rows ``[n, 25]``."""
    if len(features) == 0:
        return np.zeros((0,), np.float32)
    _sync_normalization(model)
    scores = model.predict(np.asarray(features, dtype=np.float32), batch_size=batch_size, verbose=0)
    return np.asarray(scores, dtype=np.float32).reshape(-1)


# --- the evaluation split ------------------------------------------------------------------------------------------


def is_held_out(site_id: str, device_id: str, *, eval_fraction: float = 0.25, seed: int = 0) -> bool:
    """Whether a device's windows are evaluation windows: decided per device, from its ids and the seed alone.

    By device, so windows of one machine (strongly alike) are never on both sides; from the ids alone, so a site
    (a federated client) knows its held-out machines without knowing the other sites', and centralised and
    federated training hold out the same machines.
    """
    digest = hashlib.sha256(f"{seed}/{site_id}/{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction


def split_windows(
    history: SiteHistory, *, eval_fraction: float = 0.25, seed: int = 0, stride: int = 5
) -> tuple[LabelledWindows, LabelledWindows]:
    """A site's ``(training, evaluation)`` windows, split by device with ``is_held_out``."""
    train: list[LabelledWindows] = []
    held_out: list[LabelledWindows] = []
    for site_id, device_id in sorted(history.devices()):
        windows = labelled_windows(list(history.device_history(site_id, device_id)), stride=stride)
        side = held_out if is_held_out(site_id, device_id, eval_fraction=eval_fraction, seed=seed) else train
        side.append(windows)
    return concatenate(train), concatenate(held_out)


# --- evaluation ----------------------------------------------------------------------------------------------------


def _figures(
    thresholds: np.ndarray, positives: np.ndarray, negatives: np.ndarray, threshold: float | None
) -> dict[str, Any]:
    """Figures from groups of scores in descending order: each group's threshold and its positive/negative counts.

    Average precision is sklearn's (sum over groups of recall gained x precision there; tied scores are one
    group). The threshold, unless given, is the group's that maximises F1; an alert fires at ``score >= it``.
    """
    total_positives = int(positives.sum())
    windows = int(positives.sum() + negatives.sum())
    empty = {"pr_auc": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    base = {"positives": total_positives, "windows": windows, "positive_rate": total_positives / max(windows, 1)}
    if total_positives == 0 or windows == 0:
        return {**empty, **base, "threshold": 0.5 if threshold is None else float(threshold)}
    true_pos = np.cumsum(positives, dtype=np.float64)
    false_pos = np.cumsum(negatives, dtype=np.float64)
    flagged = true_pos + false_pos
    precision = np.divide(true_pos, flagged, out=np.ones_like(true_pos), where=flagged > 0)
    recall = true_pos / total_positives
    pr_auc = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    if threshold is None:
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(recall), where=recall > 0)
        best = int(np.argmax(f1))
        chosen, tp, fp = float(thresholds[best]), true_pos[best], false_pos[best]
    else:
        chosen = float(threshold)
        taken = thresholds >= chosen
        tp, fp = float(positives[taken].sum()), float(negatives[taken].sum())
    p = tp / (tp + fp) if tp + fp > 0 else 0.0
    r = tp / total_positives
    return {
        "pr_auc": pr_auc,
        "precision": float(p),
        "recall": float(r),
        "f1": float(2 * p * r / (p + r)) if p + r > 0 else 0.0,
        "threshold": chosen,
        **base,
    }


def evaluate(probabilities: np.ndarray, labels: np.ndarray, *, threshold: float | None = None) -> dict[str, Any]:
    """PR-AUC, precision, recall, F1 at ``threshold`` (None: the F1-maximising one here), positives, windows."""
    scores = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    truth = np.asarray(labels, dtype=np.float64).reshape(-1) > 0.5
    if scores.shape != truth.shape:
        raise ValueError(f"{scores.size} probabilities for {truth.size} labels")
    distinct, inverse = np.unique(-scores, return_inverse=True)  # descending scores, ties grouped
    positives = np.bincount(inverse, weights=truth, minlength=distinct.size)
    negatives = np.bincount(inverse, weights=~truth, minlength=distinct.size)
    return _figures(-distinct, positives, negatives, threshold)


def score_counts(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Per-bin counts ``[2, bins]`` (int64): row 0 positives, row 1 negatives, bins equal slices of [0, 1].

    Counts of several sites add up (``sum``) to the counts of their union; ``metrics_from_counts`` reads them.
    """
    scores = np.clip(np.asarray(probabilities, dtype=np.float64).reshape(-1), 0.0, 1.0)
    truth = np.asarray(labels, dtype=np.float64).reshape(-1) > 0.5
    if scores.shape != truth.shape:
        raise ValueError(f"{scores.size} probabilities for {truth.size} labels")
    index = np.minimum((scores * bins).astype(np.int64), bins - 1)
    return np.stack([np.bincount(index[truth], minlength=bins), np.bincount(index[~truth], minlength=bins)]).astype(
        np.int64
    )


def metrics_from_counts(counts: np.ndarray, *, threshold: float | None = None) -> dict[str, Any]:
    """``evaluate``'s figures from ``score_counts`` (summed over sites): a bin is a group of tied scores.

    The chosen threshold is a bin's lower edge. With ``DEFAULT_BINS`` the PR-AUC is within about 0.01 of the
    exact one (it differs only where positives and negatives share a bin).
    """
    table = np.asarray(counts, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] != 2 or table.shape[1] < 1:
        raise ValueError(f"counts are [2, bins], got {table.shape}")
    bins = table.shape[1]
    order = np.arange(bins - 1, -1, -1)  # highest scores first
    return _figures(order / bins, table[0, order], table[1, order], threshold)


# --- drift reference -----------------------------------------------------------------------------------------------


def reference_stats(
    features: np.ndarray,
    *,
    sites: Mapping[str, np.ndarray] | None = None,
    max_samples: int = MAX_SAMPLES_PER_FEATURE,
    seed: int = 0,
) -> dict[str, Any]:
    """``reference_stats`` of a version: samples of each feature (``edgeloop_common.reference_stats`` shape).

    ``{"kind": "telemetry_features", "n": windows, "feature_names": [...], "features": {name: [samples]},
    "summary": {name: {"mean", "std", "p05", "p50", "p95"}}}``: the drift service builds its PSI bins and KS
    references from the samples (at most ``max_samples`` windows, drawn evenly at random). With ``sites`` (site id
    -> that site's features), also ``"sites": {site: {"n", "features"}}``: each site's own reference (sites differ).
    """
    values = _feature_matrix(features)
    samples = _samples(values, max_samples, seed)
    summary: dict[str, dict[str, float]] = {}
    for column, name in enumerate(FEATURE_NAMES):
        everything = values[:, column][np.isfinite(values[:, column])]
        if everything.size:
            p05, p50, p95 = np.percentile(everything, [5, 50, 95])
            summary[name] = {
                "mean": float(everything.mean()),
                "std": float(everything.std()),
                "p05": float(p05),
                "p50": float(p50),
                "p95": float(p95),
            }
    stats: dict[str, Any] = {
        "kind": REFERENCE_KIND,
        "n": len(values),
        "feature_names": list(FEATURE_NAMES),
        "features": samples,
        "summary": summary,
    }
    if sites:
        stats["sites"] = {
            site: {"n": len(rows), "features": _samples(rows, max_samples, seed)}
            for site, rows in ((site, _feature_matrix(part)) for site, part in sorted(sites.items()))
            if len(rows)
        }
    return stats


def _feature_matrix(features: np.ndarray) -> np.ndarray:
    values = np.asarray(features, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"features are [n, {len(FEATURE_NAMES)}], got {values.shape}")
    return values


def _samples(values: np.ndarray, max_samples: int, seed: int) -> dict[str, list[float]]:
    rows = values
    if len(values) > max_samples:
        pick = np.sort(np.random.default_rng(seed).choice(len(values), size=max_samples, replace=False))
        rows = values[pick]
    return {
        name: [round(float(v), 6) for v in rows[:, column][np.isfinite(rows[:, column])]]
        for column, name in enumerate(FEATURE_NAMES)
    }


# --- export --------------------------------------------------------------------------------------------------------


def signature_description() -> dict[str, Any]:
    """The ``serving_default`` signature, as a registered version records it."""
    return {
        "name": SIGNATURE_NAME,
        "kind": "tabular",
        "inputs": {INPUT_NAME: {"dtype": "DT_FLOAT", "shape": [-1, len(FEATURE_NAMES)]}},
        "outputs": {OUTPUT_NAME: {"dtype": "DT_FLOAT", "shape": [-1]}},
        "feature_names": list(FEATURE_NAMES),
        "window_readings": WINDOW_READINGS,
        "horizon_readings": HORIZON_READINGS,
    }


def export_savedmodel(
    model: keras.Model, path: Path, *, metadata: Mapping[str, Any] | None = None, model_name: str = MODEL_NAME
) -> Path:
    """Write the SavedModel (``serving_default``: ``features`` -> ``failure_probability``) into ``path``.

    Beside it, ``assets.extra/``: ``edgeloop.json`` (signature, ``metadata``), ``model.keras`` (the Keras model,
    for a warm start) and one warmup request that the model server replays before serving the version.
    ``path`` is the version folder itself; write into a staging folder and rename it (see the trainer's
    ``export.staged_version``) so a server never sees half a version.
    """
    import keras
    import tensorflow as tf

    _sync_normalization(model)

    @tf.function(input_signature=[tf.TensorSpec([None, len(FEATURE_NAMES)], tf.float32, name=INPUT_NAME)])  # type: ignore[untyped-decorator]
    def serve(features: tf.Tensor) -> dict[str, tf.Tensor]:
        probability = tf.cast(model(features, training=False), tf.float32)
        return {OUTPUT_NAME: tf.reshape(probability, [-1])}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE_NAME, serve)
    archive.write_out(str(path), verbose=False)
    (path / KERAS_CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path / KERAS_CHECKPOINT))
    recorded = {
        "format": METADATA_FORMAT,
        "model_kind": model_kind(model),
        "signature": signature_description(),
        **dict(metadata or {}),
    }
    (path / METADATA_FILE).write_text(json.dumps(recorded, indent=2) + "\n")
    _write_warmup_request(path, model_name)
    return path


def _write_warmup_request(path: Path, model_name: str) -> None:
    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError:  # the warmup file is optional: a server without it answers the first request cold
        return
    import tensorflow as tf

    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SIGNATURE_NAME),
        inputs={INPUT_NAME: tf.make_tensor_proto(np.zeros((1, len(FEATURE_NAMES)), np.float32))},
    )
    record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    with tf.io.TFRecordWriter(str(path / WARMUP_FILE)) as writer:
        writer.write(record.SerializeToString())


def load_keras(version_dir: Path) -> keras.Model:
    """The Keras model an exported version keeps (``assets.extra/model.keras``), e.g. to warm-start from it."""
    import keras

    model = keras.models.load_model(str(version_dir / KERAS_CHECKPOINT))
    _sync_normalization(model)
    return model


def read_metadata(version_dir: Path) -> dict[str, Any]:
    recorded: dict[str, Any] = json.loads((version_dir / METADATA_FILE).read_text())
    return recorded


def finite_metrics(figures: Mapping[str, Any]) -> dict[str, Any]:
    """Figures safe for JSON (no NaN or infinity)."""
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in figures.items()}


def feature_rows(windows: Sequence[np.ndarray]) -> np.ndarray:
    """Stack feature vectors into ``[n, 25]`` float32 (empty-safe)."""
    if not windows:
        return np.zeros((0, len(FEATURE_NAMES)), np.float32)
    return np.stack([np.asarray(w, dtype=np.float32) for w in windows])
