"""One way for every service to write and read blobs: :func:`open_blob_store` and :class:`BlobReader`.

``EDGELOOP_BLOB_STORE`` picks the store: ``folder`` (a directory of this node: standalone mode, one machine) or
``s3`` (the bucket ``EDGELOOP_S3_BUCKET`` at ``EDGELOOP_S3_ENDPOINT_URL``: services on several nodes). A reader
takes a blob by the URI an event names, whatever store wrote it: ``s3://`` through the S3 settings, ``file://``
from this node's disk; every blob read is checked against its sha256.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from edgeloop_common.blobs.folder import LocalBlobStore
from edgeloop_common.blobs.store import (
    BlobNotFoundError,
    BlobStore,
    BlobStoreUnavailableError,
    BlobTooLargeError,
    check_sha256,
    verify_blob,
)
from edgeloop_common.settings import CommonSettings

if TYPE_CHECKING:
    from edgeloop_common.blobs.s3 import S3BlobStore


class UnsupportedBlobUriError(ValueError):
    """No reader for this URI (another scheme, another host's file, a key that names no blob)."""


def open_blob_store(settings: CommonSettings, *, folder: Path) -> BlobStore:
    """The store the settings name: an S3 bucket (``blob_store=s3``) or ``folder`` on this node."""
    if settings.blob_store == "s3":
        from edgeloop_common.blobs.s3 import S3BlobStore  # boto3 is loaded only where S3 is used

        return S3BlobStore.from_settings(settings)
    return LocalBlobStore(folder)


def describe_blob_store(settings: CommonSettings, *, folder: Path) -> str:
    """For a start-up log line: where blobs go, without secrets."""
    if settings.blob_store == "s3":
        return f"s3://{settings.s3_bucket} at {settings.s3_endpoint_url or 'AWS S3 (' + settings.s3_region + ')'}"
    return str(folder)


class BlobReader:
    """Reads blobs by URI (blocking; async callers use a thread). One S3 client per process, made on first use."""

    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings
        self._s3: dict[str, S3BlobStore] = {}
        self._lock = threading.Lock()

    def read(self, uri: str, *, sha256: str | None = None, max_bytes: int | None = None) -> bytes:
        """The blob at ``uri``, verified against ``sha256`` (default: the name the URI gives it).

        BlobNotFoundError, BlobIntegrityError, BlobTooLargeError, BlobStoreUnavailableError (and its
        BlobStoreAccessError), UnsupportedBlobUriError.
        """
        scheme = urlparse(uri).scheme.lower()
        if scheme == "s3":
            return self._read_s3(uri, sha256, max_bytes)
        if scheme == "file":
            return self._read_file(uri, sha256, max_bytes)
        raise UnsupportedBlobUriError(f"cannot read blob URI {uri!r}: scheme {scheme or 'none'} is not file or s3")

    def _read_s3(self, uri: str, sha256: str | None, max_bytes: int | None) -> bytes:
        from edgeloop_common.blobs.s3 import S3Location

        try:
            location = S3Location.parse(uri)
        except ValueError as exc:
            raise UnsupportedBlobUriError(str(exc)) from exc
        if sha256 is not None and sha256 != location.sha256:
            raise UnsupportedBlobUriError(f"{uri!r} names blob {location.sha256}, not {sha256}")
        return self._store(location.bucket).get(location.sha256, max_bytes=max_bytes)

    def _store(self, bucket: str) -> S3BlobStore:
        from edgeloop_common.blobs.s3 import S3BlobStore, s3_client

        with self._lock:
            client = next(iter(self._s3.values())).client if self._s3 else s3_client(self.settings)
            if bucket not in self._s3:  # a blob of another bucket on the same endpoint: read, never create it
                self._s3[bucket] = S3BlobStore(client, bucket, create_bucket=False)
            return self._s3[bucket]

    def _read_file(self, uri: str, sha256: str | None, max_bytes: int | None) -> bytes:
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise UnsupportedBlobUriError(f"file URI {uri!r} names another host ({parsed.netloc})")
        path = Path(url2pathname(unquote(parsed.path)))
        name = sha256 or path.name
        try:
            check_sha256(name)
        except ValueError as exc:
            raise UnsupportedBlobUriError(f"{uri!r} does not name a blob (no sha256 given or in its name)") from exc
        limit = -1 if max_bytes is None else max_bytes + 1
        try:
            with path.open("rb") as blob:
                data = blob.read(limit)
        except FileNotFoundError as exc:
            raise BlobNotFoundError(name) from exc
        except (IsADirectoryError, PermissionError) as exc:
            raise BlobNotFoundError(f"{name}: {exc}") from exc
        except OSError as exc:
            raise BlobStoreUnavailableError(f"blob at {path} cannot be read now: {exc}") from exc
        if max_bytes is not None and len(data) > max_bytes:
            raise BlobTooLargeError(f"blob at {path} is over the limit of {max_bytes} bytes")
        verify_blob(data, name, str(path))
        return data
