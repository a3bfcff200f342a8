"""Snapshots on disk: a content-addressed image cache and the immutable JSON manifests.

Layout under the trainer's data folder::

    images/ab/cd/<sha256>          every image a snapshot names, by the sha256 of its bytes
    snapshots/snap-<id>.json       one manifest per snapshot, written once, never changed

Caching the bytes makes a snapshot reproducible even when the seed folder or
ingest's store changes later: the manifest names hashes, the cache holds them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from pathlib import Path

from edgeloop_trainer.dataset import IMAGE_SUFFIXES
from edgeloop_trainer.snapshot import Snapshot, SnapshotError, SourceItem, snapshot_from_manifest

_SNAPSHOT_ID = re.compile(r"^snap-[0-9a-f]{16}$")


class LocalSnapshotStore:
    """Blocking calls: async callers run them in a thread."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.images = self.root / "images"
        self.manifests = self.root / "snapshots"
        self.images.mkdir(parents=True, exist_ok=True)
        self.manifests.mkdir(parents=True, exist_ok=True)

    # -- images ------------------------------------------------------------------

    def image_path(self, sha256: str) -> Path:
        return self.images / sha256[:2] / sha256[2:4] / sha256

    def has_image(self, sha256: str) -> bool:
        return self.image_path(sha256).is_file()

    def put_image(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        target = self.image_path(sha256)
        if not target.is_file():
            _write_atomically(target, data)
        return sha256

    def seed_items(self, seed_dir: Path) -> list[SourceItem]:
        """Every JPEG/PNG in ``seed_dir/<class>/`` (hidden entries skipped), hashed and cached."""
        if not seed_dir.is_dir():
            raise SnapshotError(f"the seed data folder {seed_dir} does not exist or is not a folder")
        items: list[SourceItem] = []
        for class_dir in sorted(p for p in seed_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for image in sorted(class_dir.iterdir()):
                if image.name.startswith(".") or image.suffix.lower() not in IMAGE_SUFFIXES or not image.is_file():
                    continue
                sha256 = self.put_image(image.read_bytes())
                items.append(SourceItem(f"seed:{class_dir.name}/{image.name}", class_dir.name, sha256))
        return items

    # -- manifests ------------------------------------------------------------------

    def manifest_path(self, snapshot_id: str) -> Path:
        if not _SNAPSHOT_ID.match(snapshot_id):
            raise SnapshotError(f"{snapshot_id!r} is not a snapshot id (snap- and 16 hex digits)")
        return self.manifests / f"{snapshot_id}.json"

    def save(self, snapshot: Snapshot) -> Path:
        """Write the manifest once; the same id is the same content, so an existing file is kept as it is."""
        path = self.manifest_path(snapshot.snapshot_id)
        if not path.exists():
            _write_atomically(path, (json.dumps(snapshot.manifest(), indent=1, sort_keys=True) + "\n").encode())
            path.chmod(0o444)
        return path

    def load(self, snapshot_id: str) -> Snapshot:
        path = self.manifest_path(snapshot_id)
        if not path.is_file():
            raise SnapshotError(f"no snapshot {snapshot_id} under {self.manifests}")
        return snapshot_from_manifest(json.loads(path.read_text()))

    def list_ids(self) -> list[str]:
        return sorted(path.stem for path in self.manifests.glob("snap-*.json"))


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(temp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
