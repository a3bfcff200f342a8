"""The one image preprocessing used for training *and* inside the exported serving graph.

Training and serving must see identical pixels, so both go through
:func:`decode_and_resize`: decode JPEG/PNG bytes to RGB, resize to a square
with antialiasing, round to whole 0..255 values. The model itself rescales.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from edgeloop_common.images import InvalidImageError, inspect_image

from edgeloop_trainer.dataset import Sample

log = logging.getLogger(__name__)


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded image bytes (scalar string) -> float32 [image_size, image_size, 3] with values 0..255."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


@dataclass(frozen=True)
class LoadedImages:
    """Samples decoded once: the pixels of those kept, and why the others were left out."""

    images: np.ndarray  # uint8 [N, S, S, 3]
    labels: np.ndarray  # int32 [N]
    kept: list[Sample]  # the N samples, in order
    sha256s: list[str]  # of each kept sample's bytes (what the feature cache is keyed by)
    unreadable: list[Sample]
    poor_quality: list[tuple[Sample, str]]  # with the quality verdict (too_dark, too_bright, blank)

    @property
    def left_out(self) -> list[Sample]:
        return [*self.unreadable, *(sample for sample, _ in self.poor_quality)]


def load_images(samples: Sequence[Sample], image_size: int, *, exclude_poor_quality: bool = True) -> LoadedImages:
    """Decode every sample once at ``image_size``; skip undecodable files and pictures with nothing to learn from.

    A black night frame, a blank or an over-exposed picture gets a quality verdict other than ``ok`` (the same
    verdict the gateway gives live, :func:`edgeloop_common.images.assess_quality`) and is left out of training
    and evaluation, whatever its label says.
    """
    images: list[np.ndarray] = []
    labels: list[int] = []
    kept: list[Sample] = []
    sha256s: list[str] = []
    unreadable: list[Sample] = []
    poor_quality: list[tuple[Sample, str]] = []
    for sample in samples:
        data = sample.path.read_bytes()
        if exclude_poor_quality:
            verdict = _quality(data)
            if verdict is not None and verdict != "ok":
                log.warning("leaving out %s: picture quality %s", sample.path, verdict)
                poor_quality.append((sample, verdict))
                continue
        try:
            pixels = decode_and_resize(tf.constant(data), image_size)
        except tf.errors.InvalidArgumentError as exc:
            log.warning("skipping %s: not a decodable JPEG/PNG image (%s)", sample.path, exc.message.splitlines()[0])
            unreadable.append(sample)
            continue
        images.append(pixels.numpy().astype(np.uint8))
        labels.append(sample.label)
        kept.append(sample)
        sha256s.append(hashlib.sha256(data).hexdigest())
    shape = (0, image_size, image_size, 3)
    stacked = np.stack(images) if images else np.zeros(shape, np.uint8)
    return LoadedImages(stacked, np.asarray(labels, dtype=np.int32), kept, sha256s, unreadable, poor_quality)


def _quality(data: bytes) -> str | None:
    """The quality verdict of the picture, or None when Pillow cannot read it (TensorFlow may still decode it)."""
    try:
        verdict: str = inspect_image(data).quality
    except InvalidImageError:
        return None
    return verdict
