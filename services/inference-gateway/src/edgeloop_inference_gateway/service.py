"""The gateway's logic: image in, classification out, batched per model route.

No I/O framework is imported here: the model server is an
``edgeloop_common.serving.ModelClient``, the blob store and the device channel
are ports (:mod:`edgeloop_inference_gateway.ports`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from edgeloop_common.device_messages import DeviceResult
from edgeloop_common.events import ImageQuality, ImageReceived, InferenceCompleted, ServedBy
from edgeloop_common.images import ImageFacts, inspect_image
from edgeloop_common.images import InvalidImageError as UndecodableImageError
from edgeloop_common.mining import HardExampleMiner, HardExampleVerdict, NoHardExamples
from edgeloop_common.serving import (
    BatchPrediction,
    ModelClient,
    ModelInputError,
    ModelNotFoundError,
    ModelResponseError,
    ModelRoute,
    ModelServerUnavailableError,
    ModelServingError,
    UnclassifiableError,
)

from edgeloop_inference_gateway.batching import DynamicBatcher
from edgeloop_inference_gateway.metrics import GatewayMetrics
from edgeloop_inference_gateway.ports import (
    BlobFetcher,
    BlobUnavailableError,
    ImageTooLargeError,
    InvalidImageError,
)
from edgeloop_inference_gateway.routing import ModelRouter

log = logging.getLogger(__name__)

T = TypeVar("T")

# The gateway is the cloud tier: an edge agent answers at its site with "edge" (docs/edge.md).
SERVED_BY: ServedBy = "cloud"
# Scores a hair outside [0, 1] are float noise from softmax; anything further is not a probability.
_SCORE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ScoredImage:
    """One image's share of a batched model call."""

    model_name: str
    model_version: int
    scores: dict[str, float]


@dataclass(frozen=True)
class Classification:
    model_name: str
    model_version: int
    scores: dict[str, float]
    top_label: str
    confidence: float
    latency_ms: float
    image_sha256: str
    image_stats: dict[str, float]
    quality: ImageQuality = "ok"
    served_by: ServedBy = SERVED_BY
    completed_at: datetime | None = None


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_concurrent_batches: int = 2


class InferenceService:
    def __init__(
        self,
        *,
        model_client: ModelClient,
        router: ModelRouter,
        blob_fetcher: BlobFetcher | None = None,
        batching: BatchingConfig | None = None,
        metrics: GatewayMetrics | None = None,
        miner: HardExampleMiner | None = None,
        max_image_bytes: int = 20 * 1024 * 1024,
    ) -> None:
        batching = batching or BatchingConfig()
        self.model_client = model_client
        self.router = router
        self.blob_fetcher = blob_fetcher
        self.metrics = metrics or GatewayMetrics()
        self.miner: HardExampleMiner = miner or NoHardExamples()
        self.max_image_bytes = max_image_bytes
        self.batcher: DynamicBatcher[ModelRoute, bytes, ScoredImage] = DynamicBatcher(
            self._run_batch,
            max_batch_size=batching.max_batch_size,
            max_wait_s=batching.max_wait_ms / 1000.0,
            max_concurrent_batches=batching.max_concurrent_batches,
            on_batch=self.metrics.batch_size.observe,
        )

    async def close(self) -> None:
        await self.batcher.close()

    async def classify_bytes(self, data: bytes, *, site_id: str | None = None) -> Classification:
        """Classify one encoded image with the model that serves ``site_id`` (the default route if None)."""
        started = time.perf_counter()
        return await self._counted(self._classify(data, self.router.route_for(site_id), started))

    async def classify_event(self, event: ImageReceived) -> InferenceCompleted:
        """Fetch the event's image, classify it and describe the result as an :class:`InferenceCompleted`."""
        started = time.perf_counter()
        if self.blob_fetcher is None:
            raise RuntimeError("the inference service has no blob fetcher")
        data = await self._counted(self.blob_fetcher.fetch(event.image))
        classification = await self._counted(self._classify_with_canary(data, event, started))
        verdict = self._hard_example(classification)
        return InferenceCompleted(
            sample_id=event.sample_id,
            device_id=event.device_id,
            site_id=event.site_id,
            image=event.image,
            model_name=classification.model_name,
            model_version=classification.model_version,
            scores=classification.scores,
            top_label=classification.top_label,
            confidence=classification.confidence,
            latency_ms=classification.latency_ms,
            served_by=classification.served_by,
            hard_example=verdict.hard,
            hard_example_reason=verdict.reason,
            image_stats=classification.image_stats,
            quality=classification.quality,
        )

    async def _classify_with_canary(self, data: bytes, event: ImageReceived, started: float) -> Classification:
        """The sample's route (its site's canary's when in its share); a canary that fails to answer is answered
        for by the site's stable route: the answer names the version, which is how the deployer sees the failure."""
        route = self.router.route_for(event.site_id, sample_id=event.sample_id)
        stable = self.router.route_for(event.site_id)
        if route == stable:
            return await self._classify(data, route, started)
        try:
            return await self._classify(data, route, started)
        except ModelServingError as exc:
            log.warning("canary %s failed sample %s (%s); answered by %s", route, event.sample_id, exc, stable)
            self.metrics.inferences.labels(outcome="canary_fallback").inc()
            return await self._classify(data, stable, started)

    def _hard_example(self, classification: Classification) -> HardExampleVerdict:
        """The miner's verdict; a picture with nothing to classify (too dark, blank...) is never worth labeling."""
        if classification.quality != "ok":
            return HardExampleVerdict(hard=False)
        return self.miner.assess(classification.scores, classification.image_stats)

    async def _classify(self, data: bytes, route: ModelRoute, started: float) -> Classification:
        if len(data) > self.max_image_bytes:
            raise ImageTooLargeError(f"image of {len(data)} bytes is larger than the limit of {self.max_image_bytes}")
        # Decoding for the statistics also rejects what is not a JPEG/PNG before it can spoil a batch.
        try:
            facts: ImageFacts = await asyncio.to_thread(inspect_image, data)
        except UndecodableImageError as exc:
            raise InvalidImageError(str(exc)) from exc  # permanent: dead-lettered at once, HTTP 4xx
        scored = await self.batcher.submit(route, data)
        top_label, confidence = top_of(scored.scores)
        elapsed = time.perf_counter() - started
        self.metrics.inference_duration.observe(elapsed)
        return Classification(
            model_name=scored.model_name,
            model_version=scored.model_version,
            scores=scored.scores,
            top_label=top_label,
            confidence=confidence,
            latency_ms=elapsed * 1000.0,
            image_sha256=hashlib.sha256(data).hexdigest(),
            image_stats=facts.stats,
            quality=facts.quality,
            completed_at=datetime.now(UTC),
        )

    async def _run_batch(self, route: ModelRoute, images: list[bytes]) -> Sequence[ScoredImage | BaseException]:
        try:
            prediction = await self._call_model(route, images)
        except ModelInputError as exc:
            if len(images) == 1:
                return [exc]
            # One bad image must not fail the others in its batch: ask again one by one.
            log.info("model rejected a batch of %d (%s); retrying its images one by one", len(images), exc)
            return await asyncio.gather(*(self._run_one(route, image) for image in images), return_exceptions=True)
        return scored_images(prediction, expected=len(images))

    async def _run_one(self, route: ModelRoute, image: bytes) -> ScoredImage:
        return scored_images(await self._call_model(route, [image]), expected=1)[0]

    async def _call_model(self, route: ModelRoute, images: list[bytes]) -> BatchPrediction:
        with self.metrics.model_call_duration.time():
            return await self.model_client.classify(route, images)

    async def _counted(self, work: Awaitable[T]) -> T:
        """Await ``work``, counting failures by outcome (successes are counted once, by the caller's result)."""
        try:
            result = await work
        except (ModelServerUnavailableError, ModelNotFoundError):
            self.metrics.inferences.labels(outcome="model_unavailable").inc()
            raise
        except BlobUnavailableError:
            self.metrics.inferences.labels(outcome="blob_unavailable").inc()
            raise
        except UnclassifiableError:
            self.metrics.inferences.labels(outcome="invalid_input").inc()
            raise
        except Exception:
            self.metrics.inferences.labels(outcome="error").inc()
            raise
        if isinstance(result, Classification):
            self.metrics.inferences.labels(outcome="ok").inc()
        return result

    async def models_available(self) -> bool:
        """True when every routed model has an AVAILABLE version on the model server."""
        checks = await asyncio.gather(*(self.model_client.available(route) for route in self.router.all_routes()))
        return all(checks)


def scored_images(prediction: BatchPrediction, *, expected: int) -> list[ScoredImage]:
    if len(prediction.scores) != expected:
        raise ModelResponseError(f"model returned {len(prediction.scores)} score rows for {expected} images")
    return [
        ScoredImage(prediction.model_name, prediction.model_version, checked_scores(scores))
        for scores in prediction.scores
    ]


def checked_scores(scores: dict[str, float]) -> dict[str, float]:
    if not scores:
        raise ModelResponseError("model returned no class scores")
    for label, score in scores.items():
        if not -_SCORE_TOLERANCE <= score <= 1.0 + _SCORE_TOLERANCE:
            raise ModelResponseError(f"score {score} for {label!r} is not a probability; the model must end in softmax")
    return {label: min(1.0, max(0.0, float(score))) for label, score in scores.items()}


def top_of(scores: dict[str, float]) -> tuple[str, float]:
    label = max(scores, key=lambda name: scores[name])
    return label, scores[label]


def device_result(completed: InferenceCompleted) -> dict[str, Any]:
    """The JSON a device receives on ``dt/edgeloop/{site}/{device}/result`` (``DeviceResult`` of the contract)."""
    return DeviceResult(
        sample_id=completed.sample_id,
        site_id=completed.site_id,
        device_id=completed.device_id,
        image_sha256=completed.image.sha256,
        model_name=completed.model_name,
        model_version=completed.model_version,
        top_label=completed.top_label,
        confidence=completed.confidence,
        scores=completed.scores,
        latency_ms=round(completed.latency_ms, 3),
        served_by=completed.served_by,
        hard_example=completed.hard_example,
        quality=completed.quality,
        completed_at=completed.completed_at,
    ).model_dump(mode="json")


def classification_result(
    classification: Classification, *, site_id: str | None, device_id: str | None, sample_id: str | None = None
) -> dict[str, Any]:
    """The same JSON shape for ``POST /v1/classify`` (no sample: the image is not stored)."""
    return DeviceResult(
        sample_id=sample_id,
        site_id=site_id,
        device_id=device_id,
        image_sha256=classification.image_sha256,
        model_name=classification.model_name,
        model_version=classification.model_version,
        top_label=classification.top_label,
        confidence=classification.confidence,
        scores=classification.scores,
        latency_ms=round(classification.latency_ms, 3),
        served_by=classification.served_by,
        hard_example=False,
        quality=classification.quality,
        completed_at=classification.completed_at or datetime.now(UTC),
    ).model_dump(mode="json")
