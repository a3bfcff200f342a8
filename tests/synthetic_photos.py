"""A synthetic data set of photos EdgeLoop has never seen: class folders of JPEGs made with Pillow.

Three classes of patterns — ``checks``, ``dots``, ``stripes`` — each on a patch of random shape, position,
size, scale and angle, over a random gradient background, with sensor noise and a little blur; 96x96 px by
default. The class is told by the pattern and, loosely, by the hue of its ink (as real classes have typical
colours): each class's hues spread +-60 degrees around its own (red, green, blue), so neighbours overlap; paper
and background are of any colour. The small CNN of the trainer reaches about 0.75 on it at 64 px in 30 epochs
(on the pattern alone, about 0.5: too hard for it on a few hundred photos). Deterministic for a seed.

``--condition`` puts every photo under a condition of its own that ``edgeloop.drifts`` does not have, to
make ``--drifted-images`` folders::

    python -m tests.synthetic_photos /tmp/patterns/train --per-class 120
    python -m tests.synthetic_photos /tmp/patterns/jpeg-q10 --per-class 30 --seed 7 --condition jpeg-q10
    edgeloop demo --train-data /tmp/patterns/train --drifted-images /tmp/patterns/jpeg-q10 ...
"""

from __future__ import annotations

import argparse
import colorsys
import io
import math
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter

CLASSES = ("checks", "dots", "stripes")
CLASS_HUES = {"checks": 0.0, "dots": 120.0, "stripes": 240.0}  # degrees; the ink's hue, +- HUE_SPREAD
HUE_SPREAD = 60.0
Colour = tuple[int, int, int]


def _colour(rng: random.Random) -> Colour:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _background(rng: random.Random, size: int) -> Image.Image:
    mask = Image.linear_gradient("L").resize((size, size)).rotate(rng.uniform(0, 360), fillcolor=128)
    return Image.composite(
        Image.new("RGB", (size, size), _colour(rng)), Image.new("RGB", (size, size), _colour(rng)), mask
    )


def _pattern(label: str, rng: random.Random, size: int, ink: Colour, paper: Colour) -> Image.Image:
    """``size`` x ``size`` of the class's pattern, at a random scale and angle (drawn larger, rotated, cropped)."""
    big = 2 * size
    image = Image.new("RGB", (big, big), paper)
    draw = ImageDraw.Draw(image)
    period = rng.uniform(11.0, 18.0)
    steps = range(int(big / period) + 1)
    if label == "stripes":
        for k in steps:
            draw.rectangle([k * period, 0, k * period + period / 2, big], fill=ink)
    elif label == "dots":
        radius = period * rng.uniform(0.22, 0.32)
        for i in steps:
            for j in steps:
                x, y = (i + 0.5) * period, (j + 0.5) * period
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=ink)
    else:  # checks
        for i in steps:
            for j in steps:
                if (i + j) % 2 == 0:
                    draw.rectangle([i * period, j * period, (i + 1) * period, (j + 1) * period], fill=ink)
    turned = image.rotate(rng.uniform(0, 180), resample=Image.Resampling.BILINEAR)
    return turned.crop((size // 2, size // 2, size // 2 + size, size // 2 + size))


def _patch_mask(rng: random.Random, size: int) -> Image.Image:
    """Where the pattern shows: an ellipse or a rotated rectangle covering a good part of the picture."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    half_w, half_h = rng.uniform(0.32, 0.48) * size, rng.uniform(0.32, 0.48) * size
    cx, cy = rng.uniform(half_w, size - half_w), rng.uniform(half_h, size - half_h)
    if rng.random() < 0.5:
        draw.ellipse([cx - half_w, cy - half_h, cx + half_w, cy + half_h], fill=255)
    else:
        turn = rng.uniform(0, math.pi)
        corners = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
        draw.polygon(
            [
                (cx + x * math.cos(turn) - y * math.sin(turn), cy + x * math.sin(turn) + y * math.cos(turn))
                for x, y in corners
            ],
            fill=255,
        )
    return mask


def _ink(label: str, rng: random.Random, paper: Colour) -> Colour:
    """A colour of the class's hues, clearly apart from ``paper``."""
    while True:
        hue = (CLASS_HUES.get(label, rng.uniform(0, 360)) + rng.uniform(-HUE_SPREAD, HUE_SPREAD)) % 360 / 360
        red, green, blue = colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
        ink = (round(red * 255), round(green * 255), round(blue * 255))
        if sum(abs(a - b) for a, b in zip(ink, paper, strict=True)) > 120:
            return ink


def photo(label: str, rng: random.Random, size: int = 96) -> Image.Image:
    """One picture of ``label``."""
    paper = _colour(rng)
    pattern = _pattern(label, rng, size, _ink(label, rng, paper), paper)
    image = Image.composite(pattern, _background(rng, size), _patch_mask(rng, size))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.6)))
    noise = Image.frombytes("RGB", image.size, rng.randbytes(3 * size * size)).point(lambda v: 128 + (v - 128) // 10)
    return ImageChops.add(image, noise, scale=1.0, offset=-128)


def jpeg_bytes(color: Colour = (200, 120, 40), size: tuple[int, int] = (64, 48), pattern: bool = True) -> bytes:
    """A small JPEG of one colour, with vertical lines of the opposite colour (some edges: sharpness is not zero)."""
    image = Image.new("RGB", size, color)
    if pattern:
        for x in range(0, size[0], 8):
            for y in range(size[1]):
                image.putpixel((x, y), (255 - color[0], 255 - color[1], 255 - color[2]))
    return _jpeg(image, 90)


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _rotated(image: Image.Image) -> Image.Image:
    return image.rotate(90, expand=False).transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def _swapped(image: Image.Image) -> Image.Image:
    red, green, blue = image.split()
    return Image.merge("RGB", (blue, red, green))


# Conditions that edgeloop.drifts does not have: (photo -> JPEG bytes)
CONDITIONS: dict[str, Callable[[Image.Image], bytes]] = {
    "jpeg-q10": lambda image: _jpeg(image, 10),  # a camera or link that compresses hard: 8x8 blocks, colour bleed
    "rotate-flip": lambda image: _jpeg(_rotated(image), 90),  # the camera mounted the other way round
    "swap-channels": lambda image: _jpeg(_swapped(image), 90),  # a sensor's channels wired in the wrong order
}


def write_data_set(
    root: Path,
    *,
    per_class: int = 120,
    size: int = 96,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
    condition: str | None = None,
) -> Path:
    """``root/<class>/<class>-<n>.jpg``, ``per_class`` of each; ``condition`` (of :data:`CONDITIONS`) applied."""
    encode = CONDITIONS[condition] if condition else (lambda image: _jpeg(image, 90))
    rng = random.Random(seed)
    for label in classes:
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            (folder / f"{label}-{seed}-{index:04d}.jpg").write_bytes(encode(photo(label, rng, size)))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="folder to write <class>/<photo>.jpg into")
    parser.add_argument("--per-class", type=int, default=120)
    parser.add_argument("--size", type=int, default=96, help="side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--condition", choices=sorted(CONDITIONS), help="put every photo under this condition")
    arguments = parser.parse_args()
    write_data_set(
        arguments.root,
        per_class=arguments.per_class,
        size=arguments.size,
        seed=arguments.seed,
        condition=arguments.condition,
    )
    print(f"{arguments.root}: {len(CLASSES)} classes x {arguments.per_class} photos of {arguments.size} px")


if __name__ == "__main__":
    main()
