"""What the gateway's logic needs from the outside world, and the errors it speaks.

The model server is :class:`edgeloop_common.serving.ModelClient` (shared with the edge agent), with its errors;
the blob fetchers and the MQTT publisher implement the protocols below; the unit tests use fakes of them.
Errors that no retry can fix subclass :class:`edgeloop_common.serving.UnclassifiableError`: the event handler
dead-letters the event at once (handlers.py) and HTTP answers 4xx (api.py); the others are transient: retried,
then dead-lettered after the bound; HTTP answers 503.
"""

from __future__ import annotations

from typing import Protocol

from edgeloop_common.events import BlobRef
from edgeloop_common.serving import UnclassifiableError

# -- errors -------------------------------------------------------------------


class GatewayError(Exception):
    """Base of the gateway's own domain errors (the model server's are ``edgeloop_common.serving``'s)."""


class InvalidImageError(UnclassifiableError, GatewayError):
    """The bytes are not a JPEG or PNG image that can be decoded.

    ``edgeloop_common.images.inspect_image`` raises its own ``InvalidImageError`` (a ValueError); the service
    turns it into this one, so the image is dead-lettered at once (HTTP 400) instead of retried.
    """


class ImageTooLargeError(UnclassifiableError, GatewayError):
    """The image is larger than ``max_image_bytes``."""


class BlobIntegrityError(UnclassifiableError, GatewayError):
    """The fetched blob's SHA-256 (or size) is not the one the event names."""


class BlobNotFoundError(UnclassifiableError, GatewayError):
    """The blob the event names does not exist where its URI points."""


class UnsupportedBlobUriError(UnclassifiableError, GatewayError):
    """No fetcher handles the blob URI's scheme."""


class BlobUnavailableError(GatewayError):
    """The blob store could not be reached (transient)."""


# -- blobs and results ----------------------------------------------------------


class BlobFetcher(Protocol):
    async def fetch(self, ref: BlobRef) -> bytes:
        """The blob's bytes, verified against ``ref.sha256``."""
        ...


class ResultPublisher(Protocol):
    async def send(self, site_id: str, device_id: str, payload: bytes, *, traceparent: str | None = None) -> None:
        """Send a result to the device (MQTT ``dt/edgeloop/{site}/{device}/result``)."""
        ...

    async def ready(self) -> bool: ...
