"""The miner the settings choose (edgeloop_common.mining) reaching InferenceCompleted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from edgeloop_common.mining import ConfidenceMiner, EntropyMiner, IBTMiner, NoHardExamples
from edgeloop_common.serving import BatchPrediction, ModelRoute
from edgeloop_inference_gateway.adapters.blob_fetch import UriBlobFetcher
from edgeloop_inference_gateway.app import miner_from_settings
from edgeloop_inference_gateway.routing import ModelRouter
from edgeloop_inference_gateway.service import InferenceService
from edgeloop_inference_gateway.settings import Settings
from gateway_fakes import image_event, jpeg_bytes, store_blob


def test_settings_choose_the_miner(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(miner_from_settings(Settings()), ConfidenceMiner)  # the default
    monkeypatch.setenv("EDGELOOP_INFERENCE_GATEWAY_HARD_EXAMPLE_MINER", "ibt")
    monkeypatch.setenv("EDGELOOP_INFERENCE_GATEWAY_HARD_EXAMPLE_IBT_THRESHOLD_BOX", "0.7")
    miner = miner_from_settings(Settings())
    assert miner == IBTMiner(threshold_img=0.5, threshold_box=0.7)
    monkeypatch.setenv("EDGELOOP_INFERENCE_GATEWAY_HARD_EXAMPLE_MINER", "entropy")
    monkeypatch.setenv("EDGELOOP_INFERENCE_GATEWAY_HARD_EXAMPLE_ENTROPY_THRESHOLD", "0.6")
    assert miner_from_settings(Settings()) == EntropyMiner(0.6)
    monkeypatch.setenv("EDGELOOP_INFERENCE_GATEWAY_HARD_EXAMPLE_MINER", "none")
    assert isinstance(miner_from_settings(Settings()), NoHardExamples)


@dataclass
class FixedScoresModel:
    """A model client that answers the same scores for every image."""

    scores: dict[str, float]

    async def classify(self, route: ModelRoute, images: Sequence[bytes]) -> BatchPrediction:
        return BatchPrediction(model_name=route.model_name, model_version=4, scores=[self.scores for _ in images])

    async def available(self, route: ModelRoute) -> bool:
        return True

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(
    ("scores", "hard", "reason"),
    [({"cat": 0.58, "dog": 0.42}, True, "confidence 0.58 < 0.80"), ({"cat": 0.03, "dog": 0.97}, False, None)],
)
async def test_the_verdict_reaches_inference_completed(
    tmp_path: Path, scores: dict[str, float], hard: bool, reason: str | None
) -> None:
    ref = store_blob(tmp_path, jpeg_bytes())
    service = InferenceService(
        model_client=FixedScoresModel(scores),
        router=ModelRouter(ModelRoute.of("edgeloop-classifier", "")),
        blob_fetcher=UriBlobFetcher(max_bytes=10_000_000),
        miner=miner_from_settings(Settings()),  # the default: confidence below 0.8
    )
    try:
        completed = await service.classify_event(image_event(ref, sample_id="s-miner"))
    finally:
        await service.close()
    assert (completed.sample_id, completed.hard_example, completed.hard_example_reason) == ("s-miner", hard, reason)
