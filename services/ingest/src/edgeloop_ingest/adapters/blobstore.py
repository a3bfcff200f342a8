"""Content-addressed blob storage for image bytes: the folder store, now in :mod:`edgeloop_common.blobs.folder`
(beside the S3 one) so that every service reads blobs the same way; kept here for the imports that name it."""

from __future__ import annotations

from edgeloop_common.blobs.folder import LocalBlobStore
from edgeloop_common.blobs.store import BlobNotFoundError

__all__ = ["BlobNotFoundError", "LocalBlobStore"]
