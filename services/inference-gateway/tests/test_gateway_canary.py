"""The gateway's part of a canary rollout: a site's samples split by the deployer's weight, and a canary that fails
to answer answered for by the stable version (docs/deployer.md, "Canary rollouts")."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from edgeloop_common.events import CanaryStatus, DeploymentPhase, DeploymentUpdated
from edgeloop_common.serving import BatchPrediction, ModelResponseError, ModelRoute
from edgeloop_inference_gateway.adapters.blob_fetch import UriBlobFetcher
from edgeloop_inference_gateway.routing import ModelRouter
from edgeloop_inference_gateway.service import BatchingConfig, InferenceService
from gateway_fakes import FakeModelClient, image_event, jpeg_bytes, store_blob


def update(
    phase: DeploymentPhase, *, status: CanaryStatus | None = None, weight: float = 0.2, site: str = "site-a"
) -> DeploymentUpdated:
    return DeploymentUpdated(
        model_name="catdog",
        node_group=site,
        desired_version=2,
        actual_version=1,
        phase=phase,
        canary_version=2 if status else None,
        canary_weight=weight if status else None,
        canary_status=status,
    )


def routed_to(router: ModelRouter, n: int, site: str = "site-a") -> dict[ModelRoute, int]:
    counts: dict[ModelRoute, int] = {}
    for _ in range(n):
        route = router.route_for(site, sample_id=uuid.uuid4().hex)
        counts[route] = counts.get(route, 0) + 1
    return counts


@pytest.mark.parametrize("weight", [0.05, 0.2, 0.5])
def test_a_watching_canary_takes_its_weight_of_the_sites_samples(weight: float) -> None:
    router = ModelRouter(ModelRoute("catdog"))
    router.follow_deployment(update("ready", status=None))  # site-a on version 1
    router.follow_deployment(update("canary", status="watching", weight=weight))

    counts = routed_to(router, 20_000)

    share = counts[ModelRoute("catdog", version=2)] / 20_000
    assert abs(share - weight) < 0.015, counts  # 20,000 draws: 3 standard deviations are under 0.011
    assert set(counts) == {ModelRoute("catdog", version=1), ModelRoute("catdog", version=2)}
    assert routed_to(router, 500, site="site-b") == {ModelRoute("catdog"): 500}  # another site: no canary
    same = uuid.uuid4().hex
    assert len({router.route_for("site-a", sample_id=same) for _ in range(20)}) == 1  # a retry goes the same way
    assert router.route_for("site-a") == ModelRoute("catdog", version=1)  # no sample id (POST /v1/classify): stable


def test_the_split_starts_only_while_watching_and_ends_with_any_other_update() -> None:
    router = ModelRouter(ModelRoute("catdog"))
    router.follow_deployment(update("ready"))
    router.follow_deployment(update("canary", status="deploying"))
    assert routed_to(router, 300) == {ModelRoute("catdog", version=1): 300}  # its server is not up yet

    router.follow_deployment(update("canary", status="watching"))
    assert len(routed_to(router, 300)) == 2 and set(router.canaries()) == {"site-a"}

    router.follow_deployment(update("rolled_back", status="failed"))
    assert routed_to(router, 300) == {ModelRoute("catdog", version=1): 300} and router.canaries() == {}


@dataclass
class BrokenCanary(FakeModelClient):
    """Version 2 answers nonsense (a model that fails to classify); the rest as the fake does."""

    async def classify(self, route: ModelRoute, images: Sequence[bytes]) -> BatchPrediction:
        if route.version == 2:
            self.calls.append((route, len(images)))
            raise ModelResponseError("score 3.2 for 'cat' is not a probability; the model must end in softmax")
        return await super().classify(route, images)


async def test_a_sample_the_canary_fails_is_answered_by_the_stable_version(tmp_path: Path) -> None:
    router = ModelRouter(ModelRoute("catdog"))
    router.follow_deployment(update("ready"))
    router.follow_deployment(update("canary", status="watching", weight=0.5))
    model = BrokenCanary()
    service = InferenceService(
        model_client=model,
        router=router,
        blob_fetcher=UriBlobFetcher(max_bytes=10_000_000),
        batching=BatchingConfig(max_wait_ms=1.0),
    )
    ref = store_blob(tmp_path, jpeg_bytes())
    try:
        results = [await service.classify_event(image_event(ref, sample_id=f"s-{i}")) for i in range(40)]
    finally:
        await service.close()

    assert {result.model_version for result in results} == {1}  # every sample answered, by the stable version
    tried = [route.version for route, _ in model.calls]
    assert 5 < tried.count(2) < 35 and tried.count(1) == 40  # the canary's share was tried first
    fallbacks = service.metrics.inferences.labels(outcome="canary_fallback")._value.get()
    assert fallbacks == tried.count(2)
