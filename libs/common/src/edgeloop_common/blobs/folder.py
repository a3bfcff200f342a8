"""The folder blob store: image bytes in a local directory (standalone mode, one node, a shared volume).

:class:`~edgeloop_common.blobs.store.BlobStore` is the interface: a blob's name is the sha256 of its bytes, so
``put`` is idempotent and a blob never changes. :class:`LocalBlobStore` keeps them in a folder;
:class:`~edgeloop_common.blobs.s3.S3BlobStore` in an S3 bucket for services on several nodes. Both check the
hash on the way in (a wrong ``(data, sha256)`` pair is refused before anything is written) and on the way out.

Durability is what costs: a blob is acknowledged to its device only once it
survives a crash. One blob at a time that takes two fsyncs (the file, then its
folder for the rename) -- about 300 us of CPU each time on ext4, more than
validating the image. ``put_many`` stores a batch behind one *group commit*
instead: every file is written, one ``syncfs`` makes all of them durable, they
are renamed into place, and a second ``syncfs`` makes the names durable (Linux;
elsewhere, or for a single blob, per-file fsyncs as ``put``). A name therefore
only ever points at bytes already on disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from edgeloop_common.blobs.store import BlobNotFoundError, check_sha256, sha256_hex, verify_blob


class LocalBlobStore:
    """Blobs at ``<root>/ab/cd/<sha256>``: written to a temporary file, made durable, renamed into place.

    ``group_commit``: batches of ``put_many`` share one pair of ``syncfs`` calls (the default where the
    platform has ``syncfs``); False: per-file fsyncs always (a volume shared with a busy neighbour, whose
    dirty pages ``syncfs`` would flush too).
    """

    def __init__(self, root: Path, *, group_commit: bool | None = None) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._root = str(self.root)
        self.group_commit = _syncfs is not None if group_commit is None else group_commit and _syncfs is not None

    def path(self, sha256: str) -> Path:
        return Path(self._location(sha256))

    def _location(self, sha256: str) -> str:
        check_sha256(sha256)
        return os.path.join(self._root, sha256[:2], sha256[2:4], sha256)

    def put(self, data: bytes, *, sha256: str | None = None) -> str:
        sha256 = sha256 or sha256_hex(data)
        self.put_many([(data, sha256)])
        return sha256

    def put_many(self, blobs: Sequence[tuple[bytes, str]]) -> None:
        for data, sha256 in blobs:  # a wrong name would be served as that blob forever: refuse it first
            verify_blob(data, sha256, f"the blob handed to put as {sha256}")
        if len(blobs) > 1 and self.group_commit:
            self._put_group(blobs)
        else:
            self._put_one_by_one(blobs)

    def _put_one_by_one(self, blobs: Sequence[tuple[bytes, str]]) -> None:
        # Plain os calls on strings: this runs once per image, and pathlib objects cost more than the write.
        for data, sha256 in blobs:
            target = self._location(sha256)
            folder = os.path.dirname(target)
            if os.path.exists(target):  # same name, same bytes: already stored (its rename may be a moment old)
                _fsync_dir(folder)
                continue
            temp = self._write_temp(data, target, durable=True)
            try:
                os.replace(temp, target)
            except BaseException:
                _unlink_quietly(temp)
                raise
            _fsync_dir(folder)  # the rename itself must survive a crash

    def _put_group(self, blobs: Sequence[tuple[bytes, str]]) -> None:
        staged: dict[str, str] = {}  # target -> temporary file
        try:
            for data, sha256 in blobs:
                target = self._location(sha256)
                if target not in staged and not os.path.exists(target):
                    staged[target] = self._write_temp(data, target, durable=False)
            if staged:
                self._sync()  # the bytes, before any name points at them
            while staged:
                target, temp = next(iter(staged.items()))
                os.replace(temp, target)
                del staged[target]
        except BaseException:
            for temp in staged.values():
                _unlink_quietly(temp)
            raise
        # The names (and new folders); also covers a blob another batch renamed a moment ago.
        self._sync()

    def _sync(self) -> None:
        assert _syncfs is not None
        descriptor = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _syncfs(descriptor) != 0:
                error = ctypes.get_errno()
                raise OSError(error, f"syncfs of {self._root}: {os.strerror(error)}")
        finally:
            os.close(descriptor)

    def _write_temp(self, data: bytes, target: str, *, durable: bool) -> str:
        folder = os.path.dirname(target)
        temp = os.path.join(folder, f".{os.path.basename(target)[:16]}.{secrets.token_hex(6)}.tmp")
        try:
            descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            # A group commit's barrier makes new folders durable too; one by one, each needs its parent fsynced.
            _make_folder(folder, durable=durable)
            descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(descriptor, view) :]
                if durable:
                    os.fsync(descriptor)
            finally:
                os.close(descriptor)
        except BaseException:
            _unlink_quietly(temp)
            raise
        return temp

    def get(self, sha256: str) -> bytes:
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFoundError(sha256) from exc
        verify_blob(data, sha256, str(path))
        return data

    def exists(self, sha256: str) -> bool:
        return os.path.isfile(self._location(sha256))

    def uri(self, sha256: str) -> str:
        return self.path(sha256).as_uri()

    def writable(self) -> bool:
        return self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)


def _make_folder(folder: str, *, durable: bool) -> None:
    """Create ``folder`` (and its parent); ``durable``: fsync the parents, as a new directory entry needs."""
    parent = os.path.dirname(folder)
    if not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
        if durable:
            _fsync_dir(os.path.dirname(parent))
    os.makedirs(folder, exist_ok=True)
    if durable:
        _fsync_dir(parent)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _load_syncfs() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """Linux's ``syncfs(2)``: flush one file system (data and metadata) in one call. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_syncfs = _load_syncfs()


def _fsync_dir(folder: str | Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
