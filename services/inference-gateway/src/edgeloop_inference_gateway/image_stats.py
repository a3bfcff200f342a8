"""Cheap per-image statistics for drift detection, and the check that the bytes are a JPEG or PNG.

The statistics are computed on a grayscale copy whose longest side is at most
``STATS_SIDE`` pixels (JPEGs are decoded at reduced scale, which is what keeps
this cheap: about 0.5 ms of CPU for a 500x440 photo), so they do not depend on the camera's resolution:

* ``brightness_mean``: mean gray level, 0..1
* ``contrast_std``: standard deviation of the gray level, 0..1
* ``sharpness_laplacian_var``: variance of the 4-neighbour Laplacian (blur lowers it)
* ``width``, ``height``: of the original image, in pixels
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgeloop_inference_gateway.ports import InvalidImageError

STATS_SIDE = 128
ACCEPTED_FORMATS = {"JPEG": "jpeg", "PNG": "png"}


@dataclass(frozen=True)
class ImageFacts:
    format: str
    width: int
    height: int
    stats: dict[str, float]


def inspect_image(data: bytes) -> ImageFacts:
    """Decode ``data`` (JPEG or PNG) once, small, and measure it; :class:`InvalidImageError` otherwise."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ACCEPTED_FORMATS:
                raise InvalidImageError(f"unsupported image format {image.format}; send JPEG or PNG")
            width, height = image.size
            image.draft("L", (STATS_SIDE, STATS_SIDE))  # JPEG: let the decoder scale down by 1/2..1/8
            gray = image.convert("L")
    except UnidentifiedImageError as exc:
        raise InvalidImageError("not a JPEG or PNG image (format not recognised)") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"not a decodable JPEG or PNG image: {exc}") from exc
    gray.thumbnail((STATS_SIDE, STATS_SIDE))
    return ImageFacts(
        format=ACCEPTED_FORMATS[str(image.format)],
        width=width,
        height=height,
        stats=_statistics(np.asarray(gray, dtype=np.float32) / 255.0, width, height),
    )


def _statistics(pixels: np.ndarray, width: int, height: int) -> dict[str, float]:
    if min(pixels.shape) >= 3:
        laplacian = (
            pixels[:-2, 1:-1] + pixels[2:, 1:-1] + pixels[1:-1, :-2] + pixels[1:-1, 2:] - 4.0 * pixels[1:-1, 1:-1]
        )
        sharpness = float(laplacian.var())
    else:
        sharpness = 0.0
    return {
        "brightness_mean": float(pixels.mean()),
        "contrast_std": float(pixels.std()),
        "sharpness_laplacian_var": sharpness,
        "width": float(width),
        "height": float(height),
    }
