"""What a model client is: the :class:`ModelClient` protocol and the values it speaks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from edgeloop_common.serving.route import ModelRoute

ModelServerProtocol = Literal["rest", "grpc"]


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
    """A TF Serving API client (REST or gRPC) that classifies encoded images."""

    async def classify(self, route: ModelRoute, images: Sequence[bytes]) -> BatchPrediction:
        """Classify encoded images with one model call."""
        ...

    async def available(self, route: ModelRoute) -> bool:
        """True when the model server serves the route with a version in state AVAILABLE."""
        ...

    async def close(self) -> None: ...
