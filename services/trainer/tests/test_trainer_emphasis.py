"""Warm starts emphasise what is new since the parent version: which items count as new, how often each is seen.

Pure functions on small arrays (no training): the items new since the parent's snapshot, the oversampled
training set (counts per source), class weights that stay balanced on it, and factor 1 changing nothing.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest
from edgeloop_trainer.classifier import class_weights
from edgeloop_trainer.snapshot import SourceItem, build_snapshot, new_since_parent
from edgeloop_trainer.training import oversample

pytestmark = pytest.mark.tf  # imports TensorFlow (training.py), trains nothing


def digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


SEED = [
    SourceItem(f"seed:{label}/{i}.jpg", label, digest(f"{label}-{i}")) for label in ("cat", "dog") for i in range(60)
]
# Labeled after the drift: 12 cats, 4 dogs (a person labels what is hard, not a balanced set), and one seed
# photo of a cat relabeled as a dog.
LABELED = [SourceItem(f"sample:c{i}", "cat", digest(f"dark-cat-{i}")) for i in range(12)]
LABELED += [SourceItem(f"sample:d{i}", "dog", digest(f"dark-dog-{i}")) for i in range(4)]
RELABELED = SourceItem("sample:r0", "dog", SEED[0].sha256)


def training_set(factor: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The sources and labels of the training images (after oversampling), and the images' ids as pixels."""
    parent = build_snapshot(SEED, 0.2)
    current = build_snapshot([*SEED, *LABELED, RELABELED], 0.2)
    train = current.of_split("train")
    flags, _ = new_since_parent(train, parent)
    classes = {name: index for index, name in enumerate(current.class_names)}
    images = np.arange(len(train)).reshape(-1, 1, 1, 1)  # one "pixel" per image: which item it is
    labels = np.asarray([classes[item.label] for item in train], dtype=np.int32)
    images, labels = oversample(images, labels, np.asarray(flags), factor)
    return [train[int(index)].source for index in images.reshape(-1)], labels, np.asarray(flags)


def test_new_since_the_parent_means_not_in_its_snapshot_or_labeled_differently() -> None:
    parent = build_snapshot(SEED, 0.2)
    current = build_snapshot([*SEED, *LABELED, RELABELED], 0.2)

    flags, rule = new_since_parent(current.items, parent)

    new = {item.source for item, flag in zip(current.items, flags, strict=True) if flag}
    assert new == {item.source for item in [*LABELED, RELABELED]}
    assert rule == f"not in {parent.snapshot_id}"
    # Samples the parent already learned from are not new for the next version.
    again, _ = new_since_parent(current.items, current)
    assert not any(again)


def test_without_the_parents_snapshot_the_labeled_samples_are_new() -> None:
    current = build_snapshot([*SEED, *LABELED], 0.2)

    flags, rule = new_since_parent(current.items, None)

    assert [item.source for item, flag in zip(current.items, flags, strict=True) if flag] == [
        item.source for item in current.items if item.source.startswith("sample:")
    ]
    assert sum(flags) == len(LABELED) and rule == "not from the seed folder"


@pytest.mark.parametrize("factor", [2, 3, 5])
def test_each_new_image_is_seen_factor_times_the_others_once(factor: int) -> None:
    plain, _, flags = training_set(1)
    sources, labels, _ = training_set(factor)

    seen = Counter(sources)
    new_sources = {source for source, flag in zip(plain, flags, strict=True) if flag}
    assert new_sources and all(seen[source] == factor for source in new_sources)
    assert all(seen[source] == 1 for source in plain if source not in new_sources)
    assert len(sources) == len(plain) + (factor - 1) * len(new_sources)
    assert len(labels) == len(sources)


@pytest.mark.parametrize("factor", [1, 3, 6])
def test_class_weights_stay_balanced_on_the_oversampled_set(factor: int) -> None:
    _, labels, _ = training_set(factor)

    weights = class_weights(labels, 2)
    counts = np.bincount(labels, minlength=2)

    # Each class weighs the same in the loss: weight x images seen is equal (and sums to the images seen).
    totals = [weights[index] * counts[index] for index in range(2)]
    assert totals[0] == pytest.approx(totals[1])
    assert sum(totals) == pytest.approx(len(labels))


def test_factor_one_changes_nothing() -> None:
    images = np.arange(24, dtype=np.uint8).reshape(6, 2, 2, 1)
    labels = np.asarray([0, 1, 0, 1, 0, 1], dtype=np.int32)
    flags = np.asarray([True, False, False, True, False, False])

    same_images, same_labels = oversample(images, labels, flags, 1)

    assert same_images is images and same_labels is labels
    repeated_images, repeated_labels = oversample(images, labels, flags, 2)
    assert repeated_labels.tolist() == [0, 0, 1, 0, 1, 1, 0, 1]
    assert (repeated_images[0] == repeated_images[1]).all() and (repeated_images[0] == images[0]).all()


def test_a_bad_factor_or_flag_count_is_refused() -> None:
    images, labels = np.zeros((3, 1, 1, 1)), np.zeros(3, np.int32)
    with pytest.raises(ValueError, match="at least 1"):
        oversample(images, labels, np.ones(3, bool), 0)
    with pytest.raises(ValueError, match="2 new/old flags for 3 images"):
        oversample(images, labels, np.ones(2, bool), 2)
