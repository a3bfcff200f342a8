"""The one image preprocessing used for training *and* inside the exported serving graph.

Training and serving must see identical pixels, so both go through
:func:`decode_and_resize`: decode JPEG/PNG bytes to RGB, resize to a square
with antialiasing, round to whole 0..255 values. The model itself rescales.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from edgeloop_trainer.dataset import Sample

log = logging.getLogger(__name__)


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded image bytes (scalar string) -> float32 [image_size, image_size, 3] with values 0..255."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def load_images(samples: Sequence[Sample], image_size: int) -> tuple[np.ndarray, np.ndarray, list[Sample]]:
    """Decode every sample once: (uint8 images [N, S, S, 3], labels [N], samples that could not be decoded)."""
    images: list[np.ndarray] = []
    labels: list[int] = []
    unreadable: list[Sample] = []
    for sample in samples:
        try:
            pixels = decode_and_resize(tf.io.read_file(str(sample.path)), image_size)
        except tf.errors.InvalidArgumentError as exc:
            log.warning("skipping %s: not a decodable JPEG/PNG image (%s)", sample.path, exc.message.splitlines()[0])
            unreadable.append(sample)
            continue
        images.append(pixels.numpy().astype(np.uint8))
        labels.append(sample.label)
    shape = (0, image_size, image_size, 3)
    stacked = np.stack(images) if images else np.zeros(shape, np.uint8)
    return stacked, np.asarray(labels, dtype=np.int32), unreadable
