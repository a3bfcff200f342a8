"""Dataset snapshots: the immutable list of what one training run learns from and is judged on.

Pure functions, no I/O. A snapshot is a manifest of items (where the image came
from, its label, the sha256 of its bytes, its split). Its id is the hash of the
manifest, so the same data always gives the same snapshot id.

The split of an item is a function of its sha256 alone (and the configured eval
fraction): an image never moves between training and evaluation as data grows,
and two copies of the same bytes always land on the same side. The evaluation
set's id is the hash of its items' hashes and labels, so two versions trained on
different snapshots are comparable exactly when they name the same
``evaluation_set_id``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Split = Literal["train", "eval"]
SNAPSHOT_FORMAT = "edgeloop.dataset-snapshot.v1"
SPLIT_RULE = "eval when int(sha256[:8], 16) / 2**32 < eval_fraction"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class SnapshotError(ValueError):
    """The items cannot make a usable snapshot (fewer than two classes, no evaluation item, bad hash)."""


@dataclass(frozen=True)
class SourceItem:
    """One labeled image before the split: ``source`` is ``seed:<class>/<file>`` or ``sample:<sample id>``."""

    source: str
    label: str
    sha256: str


@dataclass(frozen=True)
class SnapshotItem:
    source: str
    label: str
    sha256: str
    split: Split


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    evaluation_set_id: str
    eval_fraction: float
    class_names: tuple[str, ...]
    items: tuple[SnapshotItem, ...]
    superseded: tuple[str, ...] = field(default=())

    def of_split(self, split: Split) -> tuple[SnapshotItem, ...]:
        return tuple(item for item in self.items if item.split == split)

    def counts(self, split: Split) -> dict[str, int]:
        counted = Counter(item.label for item in self.of_split(split))
        return {name: counted.get(name, 0) for name in self.class_names}

    def manifest(self) -> dict[str, Any]:
        """The JSON document stored as ``snapshots/<snapshot_id>.json``."""
        return {"snapshot_id": self.snapshot_id, **_content(self)}


def split_of(sha256: str, eval_fraction: float) -> Split:
    """``eval`` for a fixed share of all possible hashes: depends on nothing but the bytes and the fraction."""
    if not 0.0 < eval_fraction < 1.0:
        raise SnapshotError(f"eval fraction must be between 0 and 1 (exclusive), got {eval_fraction}")
    return "eval" if int(sha256[:8], 16) / 2**32 < eval_fraction else "train"


def evaluation_set_id(items: Iterable[SnapshotItem]) -> str:
    """``evalset-`` + the first 16 hex digits of sha256 over the sorted eval items' ``sha256:label`` lines."""
    lines = sorted(f"{item.sha256}:{item.label}" for item in items if item.split == "eval")
    return "evalset-" + hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def build_snapshot(sources: Sequence[SourceItem], eval_fraction: float) -> Snapshot:
    """One item per distinct image (sha256); a later source overrides an earlier one's label.

    Callers list the seed folder first and the labeled samples after it, so a
    person's label wins over the folder an image was found in.
    """
    by_hash: dict[str, SourceItem] = {}
    superseded: list[str] = []
    for source in sources:
        if not _SHA256.match(source.sha256):
            raise SnapshotError(f"{source.source}: {source.sha256!r} is not a sha256 hex digest")
        previous = by_hash.get(source.sha256)
        if previous is not None:
            superseded.append(previous.source)
        by_hash[source.sha256] = source
    items = tuple(
        SnapshotItem(s.source, s.label, s.sha256, split_of(s.sha256, eval_fraction))
        for s in sorted(by_hash.values(), key=lambda s: (s.label, s.sha256))
    )
    class_names = tuple(sorted({item.label for item in items}))
    if len(class_names) < 2:
        raise SnapshotError(f"a classifier needs labeled images of at least two classes; found {list(class_names)}")
    if not any(item.split == "eval" for item in items):
        raise SnapshotError(
            f"no image fell into the evaluation split ({len(items)} images, eval fraction {eval_fraction})"
        )
    if not any(item.split == "train" for item in items):
        raise SnapshotError(f"no image fell into the training split ({len(items)} images)")
    draft = Snapshot("", evaluation_set_id(items), eval_fraction, class_names, items, tuple(sorted(superseded)))
    digest = hashlib.sha256(json.dumps(_content(draft), sort_keys=True, separators=(",", ":")).encode())
    return Snapshot(
        "snap-" + digest.hexdigest()[:16],
        draft.evaluation_set_id,
        eval_fraction,
        class_names,
        items,
        draft.superseded,
    )


def snapshot_from_manifest(manifest: dict[str, Any]) -> Snapshot:
    """Read back a stored manifest; its id is checked against its content."""
    items = tuple(SnapshotItem(i["source"], i["label"], i["sha256"], i["split"]) for i in manifest["items"])
    snapshot = Snapshot(
        manifest["snapshot_id"],
        manifest["evaluation_set_id"],
        float(manifest["eval_fraction"]),
        tuple(manifest["class_names"]),
        items,
        tuple(manifest.get("superseded", ())),
    )
    digest = hashlib.sha256(json.dumps(_content(snapshot), sort_keys=True, separators=(",", ":")).encode())
    if "snap-" + digest.hexdigest()[:16] != snapshot.snapshot_id:
        raise SnapshotError(f"manifest {snapshot.snapshot_id} does not match its content (edited or damaged)")
    return snapshot


def new_since_parent(items: Iterable[SnapshotItem], parent: Snapshot | None) -> tuple[list[bool], str]:
    """Which ``items`` are new since the parent version, and the rule used to tell.

    With the parent's snapshot known: an item whose bytes *and* label were not in it (a new labeled photo, or a
    photo a person relabeled). Without it (a parent made by ``edgeloop train``, or its manifest gone): an item
    that does not come from the seed folder, i.e. a labeled sample.
    """
    if parent is not None:
        known = {(item.sha256, item.label) for item in parent.items}
        return [(item.sha256, item.label) not in known for item in items], f"not in {parent.snapshot_id}"
    return [not item.source.startswith("seed:") for item in items], "not from the seed folder"


def _content(snapshot: Snapshot) -> dict[str, Any]:
    """Everything the id is computed from (no timestamps: the same data must give the same id)."""
    return {
        "format": SNAPSHOT_FORMAT,
        "class_names": list(snapshot.class_names),
        "eval_fraction": snapshot.eval_fraction,
        "split_rule": SPLIT_RULE,
        "evaluation_set_id": snapshot.evaluation_set_id,
        "counts": {"train": snapshot.counts("train"), "eval": snapshot.counts("eval")},
        "superseded": list(snapshot.superseded),
        "items": [
            {"source": item.source, "label": item.label, "sha256": item.sha256, "split": item.split}
            for item in snapshot.items
        ],
    }
