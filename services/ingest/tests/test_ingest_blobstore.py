"""The local blob store: content-addressed, durable-by-rename, idempotent."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from edgeloop_ingest.adapters.blobstore import BlobNotFoundError, LocalBlobStore


def test_put_stores_under_the_sha256(tmp_path: Path, catdog_train_dir: Path) -> None:
    data = sorted((catdog_train_dir / "cat").glob("*.jpg"))[0].read_bytes()
    store = LocalBlobStore(tmp_path / "blobs")
    sha256 = store.put(data)
    assert sha256 == hashlib.sha256(data).hexdigest()
    path = tmp_path / "blobs" / sha256[:2] / sha256[2:4] / sha256
    assert path.read_bytes() == data
    assert store.get(sha256) == data
    assert store.exists(sha256)
    assert store.uri(sha256) == path.resolve().as_uri()


def test_put_is_idempotent_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    first = store.put(b"same bytes")
    second = store.put(b"same bytes")
    assert first == second
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert [path.name for path in files] == [first]


def test_unknown_blob(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    missing = "0" * 64
    assert not store.exists(missing)
    with pytest.raises(BlobNotFoundError):
        store.get(missing)


def test_a_name_that_is_not_a_sha256_is_refused(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    with pytest.raises(ValueError, match="sha256"):
        store.get("../../etc/passwd")


def test_writable(tmp_path: Path) -> None:
    assert LocalBlobStore(tmp_path / "b").writable()
