"""What a classifier is made of, and how it learns: a backbone and a head.

Two kinds of recipe (:class:`Recipe`):

* a **pretrained backbone** (``efficientnet-lite0``, ``efficientnet-lite2``: ImageNet weights from an installed
  package, see :mod:`edgeloop_trainer.backbones`), frozen, with a softmax head trained on its pooled features.
  The features of an image depend only on its bytes and the backbone, so they are computed once per image and
  kept in a :class:`FeatureCache` keyed by the image's sha256: a retraining on mostly known images is seconds.
  ``fine_tune=N`` then unfreezes the backbone's top N blocks and trains them with the head on the images, at a
  tenth of the learning rate (batch-norm statistics stay frozen);
* the **small CNN** (``small-cnn``), trained from scratch on the images with augmentation: no weights to ship,
  tiny, for small devices and fast tests — and at chance on photos it never saw, on a few hundred photos.

Either way the Keras model takes raw 0..255 RGB pixels of ``image_size`` x ``image_size`` and gives softmax
scores (layer ``scores``), so export, warm start and evaluation treat them alike.
"""

from __future__ import annotations

import logging
import math
import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from edgeloop_trainer.backbones import build_efficientnet_lite, get_backbone, read_torch_state_dict
from edgeloop_trainer.recipe import Recipe

log = logging.getLogger(__name__)

BACKBONE_LAYER = "backbone"
SCORES_LAYER = "scores"
FEATURE_BATCH = 32
FINE_TUNE_LEARNING_RATE_FACTOR = 0.1

FeatureProgress = Callable[[int, int], None]  # (features computed, features to compute)


def build_classifier(recipe: Recipe, num_classes: int, seed: int) -> keras.Model:
    """A fresh classifier: raw 0..255 pixels of ``recipe.size`` in, softmax scores (layer ``scores``) out."""
    if not recipe.pretrained:
        return _small_cnn(num_classes, recipe.size, seed)
    backbone = get_backbone(recipe.backbone)
    if recipe.fine_tune or recipe.size != backbone.input_size:
        # A private copy: fine-tuning must not touch the extractor the process shares, and another input size
        # needs its own input layer.
        extractor = build_efficientnet_lite(
            backbone.variant, read_torch_state_dict(backbone.weights_path()), include_top=False, input_size=recipe.size
        )
        extractor.trainable = False
    else:
        extractor = backbone.feature_extractor()
    inputs = keras.Input(shape=(recipe.size, recipe.size, 3), name="image")
    features = keras.Model(extractor.input, extractor.output, name=BACKBONE_LAYER)(inputs)
    x = keras.layers.Dropout(0.2, seed=seed, name="head_dropout")(features)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name=SCORES_LAYER)(x)
    return keras.Model(inputs, outputs, name=f"edgeloop_{recipe.backbone.replace('-', '_')}_classifier")


def _small_cnn(num_classes: int, image_size: int, seed: int) -> keras.Model:
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
    outputs = keras.layers.Dense(num_classes, activation="softmax", name=SCORES_LAYER)(x)
    return keras.Model(inputs, outputs, name="edgeloop_image_classifier")


class FeatureCache:
    """Pooled backbone features of images, one ``.npy`` file per image sha256, under a folder per backbone.

    Valid only for an untouched backbone (a fine-tuned one computes its own features). Files are written to a
    temporary name and renamed, so a reader never sees half a file; an unreadable file is recomputed.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def folder(self, recipe: Recipe) -> Path:
        backbone = get_backbone(recipe.backbone)
        return self.directory / f"{recipe.backbone}-{backbone.weights_sha256()[:16]}-{recipe.size}px"

    def load(self, folder: Path, sha256: str) -> np.ndarray | None:
        path = folder / sha256[:2] / f"{sha256}.npy"
        try:
            features: np.ndarray = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        return features

    def store(self, folder: Path, sha256: str, features: np.ndarray) -> None:
        target = folder / sha256[:2] / f"{sha256}.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{sha256}.{uuid.uuid4().hex[:8]}.npy")
        np.save(temporary, features.astype(np.float32), allow_pickle=False)
        os.replace(temporary, target)


@dataclass(frozen=True)
class FitReport:
    """What a fit did, for the training parameters: features computed and taken from the cache."""

    features_computed: int = 0
    features_cached: int = 0


def fit_classifier(
    model: keras.Model,
    recipe: Recipe,
    images: np.ndarray,
    labels: np.ndarray,
    sha256s: Sequence[str],
    num_classes: int,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    cache: FeatureCache | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    on_features: FeatureProgress | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> FitReport:
    """Train ``model`` (fresh or warm-started) on uint8 ``images`` [N, S, S, 3] with ``labels`` [N].

    ``sha256s`` names each image (repeats allowed: an oversampled image is one feature lookup). The small CNN
    trains on the images; a pretrained recipe trains its head on the backbone's features, then, with
    ``fine_tune``, the top blocks too.
    """
    computed = cached = 0
    trained, inputs = model, images
    if recipe.pretrained:
        backbone = model.get_layer(BACKBONE_LAYER)
        # A fine-tuned backbone (this recipe's, or an ancestor's: a warm start needs the same recipe) computes
        # features of its own: they are never cached nor read from the cache.
        usable_cache = cache if recipe.fine_tune == 0 else None
        inputs, computed, cached = _features(backbone, recipe, images, sha256s, usable_cache, on_features)
        trained = _head_of(model)  # the head alone, on the features
        if validation is not None:
            validation = (
                np.asarray(backbone.predict(validation[0], batch_size=FEATURE_BATCH, verbose=0)),
                validation[1],
            )
    compile_and_fit(
        trained,
        inputs,
        labels,
        num_classes,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        seed=seed,
        callbacks=callbacks,
        validation=validation,
    )
    if recipe.fine_tune:
        _unfreeze_top_blocks(model.get_layer(BACKBONE_LAYER), recipe.fine_tune)
        compile_and_fit(
            model,
            images,
            labels,
            num_classes,
            epochs=max(1, epochs // 4),
            learning_rate=learning_rate * FINE_TUNE_LEARNING_RATE_FACTOR,
            batch_size=batch_size,
            seed=seed,
            callbacks=callbacks,
        )
    return FitReport(features_computed=computed, features_cached=cached)


def _features(
    backbone: keras.Model,
    recipe: Recipe,
    images: np.ndarray,
    sha256s: Sequence[str],
    cache: FeatureCache | None,
    on_features: FeatureProgress | None,
) -> tuple[np.ndarray, int, int]:
    """Features [N, D] of ``images``: each distinct sha256 looked up in the cache or computed once, in batches."""
    if len(sha256s) != len(images):
        raise ValueError(f"{len(sha256s)} image hashes for {len(images)} images")
    folder = cache.folder(recipe) if cache is not None else None
    known: dict[str, np.ndarray] = {}
    first_index: dict[str, int] = {}
    for index, sha in enumerate(sha256s):
        first_index.setdefault(sha, index)
    if cache is not None and folder is not None:
        for sha in first_index:
            found = cache.load(folder, sha)
            if found is not None:
                known[sha] = found
    cached = len(known)
    missing = [sha for sha in first_index if sha not in known]
    for start in range(0, len(missing), FEATURE_BATCH):
        batch = missing[start : start + FEATURE_BATCH]
        pixels = tf.cast(images[[first_index[sha] for sha in batch]], tf.float32)
        computed = np.asarray(backbone(pixels, training=False))
        for sha, row in zip(batch, computed, strict=True):
            known[sha] = row
            if cache is not None and folder is not None:
                cache.store(folder, sha, row)
        if on_features is not None:
            on_features(min(start + FEATURE_BATCH, len(missing)), len(missing))
    if missing:
        log.info("features: %d computed, %d from the cache (%s)", len(missing), cached, recipe.backbone)
    dimension = next(iter(known.values())).shape[-1] if known else 0
    features = np.stack([known[sha] for sha in sha256s]) if known else np.zeros((0, dimension), np.float32)
    return features.astype(np.float32), len(missing), cached


def _head_of(model: keras.Model) -> keras.Model:
    """The layers after the backbone as a model of their own (features in, scores out), sharing the weights."""
    backbone = model.get_layer(BACKBONE_LAYER)
    features_in = keras.Input(shape=backbone.output.shape[1:], name="features")
    x = features_in
    after = False
    for layer in model.layers:
        if after:
            x = layer(x)
        after = after or layer.name == BACKBONE_LAYER
    return keras.Model(features_in, x, name="head")


def _unfreeze_top_blocks(backbone: keras.Model, blocks: int) -> None:
    """Make the convolutions of the backbone's last ``blocks`` blocks (and its head conv) trainable.

    Batch-norm layers stay frozen: on a few hundred images, batch statistics would wreck the pretrained ones.
    """
    numbered = [_block_of_layer(layer.name) for layer in backbone.layers]
    last = max((number for number in numbered if number is not None), default=-1)
    first_unfrozen = last - blocks + 1
    backbone.trainable = True
    for layer, number in zip(backbone.layers, numbered, strict=True):
        in_top = number >= first_unfrozen if number is not None else layer.name.startswith("conv_head")
        layer.trainable = in_top and not isinstance(layer, keras.layers.BatchNormalization)


def _block_of_layer(name: str) -> int | None:
    """``blocks_12_expand_conv`` -> 12; None for the stem and the head (see backbones.efficientnet_lite)."""
    matched = re.match(r"blocks_(\d+)_", name)
    return int(matched.group(1)) if matched else None


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Weights that make every class count equally, whatever its number of images."""
    counts = np.bincount(labels, minlength=num_classes)
    return {index: float(len(labels) / (num_classes * count)) if count else 0.0 for index, count in enumerate(counts)}


def compile_and_fit(
    model: keras.Model,
    train_inputs: np.ndarray,
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
    """Train ``model`` with Adam at ``learning_rate``, class-balanced, seeded shuffling (images or features)."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    train = (
        tf.data.Dataset.from_tensor_slices((train_inputs, train_labels))
        .shuffle(len(train_labels), seed=seed, reshuffle_each_iteration=True)
        .map(lambda inputs, label: (tf.cast(inputs, tf.float32), label))
        .batch(batch_size)
        .prefetch(2)
    )
    held_out = None
    if validation is not None:
        held_out = (
            tf.data.Dataset.from_tensor_slices(validation)
            .map(lambda inputs, label: (tf.cast(inputs, tf.float32), label))
            .batch(batch_size)
        )
    # The held-out split is only displayed per epoch, never used to pick a model (no leakage into the figures).
    model.fit(
        train,
        epochs=epochs,
        validation_data=held_out,
        class_weight=class_weights(train_labels, num_classes),
        callbacks=list(callbacks),
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=0,
    )
