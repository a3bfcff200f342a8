"""Cheap per-image statistics for drift detection, the check that the bytes are a JPEG or PNG, and a quality verdict.

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

:func:`assess_quality` judges from these statistics (no second decode) whether there is anything to classify:
``"ok"``, or ``"too_dark"`` (a camera at night), ``"too_bright"`` (blown out) or ``"blank"`` (featureless).
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import get_args

import numpy as np
from PIL import Image, ImageStat, UnidentifiedImageError

from edgeloop_common.events import ImageQuality

STATS_SIDE = 128
ACCEPTED_FORMATS = {"JPEG": "jpeg", "PNG": "png"}
COLOUR_SIDE = 64  # the colour statistics' copy: at most this many pixels on its longest side (box filter)

IMAGE_QUALITIES: tuple[ImageQuality, ...] = get_args(ImageQuality)

# The quality thresholds, measured with bench/image_quality.py on ../shared/datasets/catdog (docs/gateway.md, "Image
# quality"). Night frames of a Raspberry Pi camera (black-frames/, black with a timestamp bar) have a
# brightness_mean of 0.0225..0.0228; the train photos 0.217..0.873, and darkened x0.25 (the `darken` drift of the
# closed loop, which must stay "ok") 0.053..0.216: the dark limit sits about 1.5x from both. The train photos
# brightened x1.8 reach 0.9958 (nearly all clipped, still "ok": the loop learns from them), so only a frame within
# half a gray level of white on average is too bright. The lowest contrast_std of any photo or drifted photo
# (darkened, brightened, blurred, hazed x0.6 or even x0.8) is 0.017; a featureless frame (a wall, a lens cap, fog)
# is well under the blank limit.
TOO_DARK_BRIGHTNESS = 0.035  # brightness_mean below this (about 9 of 255): too dark
TOO_BRIGHT_BRIGHTNESS = 0.998  # brightness_mean above this (about 254.5 of 255): too bright
BLANK_CONTRAST = 0.01  # contrast_std below this (about 2.5 of 255): blank


# The largest picture inspected, width x height (ingest's default EDGELOOP_INGEST_MAX_IMAGE_PIXELS): a bigger one is
# refused from its header, before anything is decoded. Pillow's own guard (Image.MAX_IMAGE_PIXELS) only warns up to
# twice its 89 million pixels, and a PNG cannot be decoded at reduced scale: a 13000x13000 PNG of a few hundred
# kilobytes would cost about 700 MB to convert.
MAX_PIXELS = 40_000_000
# What Pillow raises on malformed input besides OSError and ValueError (its decoders were fuzzed into all of these).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    MemoryError,
    Image.DecompressionBombError,
)


class InvalidImageError(ValueError):
    """The bytes are not a JPEG or PNG image that can be decoded."""


@dataclass(frozen=True)
class ImageFacts:
    format: str
    width: int
    height: int
    stats: dict[str, float]

    @property
    def quality(self) -> ImageQuality:
        return assess_quality(self.stats)


def inspect_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> ImageFacts:
    """Decode ``data`` (JPEG or PNG) once, small, and measure it; :class:`InvalidImageError` otherwise.

    A picture of more than ``max_pixels`` (width x height, from its header) is refused before it is decoded.
    """
    if not data:
        raise InvalidImageError("empty payload: no bytes, expected a JPEG or PNG image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below is ours
            image = Image.open(io.BytesIO(data))
        with image:
            if image.format not in ACCEPTED_FORMATS:
                raise InvalidImageError(f"unsupported image format {image.format}; send JPEG or PNG")
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidImageError(
                    f"image declares {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
                    "(possible decompression bomb, not decoded)"
                )
            image.draft("RGB", (STATS_SIDE, STATS_SIDE))  # JPEG: let the decoder scale down by 1/2..1/8
            rgb = image.convert("RGB")
    except InvalidImageError:
        raise
    except UnidentifiedImageError as exc:
        raise InvalidImageError("not a JPEG or PNG image (format not recognised)") from exc
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(f"possible decompression bomb, not decoded: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise InvalidImageError(f"not a decodable JPEG or PNG image: {exc or type(exc).__name__}") from exc
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


def assess_quality(stats: Mapping[str, float]) -> ImageQuality:
    """Whether a picture measured by :func:`inspect_image` shows anything a classifier could judge.

    ``"too_dark"`` and ``"too_bright"`` before ``"blank"``: a black or white frame is also featureless, and
    the exposure is the more useful thing to tell.
    """
    brightness = stats["brightness_mean"]
    if brightness < TOO_DARK_BRIGHTNESS:
        return "too_dark"
    if brightness > TOO_BRIGHT_BRIGHTNESS:
        return "too_bright"
    if stats["contrast_std"] < BLANK_CONTRAST:
        return "blank"
    return "ok"
