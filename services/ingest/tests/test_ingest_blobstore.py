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


@pytest.mark.parametrize("group_commit", [True, False], ids=["group-commit", "one-by-one"])
def test_put_many_stores_every_blob_once_and_leaves_no_temporary_files(tmp_path: Path, group_commit: bool) -> None:
    store = LocalBlobStore(tmp_path, group_commit=group_commit)
    blobs = [(f"image {index}".encode(), hashlib.sha256(f"image {index}".encode()).hexdigest()) for index in range(20)]
    already = blobs[3]
    store.put(already[0])
    store.put_many([*blobs, blobs[0]])  # one stored before, one twice in the batch
    for data, sha256 in blobs:
        assert store.get(sha256) == data
    files = sorted(path.name for path in tmp_path.rglob("*") if path.is_file())
    assert files == sorted(sha256 for _, sha256 in blobs)


def test_group_commit_is_used_where_the_platform_has_syncfs(tmp_path: Path) -> None:
    import sys

    assert LocalBlobStore(tmp_path).group_commit is sys.platform.startswith("linux")
    assert LocalBlobStore(tmp_path, group_commit=False).group_commit is False


def test_a_failed_group_write_leaves_no_blob_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalBlobStore(tmp_path, group_commit=True)
    if not store.group_commit:
        pytest.skip("no syncfs on this platform")

    def disk_full(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_sync", lambda: disk_full(0))
    blobs = [(b"one", hashlib.sha256(b"one").hexdigest()), (b"two", hashlib.sha256(b"two").hexdigest())]
    with pytest.raises(OSError, match="No space"):
        store.put_many(blobs)
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []
    assert not store.exists(blobs[0][1])
