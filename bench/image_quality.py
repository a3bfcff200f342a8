"""The image statistics behind the gateway's quality verdict, measured on real pictures, and the verdicts they get.

For each set it prints the distribution (min / p1 / p5 / median / p95 / max) of the statistics
``edgeloop_common.images.inspect_image`` measures, then how many pictures of each set get each verdict of
``assess_quality``:

* ``black-frames``: real night frames of a Raspberry Pi camera (black, a timestamp bar, no subject);
* ``train``, ``captures``: the real cat/dog photos;
* ``train+DRIFT``: the train photos under each drift of the learning loop (``edgeloop.drifts``) at its
  default strength -- the closed-loop test darkens photos by x0.25 and the loop must learn from them, so every
  drifted photo must stay "ok" -- plus a few stronger strengths, to show the margin.

It exits 1 when a black frame is judged "ok", or a photo (as it is, or under a default drift) is not.

The thresholds of ``assess_quality`` were chosen from these figures (docs/gateway.md, "Image quality").

    .venv/bin/python bench/image_quality.py
    .venv/bin/python bench/image_quality.py --data ../shared/datasets/catdog --limit 100
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from edgeloop.drifts import parse_drift
from edgeloop_common.images import IMAGE_QUALITIES, assess_quality, inspect_image

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("EDGELOOP_SHARED_DATASETS", REPO_ROOT.parent / "shared" / "datasets")) / "catdog"
STATISTICS = ("brightness_mean", "contrast_std", "sharpness_laplacian_var", "saturation_mean")
# The loop's drifts at their default strengths: every photo must stay "ok" under them.
DEFAULT_DRIFTS = ("darken", "brighten", "blur", "low-contrast", "noise", "colour-cast", "grayscale", "downscale")
# Stronger than the defaults, to show the margin (some photos may leave "ok" here).
STRONGER_DRIFTS = ("darken:0.15", "brighten:2.5", "blur:0.05", "low-contrast:0.8")
PERCENTILES = (0, 1, 5, 50, 95, 100)


def photos(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in {".jpg", ".jpeg", ".png"})


def measure(name: str, pictures: Iterable[bytes]) -> list[dict[str, float]]:
    stats = [inspect_image(data).stats for data in pictures]
    if not stats:
        raise SystemExit(f"{name}: no pictures")
    return stats


def report(name: str, stats: list[dict[str, float]]) -> Counter[str]:
    verdicts = Counter(assess_quality(one) for one in stats)
    counts = "  ".join(f"{quality} {verdicts[quality]}" for quality in IMAGE_QUALITIES if verdicts[quality])
    print(f"\n{name} ({len(stats)} pictures): {counts}")
    print(
        f"  {'statistic':<24}"
        + "".join(f"{'p' + str(p) if 0 < p < 100 else ('min' if p == 0 else 'max'):>9}" for p in PERCENTILES)
    )
    for statistic in STATISTICS:
        values = np.array([one[statistic] for one in stats])
        figures = np.percentile(values, PERCENTILES)
        print(f"  {statistic:<24}" + "".join(f"{figure:9.4f}" for figure in figures))
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the catdog folder (black-frames, train, ...)")
    parser.add_argument("--limit", type=int, default=0, help="drift at most this many train photos (0: all)")
    arguments = parser.parse_args()

    train = photos(arguments.data / "train")
    sets = {
        "black-frames": photos(arguments.data / "black-frames"),
        "train": train,
        "captures": photos(arguments.data / "captures"),
    }
    verdicts = {
        name: report(name, measure(name, (path.read_bytes() for path in paths))) for name, paths in sets.items()
    }
    drifted = train[: arguments.limit] if arguments.limit else train
    for spec in (*DEFAULT_DRIFTS, *STRONGER_DRIFTS):
        drift = parse_drift(spec)
        name = f"train+{drift.spec}" + (" (stronger than the default)" if spec in STRONGER_DRIFTS else "")
        verdicts[spec] = report(name, measure(spec, (drift.apply(path.read_bytes()) for path in drifted)))

    failures = [f"{verdicts['black-frames']['ok']} black frame(s) judged ok"] if verdicts["black-frames"]["ok"] else []
    for name in ("train", "captures", *DEFAULT_DRIFTS):
        wrong = sum(verdicts[name].values()) - verdicts[name]["ok"]
        if wrong:
            failures.append(f"{name}: {wrong} photo(s) not judged ok")
    print("\n" + ("; ".join(failures) if failures else "every black frame not ok; every photo, drifted or not, ok"))
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
