"""What the gateway's logic needs from the outside world, and the errors it speaks.

The adapters (TF Serving REST and gRPC, blob fetchers, MQTT) implement these
protocols; the unit tests use fakes of them. Errors that no retry can fix are
:class:`UnclassifiableError`s: the event handler dead-letters the event at once
(handlers.py) and HTTP answers 4xx (api.py); the others are transient: retried,
then dead-lettered after the bound; HTTP answers 503.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from edgeloop_common.events import BlobRef

from edgeloop_inference_gateway.routing import ModelRoute

# -- errors -------------------------------------------------------------------


class GatewayError(Exception):
    """Base of the gateway's domain errors."""


class UnclassifiableError(GatewayError):
    """No retry can classify this image (bad input, or a model that does not classify): give it up at once."""


class InvalidImageError(UnclassifiableError):
    """The bytes are not a JPEG or PNG image that can be decoded.

    ``edgeloop_common.images.inspect_image`` raises its own ``InvalidImageError`` (a ValueError); the service
    turns it into this one, so the image is dead-lettered at once (HTTP 400) instead of retried.
    """


class ImageTooLargeError(UnclassifiableError):
    """The image is larger than ``max_image_bytes``."""


class BlobIntegrityError(UnclassifiableError):
    """The fetched blob's SHA-256 (or size) is not the one the event names."""


class BlobNotFoundError(UnclassifiableError):
    """The blob the event names does not exist where its URI points."""


class UnsupportedBlobUriError(UnclassifiableError):
    """No fetcher handles the blob URI's scheme."""


class BlobUnavailableError(GatewayError):
    """The blob store could not be reached (transient)."""


class ModelInputError(UnclassifiableError):
    """The model server rejected the input (TF Serving INVALID_ARGUMENT / HTTP 400)."""


class ModelResponseError(UnclassifiableError):
    """The model's signature or response is not one the gateway understands (wrong model for classification)."""


class ModelServerUnavailableError(GatewayError):
    """The model server could not be reached or answered with a transient error (after the client's retries)."""


class ModelNotFoundError(GatewayError):
    """The model server does not serve this model or version (yet): transient, it may be loading."""


# -- model server ---------------------------------------------------------------


@dataclass(frozen=True)
class ModelSignature:
    """Which tensors of the serving signature carry the image, the scores and the class names."""

    input_name: str
    scores_output: str
    classes_output: str | None


@dataclass(frozen=True)
class SignatureFallback:
    """Names to prefer, or to use where the model's metadata does not tell."""

    signature_name: str = "serving_default"
    input_name: str = "image_bytes"
    scores_output: str = "scores"
    classes_output: str = "classes"


@dataclass(frozen=True)
class BatchPrediction:
    """One model call's answer: the version that actually served it and per-image scores by class name."""

    model_name: str
    model_version: int
    scores: list[dict[str, float]]


class ModelClient(Protocol):
    async def classify(self, route: ModelRoute, images: Sequence[bytes]) -> BatchPrediction:
        """Classify encoded images with one model call."""
        ...

    async def available(self, route: ModelRoute) -> bool:
        """True when the model server serves the route with a version in state AVAILABLE."""
        ...

    async def close(self) -> None: ...


# -- blobs and results ----------------------------------------------------------


class BlobFetcher(Protocol):
    async def fetch(self, ref: BlobRef) -> bytes:
        """The blob's bytes, verified against ``ref.sha256``."""
        ...


class ResultPublisher(Protocol):
    async def send(self, site_id: str, device_id: str, payload: bytes) -> None:
        """Send a result to the device (MQTT ``dt/edgeloop/{site}/{device}/result``)."""
        ...

    async def ready(self) -> bool: ...


# -- hard-example mining (seam for a later issue) --------------------------------


@dataclass(frozen=True)
class HardExampleVerdict:
    hard: bool
    reason: str | None = None


class HardExampleMiner(Protocol):
    def assess(self, scores: dict[str, float], image_stats: dict[str, float]) -> HardExampleVerdict: ...


class NoHardExamples:
    """The default miner: nothing is a hard example until a real miner is plugged in."""

    def assess(self, scores: dict[str, float], image_stats: dict[str, float]) -> HardExampleVerdict:
        return HardExampleVerdict(hard=False)
