"""Content-addressed blob storage for image bytes.

:class:`BlobStore` is the interface: a blob's name is the sha256 of its bytes,
so ``put`` is idempotent and a blob never changes. :class:`LocalBlobStore`
keeps them in a folder; an S3-compatible store implements the same methods
(``put`` with the sha256 as object key, ``uri`` as ``s3://bucket/key``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
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
        self._root = str(self.root)

    def path(self, sha256: str) -> Path:
        return Path(self._location(sha256))

    def _location(self, sha256: str) -> str:
        _check_sha256(sha256)
        return os.path.join(self._root, sha256[:2], sha256[2:4], sha256)

    def put(self, data: bytes, *, sha256: str | None = None) -> str:
        # Plain os calls on strings: this runs once per image, and pathlib objects cost more than the write.
        sha256 = sha256 or sha256_hex(data)
        target = self._location(sha256)
        if os.path.exists(target):
            return sha256  # same name, same bytes: already stored
        folder = os.path.dirname(target)
        temp = os.path.join(folder, f".{sha256[:16]}.{secrets.token_hex(6)}.tmp")
        try:
            descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            _make_folder(folder)
            descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(descriptor, view) :]
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        _fsync_dir(folder)  # the rename itself must survive a crash
        return sha256

    def get(self, sha256: str) -> bytes:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFoundError(sha256) from exc

    def exists(self, sha256: str) -> bool:
        return os.path.isfile(self._location(sha256))

    def uri(self, sha256: str) -> str:
        return self.path(sha256).as_uri()

    def writable(self) -> bool:
        return self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)


def _make_folder(folder: str) -> None:
    """Create ``folder`` (and its parent) durably: a new directory entry needs its parent fsynced."""
    parent = os.path.dirname(folder)
    if not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
        _fsync_dir(os.path.dirname(parent))
    os.makedirs(folder, exist_ok=True)
    _fsync_dir(parent)


def _fsync_dir(folder: str | Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
