"""Fakes of the gateway's ports and of its model client, and small images, for the unit tests."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from edgeloop_common.events import BlobRef, ImageReceived, Ingress
from edgeloop_common.serving import BatchPrediction, ModelInputError, ModelRoute, ModelServerUnavailableError
from PIL import Image

# Shared helpers, re-exported for the gateway's tests beside the fakes below.
from tests.helpers import free_port as free_port
from tests.synthetic_photos import jpeg_bytes as jpeg_bytes


def png_bytes(color: tuple[int, int, int] = (10, 200, 90), size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def store_blob(directory: Path, data: bytes) -> BlobRef:
    digest = hashlib.sha256(data).hexdigest()
    path = directory / digest
    path.write_bytes(data)
    return BlobRef(sha256=digest, uri=path.resolve().as_uri(), content_type="image/jpeg", size_bytes=len(data))


def image_event(
    ref: BlobRef, *, site: str = "site-a", device: str = "cam-1", sample_id: str = "s-1", ingress: Ingress = "mqtt"
) -> ImageReceived:
    return ImageReceived(
        sample_id=sample_id,
        device_id=device,
        site_id=site,
        received_at=datetime.now(UTC),
        image=ref,
        format="jpeg",
        width=64,
        height=48,
        ingress=ingress,
    )


@dataclass
class FakeModelClient:
    """Scores each image by its first bytes' hash, so different images get different (but stable) scores."""

    version: int = 7
    labels: tuple[str, ...] = ("cat", "dog")
    delay_s: float = 0.0
    fail_with: Exception | None = None
    bad_images: set[bytes] = field(default_factory=set)
    calls: list[tuple[ModelRoute, int]] = field(default_factory=list)
    is_available: bool = True

    async def classify(self, route: ModelRoute, images: Sequence[bytes]) -> BatchPrediction:
        self.calls.append((route, len(images)))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_with is not None:
            raise self.fail_with
        if any(image in self.bad_images for image in images):
            raise ModelInputError("INVALID_ARGUMENT: cannot decode image")
        return BatchPrediction(
            model_name=route.model_name,
            model_version=route.version or self.version,
            scores=[self.scores_for(image) for image in images],
        )

    def scores_for(self, image: bytes) -> dict[str, float]:
        first = hashlib.sha256(image).digest()[0] / 255.0
        return {self.labels[0]: first, self.labels[1]: 1.0 - first}

    async def available(self, route: ModelRoute) -> bool:
        return self.is_available and self.fail_with is None

    async def close(self) -> None:
        return None


def model_server_down() -> ModelServerUnavailableError:
    return ModelServerUnavailableError("model server http://127.0.0.1:1 unreachable: ConnectError (after 3 attempts)")


@dataclass
class FakeResults:
    sent: list[tuple[str, str, bytes]] = field(default_factory=list)

    async def send(self, site_id: str, device_id: str, payload: bytes, *, traceparent: str | None = None) -> None:
        self.sent.append((site_id, device_id, payload))

    async def ready(self) -> bool:
        return True
