"""Fetching an event's image blob: ``file://`` (the local content-addressed store), ``s3://`` (the shared S3
store, through :class:`edgeloop_common.blobs.BlobReader` and the ``EDGELOOP_S3_*`` settings) and ``http(s)://``.

Every blob is checked against the SHA-256 (and size) its :class:`BlobRef` names;
a mismatch is permanent (dead-lettered), an unreachable store is transient.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import httpx
from edgeloop_common import blobs
from edgeloop_common.events import BlobRef

from edgeloop_inference_gateway.ports import (
    BlobIntegrityError,
    BlobNotFoundError,
    BlobUnavailableError,
    ImageTooLargeError,
    UnsupportedBlobUriError,
)


class UriBlobFetcher:
    """Reads ``file://`` URIs from disk, ``http(s)://`` URIs with one shared HTTP client and ``s3://`` URIs with
    ``reader`` (none: s3 is unsupported)."""

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout_s: float = 10.0,
        http: httpx.AsyncClient | None = None,
        reader: blobs.BlobReader | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self._http = http or httpx.AsyncClient(timeout=timeout_s, follow_redirects=True)
        self._reader = reader

    async def fetch(self, ref: BlobRef) -> bytes:
        if ref.size_bytes > self.max_bytes:
            raise ImageTooLargeError(
                f"blob {ref.sha256} has {ref.size_bytes} bytes, over the limit of {self.max_bytes}"
            )
        scheme = urlparse(ref.uri).scheme.lower()
        if scheme == "file":
            data = await asyncio.to_thread(self._read_file, ref.uri)
        elif scheme in ("http", "https"):
            data = await self._get(ref.uri)
        elif scheme == "s3" and self._reader is not None:
            data = await asyncio.to_thread(self._read_s3, ref)
        else:
            raise UnsupportedBlobUriError(f"cannot fetch blob URI {ref.uri!r}: scheme {scheme or 'none'} not supported")
        verify(ref, data)
        return data

    async def close(self) -> None:
        await self._http.aclose()

    def _read_file(self, uri: str) -> bytes:
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise UnsupportedBlobUriError(f"file URI {uri!r} names another host ({parsed.netloc})")
        path = Path(url2pathname(unquote(parsed.path)))
        try:
            with path.open("rb") as blob:
                data = blob.read(self.max_bytes + 1)
        except FileNotFoundError as exc:
            raise BlobNotFoundError(f"blob not found at {path}") from exc
        except (IsADirectoryError, PermissionError) as exc:
            raise BlobNotFoundError(f"blob at {path} cannot be read: {exc}") from exc
        except OSError as exc:
            raise BlobUnavailableError(f"blob at {path} cannot be read now: {exc}") from exc
        self._check_length(len(data), uri)
        return data

    def _read_s3(self, ref: BlobRef) -> bytes:
        assert self._reader is not None
        try:
            return self._reader.read(ref.uri, sha256=ref.sha256, max_bytes=self.max_bytes)
        except blobs.UnsupportedBlobUriError as exc:
            raise UnsupportedBlobUriError(f"cannot fetch blob URI {ref.uri!r}: {exc}") from exc
        except blobs.BlobNotFoundError as exc:
            raise BlobNotFoundError(f"blob not found at {ref.uri}") from exc
        except blobs.BlobTooLargeError as exc:
            raise ImageTooLargeError(str(exc)) from exc
        except blobs.BlobIntegrityError as exc:
            raise BlobIntegrityError(str(exc)) from exc
        except blobs.BlobStoreUnavailableError as exc:  # credentials and bucket too: retried, then dead-lettered
            raise BlobUnavailableError(str(exc)) from exc

    async def _get(self, uri: str) -> bytes:
        try:
            response = await self._http.get(uri)
        except httpx.TransportError as exc:
            raise BlobUnavailableError(f"blob store unreachable for {uri}: {exc!r}") from exc
        if response.status_code == 404:
            raise BlobNotFoundError(f"blob not found at {uri} (HTTP 404)")
        if response.status_code >= 500 or response.status_code == 429:
            raise BlobUnavailableError(f"blob store answered HTTP {response.status_code} for {uri}")
        if response.status_code != 200:
            raise BlobNotFoundError(f"blob store answered HTTP {response.status_code} for {uri}")
        self._check_length(len(response.content), uri)
        return response.content

    def _check_length(self, length: int, uri: str) -> None:
        if length > self.max_bytes:
            raise ImageTooLargeError(f"blob at {uri} is over the limit of {self.max_bytes} bytes")


def verify(ref: BlobRef, data: bytes) -> None:
    """:class:`BlobIntegrityError` unless ``data`` is the blob ``ref`` names."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise BlobIntegrityError(f"blob at {ref.uri} has sha256 {digest}, the event says {ref.sha256}")
    if len(data) != ref.size_bytes:
        raise BlobIntegrityError(f"blob at {ref.uri} has {len(data)} bytes, the event says {ref.size_bytes}")
