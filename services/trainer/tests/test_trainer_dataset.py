"""Class discovery and the held-out split (no TensorFlow needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from edgeloop_trainer.dataset import DatasetError, discover_classes, load_split


def make_folders(root: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            (root / name / f"img_{index:03d}.jpg").write_bytes(b"placeholder")
    return root


def test_class_names_are_the_sorted_folder_names(tmp_path: Path) -> None:
    data = make_folders(tmp_path / "data", {"zebra": 2, "aardvark": 2, "mole": 2})
    (data / ".hidden").mkdir()
    (data / "notes.txt").write_text("not a class")

    assert discover_classes(data) == ("aardvark", "mole", "zebra")


def test_the_split_is_stratified_disjoint_and_seeded(tmp_path: Path) -> None:
    data = make_folders(tmp_path / "data", {"alpha": 10, "beta": 5, "gamma": 2})
    (data / "alpha" / "readme.md").write_text("ignored: not an image")

    split = load_split(data, eval_fraction=0.2, seed=3)
    again = load_split(data, eval_fraction=0.2, seed=3)
    other_seed = load_split(data, eval_fraction=0.2, seed=4)

    assert split.class_names == ("alpha", "beta", "gamma")
    assert split.evaluation_counts() == {"alpha": 2, "beta": 1, "gamma": 1}
    assert split.train_counts() == {"alpha": 8, "beta": 4, "gamma": 1}
    assert not {s.path for s in split.train} & {s.path for s in split.evaluation}
    assert len(split.train) + len(split.evaluation) == 17
    assert split == again
    assert {s.path for s in other_seed.evaluation} != {s.path for s in split.evaluation}


@pytest.mark.parametrize(
    ("counts", "reason"),
    [
        ({"only": 5}, "at least two class folders"),
        ({"full": 3, "empty": 0}, "without JPEG/PNG images"),
        ({"one": 1, "two": 1}, "at least two images"),
    ],
)
def test_unusable_folders_are_refused_with_the_reason(tmp_path: Path, counts: dict[str, int], reason: str) -> None:
    data = make_folders(tmp_path / "data", counts)

    with pytest.raises(DatasetError, match=reason):
        load_split(data, eval_fraction=0.2, seed=1)


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        discover_classes(tmp_path / "nowhere")
