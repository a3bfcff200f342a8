"""Cheap per-image statistics for drift detection, and the check that the bytes are a JPEG or PNG.

The statistics are computed on an RGB copy whose longest side is at most ``STATS_SIDE`` pixels (JPEGs are
decoded at reduced scale, which is what keeps this cheap: under a millisecond of CPU for a 500x375 photo), so
they do not depend on the camera's resolution. Channels and gray levels are on a 0..1 scale; gray is the
ITU-R 601 luma of the copy.

* ``brightness_mean``: mean gray level, 0..1
* ``contrast_std``: standard deviation of the gray level, 0..1
* ``sharpness_laplacian_var``: variance of the 4-neighbour Laplacian of the gray levels (blur lowers it, noise
  raises it)
* ``saturation_mean``: the colourfulness, sum(max - min) / sum(max) of each pixel's R, G, B, 0..1 (0 for gray):
  HSV saturation weighted by each pixel's value, so that the noise of dark pixels does not dominate it and a
  darker light does not move it; a grayscale or faded camera lowers it
* ``red_green_mean``: mean of R - G, -1..1; ``blue_yellow_mean``: mean of B - (R + G) / 2, -1..1 — the two
  opponent-colour axes: a colour cast (white balance, tinted light or glass) moves them
* ``width``, ``height``: of the original image, in pixels
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageStat, UnidentifiedImageError

from edgeloop_inference_gateway.ports import InvalidImageError

STATS_SIDE = 128
ACCEPTED_FORMATS = {"JPEG": "jpeg", "PNG": "png"}
COLOUR_SIDE = 64  # the colour statistics' copy: at most this many pixels on its longest side (box filter)


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
            image.draft("RGB", (STATS_SIDE, STATS_SIDE))  # JPEG: let the decoder scale down by 1/2..1/8
            rgb = image.convert("RGB")
    except UnidentifiedImageError as exc:
        raise InvalidImageError("not a JPEG or PNG image (format not recognised)") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"not a decodable JPEG or PNG image: {exc}") from exc
    gray = rgb.convert("L")
    gray.thumbnail((STATS_SIDE, STATS_SIDE))
    # Colour is measured on a smaller box-filtered copy: its means hardly depend on the size, and the
    # resampling of three channels at STATS_SIDE would cost more than everything else together.
    colour = rgb.reduce(max(1, -(-max(rgb.size) // COLOUR_SIDE)))
    stats = _gray_statistics(np.asarray(gray, dtype=np.float32) / 255.0)
    stats.update(_colour_statistics(colour))
    stats.update(width=float(width), height=float(height))
    return ImageFacts(format=ACCEPTED_FORMATS[str(image.format)], width=width, height=height, stats=stats)


def _gray_statistics(pixels: np.ndarray) -> dict[str, float]:
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
    }


def _colour_statistics(rgb: Image.Image) -> dict[str, float]:
    red, green, blue = (value / 255.0 for value in ImageStat.Stat(rgb).mean)
    hsv = np.asarray(rgb.convert("HSV"), dtype=np.float32)
    value = hsv[..., 2]  # max(R, G, B); saturation * value = max - min
    value_sum = float(value.sum())
    saturation = float((hsv[..., 1] * value).sum()) / (255.0 * value_sum) if value_sum > 0 else 0.0
    return {
        "saturation_mean": saturation,
        "red_green_mean": red - green,
        "blue_yellow_mean": blue - (red + green) / 2.0,
    }
