"""Synthetic predictions for the drift tests: distributed like the gateway's on the cat/dog photos.

brightness_mean of those photos, as the gateway measures them, has mean 0.446 and sd 0.122; darkening a photo to
half its light halves brightness and contrast (measured: 0.222 and 0.110).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
from edgeloop_common.events import BlobRef, InferenceCompleted, SampleLabeled
from edgeloop_common.reference_stats import ReferenceStats, compute_reference_stats
from edgeloop_drift.adapters.registry import RegistryReferences
from fastapi import FastAPI, HTTPException

REGISTRY = "http://registry.test"
BLOB = BlobRef(sha256="0" * 64, uri="file:///dev/null", content_type="image/jpeg", size_bytes=1)
BRIGHTNESS_A, BRIGHTNESS_B = 6.96, 8.64  # Beta with mean 0.446, sd 0.122


def prediction_records(rng: np.random.Generator, count: int, *, darken: float = 1.0) -> list[dict[str, Any]]:
    cat = rng.beta(2.0, 2.0, count)
    light = rng.beta(BRIGHTNESS_A, BRIGHTNESS_B, count) * darken
    contrast = np.clip(rng.normal(0.22, 0.058, count), 0.01, None) * darken
    sharpness = rng.gamma(2.0, 0.0075, count)
    heights = rng.choice([375.0, 333.0, 500.0], count)
    return [
        {
            "scores": {"cat": float(c), "dog": float(1 - c)},
            "confidence": float(max(c, 1 - c)),
            "image_stats": {
                "brightness_mean": float(b),
                "contrast_std": float(k),
                "sharpness_laplacian_var": float(s),
                "width": 500.0,
                "height": float(h),
            },
        }
        for c, b, k, s, h in zip(cat, light, contrast, sharpness, heights, strict=True)
    ]


def reference_stats(seed: int = 0, count: int = 1000) -> ReferenceStats:
    records = prediction_records(np.random.default_rng(seed), count)
    return ReferenceStats.model_validate(compute_reference_stats(records))


def inference_event(
    record: dict[str, Any], *, sample_id: str, site_id: str = "site-a", model: str = "catdog", version: int = 1
) -> InferenceCompleted:
    scores: dict[str, float] = record["scores"]
    return InferenceCompleted(
        sample_id=sample_id,
        device_id="cam-1",
        site_id=site_id,
        image=BLOB,
        model_name=model,
        model_version=version,
        scores=scores,
        top_label=max(scores, key=lambda name: scores[name]),
        confidence=record["confidence"],
        latency_ms=3.0,
        image_stats=record["image_stats"],
    )


def inference_events(
    rng: np.random.Generator, count: int, *, darken: float = 1.0, prefix: str = "s", **fields: Any
) -> list[InferenceCompleted]:
    return [
        inference_event(record, sample_id=f"{prefix}-{index}", **fields)
        for index, record in enumerate(prediction_records(rng, count, darken=darken))
    ]


def labeled_event(sample_id: str, *, correct: bool, site_id: str = "site-a") -> SampleLabeled:
    return SampleLabeled(
        sample_id=sample_id,
        device_id="cam-1",
        site_id=site_id,
        image=BLOB,
        label="cat",
        labeled_by="tester",
        predicted_label="cat" if correct else "dog",
    )


class FixedReferences:
    """A reference lookup that knows some versions' references and counts the questions."""

    def __init__(self, known: dict[tuple[str, int], ReferenceStats] | None = None) -> None:
        self.known = known or {}
        self.asked: list[tuple[str, int]] = []

    async def reference_stats(self, model_name: str, version: int) -> ReferenceStats | None:
        self.asked.append((model_name, version))
        return self.known.get((model_name, version))


class ManualClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def correctness(rng: np.random.Generator, count: int, accuracy: float) -> Iterator[bool]:
    return iter((rng.random(count) < accuracy).tolist())


def registry_stand_in(versions: dict[tuple[str, int], dict[str, Any]]) -> FastAPI:
    """The one registry route the drift service reads (docs/learning-loop.md), serving fixed versions."""
    registry = FastAPI()

    @registry.get("/v1/models/{name}/versions/{version}")
    async def version(name: str, version: int) -> dict[str, Any]:
        if (name, version) not in versions:
            raise HTTPException(404, f"model {name} has no version {version}")
        return {"model_name": name, "version": version, "status": "ready", **versions[(name, version)]}

    return registry


def registry_client(versions: dict[tuple[str, int], dict[str, Any]]) -> RegistryReferences:
    transport = httpx.ASGITransport(app=registry_stand_in(versions))
    return RegistryReferences(REGISTRY, client=httpx.AsyncClient(transport=transport))
