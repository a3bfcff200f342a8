"""Image inspection (edgeloop_common.images): the format check, the statistics, and the quality verdict."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from edgeloop_common.images import (
    BLANK_CONTRAST,
    TOO_BRIGHT_BRIGHTNESS,
    TOO_DARK_BRIGHTNESS,
    InvalidImageError,
    assess_quality,
    inspect_image,
)
from PIL import Image, ImageFilter

from tests.synthetic_photos import jpeg_bytes


def encoded(image: Image.Image, format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, quality=90)
    return buffer.getvalue()


def photos(folder: Path) -> list[Path]:
    found = sorted(path for path in folder.rglob("*.jpg"))
    assert found, f"no photos in {folder}"
    return found


# -- the format check ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GIF89a not really", "not a JPEG or PNG image (format not recognised)"),
        (b"\xff\xd8\xff\xe0 this is not a JPEG at all", "JPEG or PNG"),
        (encoded(Image.new("RGB", (8, 8)), "BMP"), "unsupported image format BMP; send JPEG or PNG"),
    ],
)
def test_what_is_not_a_jpeg_or_png_is_refused_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidImageError, match=re.escape(reason)) as raised:
        inspect_image(data)
    assert isinstance(raised.value, ValueError)


# -- the statistics -------------------------------------------------------------------------------------------------


def test_image_statistics_follow_the_picture() -> None:
    dark = inspect_image(jpeg_bytes((20, 20, 20), size=(320, 240)))
    bright = inspect_image(jpeg_bytes((230, 230, 230), size=(320, 240)))
    sharp_image = jpeg_bytes((120, 80, 60), size=(320, 240))
    sharp = inspect_image(sharp_image)
    with Image.open(io.BytesIO(sharp_image)) as image:
        blurred = inspect_image(encoded(image.filter(ImageFilter.GaussianBlur(3))))
    flat = inspect_image(jpeg_bytes((120, 80, 60), size=(320, 240), pattern=False))
    assert dark.stats["brightness_mean"] < 0.3 < bright.stats["brightness_mean"]
    assert blurred.stats["sharpness_laplacian_var"] < sharp.stats["sharpness_laplacian_var"] / 2
    assert flat.stats["contrast_std"] < 0.02 < sharp.stats["contrast_std"]
    assert (sharp.width, sharp.height, sharp.format) == (320, 240, "jpeg")
    assert sharp.stats["width"] == 320.0 and sharp.stats["height"] == 240.0
    png = inspect_image(encoded(Image.new("RGB", (32, 32), (10, 200, 90)), "PNG"))
    assert png.format == "png" and 0.0 <= png.stats["brightness_mean"] <= 1.0


def test_colour_statistics_see_a_colour_cast_and_a_grayscale_camera(catdog_train_dir: Path) -> None:
    """Brightness hardly moves under a white-balance shift or a grayscale camera; the colour statistics do."""
    from PIL import ImageOps

    daylight = (path for path in sorted((catdog_train_dir / "dog").iterdir()) if path.suffix == ".jpg")
    chosen = next(path for path in daylight if inspect_image(path.read_bytes()).stats["brightness_mean"] > 0.3)
    with Image.open(chosen) as photo:
        original = photo.convert("RGB")
    red, green, blue = original.split()
    warm = Image.merge("RGB", (red.point(lambda v: min(255, v * 1.3)), green, blue.point(lambda v: v * 0.7)))
    cool = Image.merge("RGB", (red.point(lambda v: v * 0.7), green, blue.point(lambda v: min(255, v * 1.3))))

    def measured(image: Image.Image) -> dict[str, float]:
        return inspect_image(encoded(image)).stats

    base, warmer, cooler = measured(original), measured(warm), measured(cool)
    gray = measured(ImageOps.grayscale(original).convert("RGB"))
    gray_jpeg = measured(ImageOps.grayscale(original))  # a single-channel JPEG
    assert warmer["red_green_mean"] > base["red_green_mean"] + 0.03 > cooler["red_green_mean"] + 0.06
    assert warmer["blue_yellow_mean"] < base["blue_yellow_mean"] - 0.03 < cooler["blue_yellow_mean"] - 0.06
    assert base["saturation_mean"] > 0.1
    for grayscale in (gray, gray_jpeg):
        assert grayscale["saturation_mean"] < 0.02, grayscale
        assert abs(grayscale["red_green_mean"]) < 0.01 and abs(grayscale["blue_yellow_mean"]) < 0.01, grayscale
        assert grayscale["brightness_mean"] == pytest.approx(base["brightness_mean"], abs=0.02)
    assert all(-1.0 <= base[name] <= 1.0 for name in ("red_green_mean", "blue_yellow_mean"))


def test_a_photo_is_measured_quickly(catdog_captures_dir: Path) -> None:
    import time

    photo = sorted(catdog_captures_dir.iterdir())[0].read_bytes()
    inspect_image(photo)
    started = time.perf_counter()
    for _ in range(20):
        facts = inspect_image(photo)
    per_image_ms = (time.perf_counter() - started) / 20 * 1000
    assert facts.width > 0 and facts.height > 0
    assert per_image_ms < 50, f"image statistics took {per_image_ms:.1f} ms per photo"


# -- the quality verdict ------------------------------------------------------------------------------------------


def test_every_night_frame_of_a_real_camera_is_too_dark(catdog_dir: Path) -> None:
    frames = photos(catdog_dir / "black-frames")
    assert len(frames) == 14
    for frame in frames:
        facts = inspect_image(frame.read_bytes())
        assert facts.quality == assess_quality(facts.stats) == "too_dark", (frame.name, facts.stats)
        # with a clear margin: the darkest real photo darkened x0.25 is at 0.053
        assert facts.stats["brightness_mean"] < TOO_DARK_BRIGHTNESS / 1.4, frame.name


def test_every_real_photo_is_ok(catdog_dir: Path) -> None:
    for photo in [*photos(catdog_dir / "train"), *photos(catdog_dir / "captures")]:
        facts = inspect_image(photo.read_bytes())
        assert facts.quality == "ok", (photo.name, facts.stats)


@pytest.mark.parametrize(
    ("color", "verdict"),
    [
        ((0, 0, 0), "too_dark"),
        ((4, 6, 5), "too_dark"),
        ((255, 255, 255), "too_bright"),
        ((128, 128, 128), "blank"),
        ((40, 90, 200), "blank"),
    ],
)
def test_featureless_frames_get_their_verdict(color: tuple[int, int, int], verdict: str) -> None:
    facts = inspect_image(jpeg_bytes(color, size=(320, 240), pattern=False))
    assert facts.quality == verdict, facts.stats


def test_the_verdict_follows_the_thresholds() -> None:
    def stats(brightness: float, contrast: float = 0.2) -> dict[str, float]:
        return {"brightness_mean": brightness, "contrast_std": contrast}

    assert assess_quality(stats(TOO_DARK_BRIGHTNESS * 0.99)) == "too_dark"
    assert assess_quality(stats(TOO_DARK_BRIGHTNESS)) == "ok"
    assert assess_quality(stats(TOO_BRIGHT_BRIGHTNESS + 0.001)) == "too_bright"
    assert assess_quality(stats(TOO_BRIGHT_BRIGHTNESS)) == "ok"
    assert assess_quality(stats(0.5, BLANK_CONTRAST * 0.99)) == "blank"
    assert assess_quality(stats(0.5, BLANK_CONTRAST)) == "ok"
    assert assess_quality(stats(0.01, 0.0)) == "too_dark"  # a black frame is featureless too: the exposure first


def _png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 65536, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [13_000, 100_000])
def test_a_picture_over_the_pixel_limit_is_refused_from_its_header(side: int) -> None:
    """13000x13000 is under twice Pillow's MAX_IMAGE_PIXELS, where Pillow only warns: it was decoded in full (a PNG
    has no reduced-scale decoding, about 700 MB to convert); 100000x100000 is Pillow's DecompressionBombError."""
    with pytest.raises(InvalidImageError, match="decompression bomb, not decoded"):
        inspect_image(_png_declaring(side, side))
    with pytest.raises(InvalidImageError, match="the limit is 100"):
        inspect_image(encoded(Image.new("RGB", (20, 10))), max_pixels=100)


def test_an_unsupported_format_is_named_once() -> None:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "GIF")
    with pytest.raises(InvalidImageError) as raised:
        inspect_image(out.getvalue())
    assert str(raised.value) == "unsupported image format GIF; send JPEG or PNG"
