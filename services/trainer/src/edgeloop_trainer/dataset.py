"""Image datasets laid out as one folder per class: ``DATA_DIR/<class name>/<image>.jpg``.

Class names come from the folder names, sorted, so the same folders always give
the same class order. The held-out evaluation split is stratified and seeded:
the same files, fraction and seed always hold out the same images.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


class DatasetError(ValueError):
    """The data folder cannot be used for training (no classes, an empty class, a bad fraction)."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class DatasetSplit:
    class_names: tuple[str, ...]
    train: tuple[Sample, ...]
    evaluation: tuple[Sample, ...]

    def train_counts(self) -> dict[str, int]:
        return _counts(self.train, self.class_names)

    def evaluation_counts(self) -> dict[str, int]:
        return _counts(self.evaluation, self.class_names)


def _counts(samples: Sequence[Sample], class_names: Sequence[str]) -> dict[str, int]:
    counts = dict.fromkeys(class_names, 0)
    for sample in samples:
        counts[class_names[sample.label]] += 1
    return counts


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES
    )


def discover_classes(data_dir: Path) -> tuple[str, ...]:
    """The class names: the sub-folders of ``data_dir`` (hidden ones skipped), sorted."""
    if not data_dir.is_dir():
        raise DatasetError(f"data folder {data_dir} does not exist or is not a folder")
    names = sorted(path.name for path in data_dir.iterdir() if path.is_dir() and not path.name.startswith("."))
    if len(names) < 2:
        raise DatasetError(
            f"{data_dir} must hold at least two class folders (one folder of images per class); found {names or 'none'}"
        )
    empty = [name for name in names if not _image_files(data_dir / name)]
    if empty:
        raise DatasetError(f"class folders without JPEG/PNG images in {data_dir}: {', '.join(empty)}")
    return tuple(names)


def list_samples(data_dir: Path, class_names: Sequence[str]) -> list[Sample]:
    return [Sample(path, label) for label, name in enumerate(class_names) for path in _image_files(data_dir / name)]


def split_samples(
    samples: Sequence[Sample], num_classes: int, eval_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``eval_fraction`` of every class (at least one image of each class that has two or more)."""
    if not 0.0 < eval_fraction < 1.0:
        raise DatasetError(f"eval fraction must be between 0 and 1 (exclusive), got {eval_fraction}")
    rng = random.Random(seed)
    train: list[Sample] = []
    evaluation: list[Sample] = []
    for label in range(num_classes):
        members = sorted((s for s in samples if s.label == label), key=lambda s: s.path.name)
        rng.shuffle(members)
        held_out = min(max(round(len(members) * eval_fraction), 1), len(members) - 1) if len(members) > 1 else 0
        evaluation.extend(members[:held_out])
        train.extend(members[held_out:])
    return train, evaluation


def load_split(data_dir: Path, eval_fraction: float, seed: int) -> DatasetSplit:
    class_names = discover_classes(data_dir)
    train, evaluation = split_samples(list_samples(data_dir, class_names), len(class_names), eval_fraction, seed)
    if not evaluation:
        raise DatasetError(f"every class in {data_dir} needs at least two images to keep one for evaluation")
    return DatasetSplit(class_names, tuple(train), tuple(evaluation))
