"""The blob store as the service sees it: content-addressed, durable image bytes (the port).

The port and its two stores (a folder, an S3 bucket) live in :mod:`edgeloop_common.blobs`, shared by every
service that writes or reads blobs; the app picks one with ``open_blob_store(settings.common, ...)``.
"""

from __future__ import annotations

from edgeloop_common.blobs.store import (
    BlobIntegrityError,
    BlobNotFoundError,
    BlobStore,
    BlobStoreUnavailableError,
    sha256_hex,
)

__all__ = ["BlobIntegrityError", "BlobNotFoundError", "BlobStore", "BlobStoreUnavailableError", "sha256_hex"]
