"""Content-addressed image blobs in a folder or an S3 bucket (docs/ingest.md, "Blob store").

Write with the store :func:`open_blob_store` returns; read any blob an event names with :class:`BlobReader`.
"""

from edgeloop_common.blobs.factory import BlobReader, UnsupportedBlobUriError, describe_blob_store, open_blob_store
from edgeloop_common.blobs.folder import LocalBlobStore
from edgeloop_common.blobs.store import (
    BlobIntegrityError,
    BlobNotFoundError,
    BlobStore,
    BlobStoreAccessError,
    BlobStoreUnavailableError,
    BlobTooLargeError,
    check_sha256,
    sha256_hex,
    verify_blob,
)

__all__ = [
    "BlobIntegrityError",
    "BlobNotFoundError",
    "BlobReader",
    "BlobStore",
    "BlobStoreAccessError",
    "BlobStoreUnavailableError",
    "BlobTooLargeError",
    "LocalBlobStore",
    "UnsupportedBlobUriError",
    "check_sha256",
    "describe_blob_store",
    "open_blob_store",
    "sha256_hex",
    "verify_blob",
]
