"""Dataset snapshots: deterministic ids, a split that never moves as data grows, immutable manifests."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from edgeloop_trainer.adapters.snapshots import LocalSnapshotStore
from edgeloop_trainer.snapshot import SnapshotError, SourceItem, build_snapshot, split_of
from trainer_testing import seed_folder


def sources(count: int, *, start: int = 0, classes: tuple[str, ...] = ("cat", "dog")) -> list[SourceItem]:
    return [
        SourceItem(f"sample:s{i}", classes[i % len(classes)], hashlib.sha256(f"image {i}".encode()).hexdigest())
        for i in range(start, start + count)
    ]


def test_the_same_data_in_any_order_gives_the_same_snapshot() -> None:
    items = sources(200)
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)

    first, second = build_snapshot(items, 0.2), build_snapshot(shuffled, 0.2)

    assert first.snapshot_id == second.snapshot_id
    assert first.snapshot_id.startswith("snap-") and len(first.snapshot_id) == 5 + 16
    assert first.evaluation_set_id == second.evaluation_set_id
    assert first.manifest() == second.manifest()


def test_an_item_keeps_its_split_as_the_data_grows() -> None:
    small = build_snapshot(sources(300), 0.2)
    grown = build_snapshot(sources(300) + sources(700, start=300), 0.2)

    split_then = {item.sha256: item.split for item in small.items}
    split_now = {item.sha256: item.split for item in grown.items}

    assert all(split_now[sha] == split for sha, split in split_then.items())
    assert grown.snapshot_id != small.snapshot_id
    assert grown.evaluation_set_id != small.evaluation_set_id  # new eval items: a new evaluation set
    eval_share = sum(item.split == "eval" for item in grown.items) / len(grown.items)
    assert 0.16 < eval_share < 0.24


def test_the_split_depends_on_the_bytes_and_the_fraction_only() -> None:
    sha = hashlib.sha256(b"one picture").hexdigest()
    low, high = "0" * 8 + sha[8:], "f" * 8 + sha[8:]

    assert split_of(low, 0.2) == "eval" and split_of(high, 0.2) == "train"
    assert split_of(sha, 0.2) == split_of(sha, 0.2)
    with pytest.raises(SnapshotError, match="between 0 and 1"):
        split_of(sha, 1.0)


def test_new_training_items_keep_the_evaluation_set() -> None:
    base = sources(100)
    training_only = [s for s in sources(400, start=100) if split_of(s.sha256, 0.2) == "train"]

    assert build_snapshot(base, 0.2).evaluation_set_id == build_snapshot(base + training_only, 0.2).evaluation_set_id


def test_a_person_s_label_overrides_the_seed_folder_for_the_same_image() -> None:
    sha = hashlib.sha256(b"ambiguous").hexdigest()
    items = [*sources(20), SourceItem("seed:cat/x.jpg", "cat", sha), SourceItem("sample:abc", "dog", sha)]

    snapshot = build_snapshot(items, 0.3)

    chosen = [item for item in snapshot.items if item.sha256 == sha]
    assert [(item.source, item.label) for item in chosen] == [("sample:abc", "dog")]
    assert snapshot.superseded == ("seed:cat/x.jpg",)


@pytest.mark.parametrize(
    ("items", "reason"),
    [
        (sources(10, classes=("cat",)), "at least two classes"),
        ([SourceItem("seed:a/1", "a", "x" * 64), SourceItem("seed:b/1", "b", "y" * 64)], "not a sha256"),
    ],
)
def test_unusable_data_is_refused_with_the_reason(items: list[SourceItem], reason: str) -> None:
    with pytest.raises(SnapshotError, match=reason):
        build_snapshot(items, 0.2)


def test_the_manifest_is_written_once_read_back_and_checked(tmp_path: Path) -> None:
    store = LocalSnapshotStore(tmp_path / "trainer")
    seed = seed_folder(tmp_path / "seed", {"green": 6, "red": 6})
    (seed / "red" / "notes.txt").write_text("not an image")
    (seed / ".hidden").mkdir()

    items = store.seed_items(seed)
    snapshot = build_snapshot(items, 0.3)
    path = store.save(snapshot)

    assert len(items) == 12 and {item.label for item in items} == {"green", "red"}
    assert all(store.image_path(item.sha256).read_bytes() == (seed / item.source[5:]).read_bytes() for item in items)
    assert path.name == f"{snapshot.snapshot_id}.json"
    assert store.load(snapshot.snapshot_id) == snapshot
    manifest = json.loads(path.read_text())
    assert {"source", "label", "sha256", "split"} == set(manifest["items"][0])
    assert manifest["evaluation_set_id"] == snapshot.evaluation_set_id
    assert store.save(snapshot) == path  # same id, same content: kept as it is

    manifest["items"][0]["label"] = "green" if manifest["items"][0]["label"] == "red" else "red"
    path.chmod(0o644)
    path.write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match="does not match its content"):
        store.load(snapshot.snapshot_id)


def test_a_missing_seed_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="does not exist"):
        LocalSnapshotStore(tmp_path / "trainer").seed_items(tmp_path / "nowhere")
