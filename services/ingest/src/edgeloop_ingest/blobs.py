"""The blob store as the service sees it: content-addressed, durable image bytes (the port).

Implementations live in :mod:`edgeloop_ingest.adapters.blobstore`; the service depends on this interface only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol


class BlobNotFoundError(KeyError):
    """No blob with this sha256 in the store."""


class BlobStore(Protocol):
    """Blocking calls: async callers run them in a thread."""

    def put(self, data: bytes, *, sha256: str | None = None) -> str:
        """Store ``data`` durably under its sha256 (computed when not given); return the sha256."""
        ...

    def put_many(self, blobs: Sequence[tuple[bytes, str]]) -> None:
        """Store ``(data, sha256)`` pairs; every one is durable when this returns (cheaper than one by one)."""
        ...

    def get(self, sha256: str) -> bytes: ...

    def exists(self, sha256: str) -> bool: ...

    def uri(self, sha256: str) -> str: ...

    def writable(self) -> bool:
        """True when a ``put`` can succeed now (readiness)."""
        ...


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
