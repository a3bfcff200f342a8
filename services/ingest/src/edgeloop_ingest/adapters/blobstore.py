"""Content-addressed blob storage for image bytes.

:class:`BlobStore` is the interface: a blob's name is the sha256 of its bytes,
so ``put`` is idempotent and a blob never changes. :class:`LocalBlobStore`
keeps them in a folder; an S3-compatible store implements the same four
methods (``put`` with the sha256 as object key, ``uri`` as ``s3://bucket/key``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol


class BlobNotFoundError(KeyError):
    """No blob with this sha256 in the store."""


class BlobStore(Protocol):
    """Blocking calls: async callers run them in a thread."""

    def put(self, data: bytes, *, sha256: str | None = None) -> str:
        """Store ``data`` durably under its sha256 (computed when not given); return the sha256."""
        ...

    def get(self, sha256: str) -> bytes: ...

    def exists(self, sha256: str) -> bool: ...

    def uri(self, sha256: str) -> str: ...

    def writable(self) -> bool:
        """True when a ``put`` can succeed now (readiness)."""
        ...


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_sha256(sha256: str) -> str:
    if len(sha256) != 64 or any(char not in "0123456789abcdef" for char in sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


class LocalBlobStore:
    """Blobs at ``<root>/ab/cd/<sha256>``: written to a temporary file, fsynced, renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        _check_sha256(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes, *, sha256: str | None = None) -> str:
        sha256 = sha256 or sha256_hex(data)
        target = self.path(sha256)
        if target.exists():
            return sha256  # same name, same bytes: already stored
        folder = target.parent
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            _fsync_dir(folder.parent)
            _fsync_dir(folder.parent.parent)
        descriptor, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{sha256[:16]}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as temp:
                temp.write(data)
                temp.flush()
                os.fsync(temp.fileno())
            os.replace(temp_name, target)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(folder)  # the rename itself must survive a crash
        return sha256

    def get(self, sha256: str) -> bytes:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFoundError(sha256) from exc

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def uri(self, sha256: str) -> str:
        return self.path(sha256).as_uri()

    def writable(self) -> bool:
        return self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
