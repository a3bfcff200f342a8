"""The blob store as every service sees it: content-addressed, durable image bytes (the port).

A blob's name is the SHA-256 of its bytes, so ``put`` is idempotent, a blob never changes, and a reader can tell
a corrupted blob from a good one without asking anybody: both stores check the hash when a blob is written and
again when it is read, and a mismatch is :class:`BlobIntegrityError`, never bytes served.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

HEX_DIGITS = frozenset("0123456789abcdef")


class BlobNotFoundError(KeyError):
    """No blob with this sha256 in the store."""


class BlobIntegrityError(ValueError):
    """The bytes are not the blob their name says (a wrong hash handed to ``put``, or corrupted in the store)."""


class BlobTooLargeError(ValueError):
    """The stored blob is larger than the reader accepts (read before its bytes are fetched)."""


class BlobStoreUnavailableError(OSError):
    """The store cannot be used now (unreachable, overloaded): retrying later may succeed."""


class BlobStoreAccessError(BlobStoreUnavailableError):
    """The store refuses us or is not set up as the settings say (credentials, bucket, TLS CA); the message names
    the setting to fix. Transient for callers (they retry and dead-letter), but it needs an operator."""


class BlobStore(Protocol):
    """Blocking calls: async callers run them in a thread."""

    def put(self, data: bytes, *, sha256: str | None = None) -> str:
        """Store ``data`` durably under its sha256 (computed when not given, checked when given); return it."""
        ...

    def put_many(self, blobs: Sequence[tuple[bytes, str]]) -> None:
        """Store ``(data, sha256)`` pairs; every one is durable when this returns (cheaper than one by one)."""
        ...

    def get(self, sha256: str) -> bytes:
        """The blob's bytes, checked against its name (:class:`BlobIntegrityError` when they differ)."""
        ...

    def exists(self, sha256: str) -> bool: ...

    def uri(self, sha256: str) -> str:
        """Where other services read it: ``file://...`` (this node) or ``s3://bucket/key`` (any node)."""
        ...

    def writable(self) -> bool:
        """True when a ``put`` can succeed now (readiness)."""
        ...


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha256(sha256: str) -> str:
    """``sha256`` when it is a lower-case hex SHA-256 digest (a blob's name); ValueError otherwise."""
    if len(sha256) != 64 or not HEX_DIGITS.issuperset(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


def verify_blob(data: bytes, sha256: str, where: str) -> None:
    """:class:`BlobIntegrityError` unless ``data`` hashes to ``sha256``; ``where`` names the blob in the message."""
    digest = sha256_hex(data)
    if digest != sha256:
        raise BlobIntegrityError(
            f"{where} holds {len(data)} bytes with sha256 {digest}, not {sha256} as its name says: "
            "corrupted or written wrongly, so it is not served"
        )
