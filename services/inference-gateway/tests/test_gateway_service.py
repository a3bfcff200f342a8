"""The gateway's logic with fakes: routing, result mapping, image quality, retries and dead letters."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from edgeloop_common.bus import RetryPolicy
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import BlobRef, DeadLetter, InferenceCompleted
from edgeloop_common.mining import HardExampleMiner, HardExampleVerdict
from edgeloop_common.serving import (
    BatchPrediction,
    ModelResponseError,
    ModelRoute,
    ModelServerUnavailableError,
    RouteConfigError,
)
from edgeloop_common.subscriptions import subscribed
from edgeloop_inference_gateway.adapters.blob_fetch import UriBlobFetcher
from edgeloop_inference_gateway.handlers import SUBSCRIPTIONS, GatewayHandlers, inference_event_id
from edgeloop_inference_gateway.ports import InvalidImageError
from edgeloop_inference_gateway.routing import ModelRouter, parse_site_routes
from edgeloop_inference_gateway.service import BatchingConfig, InferenceService, device_result
from gateway_fakes import (
    FakeModelClient,
    FakeResults,
    image_event,
    jpeg_bytes,
    model_server_down,
    store_blob,
)


def remove_blob(ref: BlobRef) -> None:
    Path(ref.uri.removeprefix("file://")).unlink()


FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)


def make_service(
    model: FakeModelClient,
    router: ModelRouter | None = None,
    miner: HardExampleMiner | None = None,
    **batching: float,
) -> InferenceService:
    return InferenceService(
        model_client=model,
        router=router or ModelRouter(ModelRoute("edgeloop-classifier")),
        blob_fetcher=UriBlobFetcher(max_bytes=10_000_000),
        batching=BatchingConfig(**batching) if batching else BatchingConfig(max_wait_ms=1.0),
        miner=miner,
    )


async def run_gateway(
    service: InferenceService, results: FakeResults, events: list, retry: RetryPolicy = FAST_RETRY
) -> InProcessBus:
    bus = InProcessBus(source="inference-gateway", retry=retry)
    with subscribed(bus, SUBSCRIPTIONS, GatewayHandlers(service, bus, results)):
        await bus.start()
        for event in events:
            await bus.publish(event)
        await bus.drain(timeout_s=20)
        await bus.stop()
    return bus


# -- routing --------------------------------------------------------------------------


def test_site_routes_parse_versions_labels_and_latest() -> None:
    routes = parse_site_routes("site-a=catdog:3, site-b=catdog:stable,site-c=other")
    assert routes == {
        "site-a": ModelRoute("catdog", version=3),
        "site-b": ModelRoute("catdog", label="stable"),
        "site-c": ModelRoute("other"),
    }
    assert parse_site_routes("") == {}


@pytest.mark.parametrize("text", ["site-a", "site-a=", "bad site=m", "a=m:1,a=m:2", "a=m:1:2", "a=bad name"])
def test_nonsense_routes_are_refused_with_the_reason(text: str) -> None:
    with pytest.raises(RouteConfigError):
        parse_site_routes(text)


def test_router_updates_a_site_at_run_time() -> None:
    router = ModelRouter(ModelRoute("base"), {"site-a": ModelRoute("base", version=1)})
    assert router.route_for("site-a") == ModelRoute("base", version=1)
    assert router.route_for("site-z") == ModelRoute("base")
    assert router.route_for(None) == ModelRoute("base")
    router.set_route("site-a", ModelRoute("base", version=2))
    router.set_route("site-z", ModelRoute.parse("other:canary"))
    assert router.route_for("site-a").version == 2
    assert router.route_for("site-z") == ModelRoute("other", label="canary")
    router.remove_route("site-a")
    assert router.route_for("site-a") == ModelRoute("base")


async def test_each_site_is_served_by_its_route() -> None:
    model = FakeModelClient()
    router = ModelRouter(ModelRoute("default-model"), {"site-b": ModelRoute("special", version=4)})
    service = make_service(model, router)
    a = await service.classify_bytes(jpeg_bytes(), site_id="site-a")
    b = await service.classify_bytes(jpeg_bytes(), site_id="site-b")
    await service.close()
    assert (a.model_name, a.model_version) == ("default-model", 7)
    assert (b.model_name, b.model_version) == ("special", 4)


# -- classification and mapping -----------------------------------------------------------


async def test_event_becomes_inference_completed_and_device_result(tmp_path: Path) -> None:
    model = FakeModelClient(version=12)
    image = jpeg_bytes()
    ref = store_blob(tmp_path, image)
    results = FakeResults()
    service = make_service(model)
    bus = await run_gateway(service, results, [image_event(ref, site="site-a", device="cam-1", sample_id="s-42")])
    await service.close()

    [completed] = bus.events_of(InferenceCompleted)
    assert isinstance(completed, InferenceCompleted)
    expected = model.scores_for(image)
    assert completed.sample_id == "s-42" and completed.device_id == "cam-1" and completed.site_id == "site-a"
    assert completed.image == ref
    assert (completed.model_name, completed.model_version) == ("edgeloop-classifier", 12)
    assert completed.scores == pytest.approx(expected)
    assert completed.top_label == max(expected, key=expected.__getitem__)
    assert completed.confidence == pytest.approx(max(expected.values()))
    assert completed.served_by == "cloud" and completed.hard_example is False and completed.quality == "ok"
    assert completed.latency_ms > 0
    assert set(completed.image_stats) == {
        "brightness_mean",
        "contrast_std",
        "sharpness_laplacian_var",
        "saturation_mean",
        "red_green_mean",
        "blue_yellow_mean",
        "width",
        "height",
    }
    assert (completed.image_stats["width"], completed.image_stats["height"]) == (64, 48)

    [(site, device, payload)] = results.sent
    assert (site, device) == ("site-a", "cam-1")
    result = json.loads(payload)
    assert result == json.loads(json.dumps(device_result(completed)))
    assert result["image_sha256"] == ref.sha256 and result["model_version"] == 12
    assert result["top_label"] == completed.top_label and result["scores"] == pytest.approx(expected)
    assert result["quality"] == "ok" and result["served_by"] == "cloud"


async def test_a_picture_an_edge_agent_answered_is_counted_not_classified_again(tmp_path: Path) -> None:
    model, results = FakeModelClient(), FakeResults()
    service = make_service(model)
    ref = store_blob(tmp_path, jpeg_bytes())
    events = [
        image_event(ref, device="cam-edge", sample_id="from-edge", ingress="edge"),
        image_event(ref, device="cam-cloud", sample_id="from-cloud", ingress="mqtt"),
    ]
    bus = await run_gateway(service, results, events)
    await service.close()

    assert [event.sample_id for event in bus.events_of(InferenceCompleted)] == ["from-cloud"]  # type: ignore[attr-defined]
    assert bus.dead_letters == [] and bus.stats.retried == 0
    assert [device for _, device, _ in results.sent] == ["cam-cloud"]
    assert model.calls == [(ModelRoute("edgeloop-classifier"), 1)]
    skipped = service.metrics.registry.get_sample_value("edgeloop_images_skipped_total", {"reason": "answered_at_edge"})
    assert skipped == 1.0


class EverythingIsHard:
    """A miner that would send every picture it is asked about to labeling."""

    def __init__(self) -> None:
        self.asked: list[dict[str, float]] = []

    def assess(self, scores: dict[str, float], image_stats: dict[str, float]) -> HardExampleVerdict:
        self.asked.append(image_stats)
        return HardExampleVerdict(hard=True, reason="every picture is hard")


async def test_a_night_frame_is_answered_too_dark_and_never_queued_for_labeling(
    tmp_path: Path, catdog_dir: Path
) -> None:
    night = sorted((catdog_dir / "black-frames").glob("*.jpg"))[0].read_bytes()  # a real camera's, at night
    day = sorted((catdog_dir / "captures").glob("*.jpg"))[0].read_bytes()
    model, miner, results = FakeModelClient(), EverythingIsHard(), FakeResults()
    service = make_service(model, miner=miner)
    events = [
        image_event(store_blob(tmp_path, night), device="cam-night", sample_id="night"),
        image_event(store_blob(tmp_path, day), device="cam-day", sample_id="day"),
    ]
    bus = await run_gateway(service, results, events)
    await service.close()

    completed = {event.sample_id: event for event in bus.events_of(InferenceCompleted)}
    assert isinstance(completed["night"], InferenceCompleted)
    assert completed["night"].quality == "too_dark"
    assert completed["night"].hard_example is False and completed["night"].hard_example_reason is None
    assert completed["night"].scores == pytest.approx(model.scores_for(night))  # the model's answer, for the record
    assert completed["night"].image_stats["brightness_mean"] < 0.03
    assert (completed["day"].quality, completed["day"].hard_example) == ("ok", True)  # the miner does work
    assert len(miner.asked) == 1  # it was asked about the photo only
    sent = {device: json.loads(payload) for _, device, payload in results.sent}
    assert (sent["cam-night"]["quality"], sent["cam-night"]["hard_example"]) == ("too_dark", False)
    assert sent["cam-night"]["top_label"] == completed["night"].top_label
    assert (sent["cam-day"]["quality"], sent["cam-day"]["hard_example"]) == ("ok", True)


async def test_inference_event_id_is_stable_per_image_event() -> None:
    assert inference_event_id("abc") == inference_event_id("abc")
    assert inference_event_id("abc") != inference_event_id("abd")


async def test_concurrent_classifications_share_model_calls() -> None:
    model = FakeModelClient(delay_s=0.02)
    service = make_service(model, max_batch_size=16, max_wait_ms=20.0, max_concurrent_batches=1)
    images = [jpeg_bytes((i * 20, 100, 50)) for i in range(10)]
    classified = await asyncio.gather(*(service.classify_bytes(image) for image in images))
    await service.close()
    assert [c.scores for c in classified] == [pytest.approx(model.scores_for(image)) for image in images]
    assert sum(size for _, size in model.calls) == 10
    assert len(model.calls) <= 2


async def test_one_undecodable_image_in_a_batch_does_not_fail_the_others() -> None:
    bad = jpeg_bytes((1, 2, 3))
    model = FakeModelClient(bad_images={bad})
    service = make_service(model, max_batch_size=8, max_wait_ms=20.0)
    good = [jpeg_bytes((i * 30, 10, 10)) for i in range(3)]
    results = await asyncio.gather(*(service.classify_bytes(image) for image in [*good, bad]), return_exceptions=True)
    await service.close()
    assert all(not isinstance(result, BaseException) for result in results[:3])
    assert "INVALID_ARGUMENT" in str(results[3])


async def test_scores_that_are_not_probabilities_are_refused() -> None:
    class LogitModel(FakeModelClient):
        async def classify(self, route: ModelRoute, images: object) -> BatchPrediction:
            return BatchPrediction(route.model_name, 1, [{"cat": 3.2, "dog": -1.0}])

    service = make_service(LogitModel())
    with pytest.raises(ModelResponseError, match="not a probability"):
        await service.classify_bytes(jpeg_bytes())
    await service.close()


async def test_not_an_image_is_refused_before_the_model_sees_it() -> None:
    model = FakeModelClient()
    service = make_service(model)
    with pytest.raises(InvalidImageError, match="JPEG or PNG"):
        await service.classify_bytes(b"GIF89a not really")
    await service.close()
    assert model.calls == []


# -- failures: retries, dead letters ---------------------------------------------------------


async def test_model_server_down_is_retried_then_dead_lettered_with_the_reason(tmp_path: Path) -> None:
    model = FakeModelClient(fail_with=model_server_down())
    ref = store_blob(tmp_path, jpeg_bytes())
    results = FakeResults()
    service = make_service(model)
    bus = await run_gateway(service, results, [image_event(ref, sample_id="s-1"), image_event(ref, sample_id="s-2")])
    await service.close()

    assert bus.events_of(InferenceCompleted) == []
    assert results.sent == []
    assert len(bus.dead_letters) == 2  # none lost: each event is in the dead-letter topic
    for dead in bus.dead_letters:
        assert dead.attempts == FAST_RETRY.max_attempts
        assert dead.error_type == "ModelServerUnavailableError"
        assert "unreachable" in dead.reason and dead.service == "inference-gateway"
        assert dead.device_id == "cam-1" and dead.site_id == "site-a"
    assert len(model.calls) == 2 * FAST_RETRY.max_attempts
    assert bus.stats.retried == 2 * (FAST_RETRY.max_attempts - 1)


async def test_model_server_back_within_the_bound_loses_nothing(tmp_path: Path) -> None:
    model = FakeModelClient(fail_with=model_server_down())
    ref = store_blob(tmp_path, jpeg_bytes())
    service = make_service(model)
    results = FakeResults()
    bus = InProcessBus(source="inference-gateway", retry=RetryPolicy(max_attempts=5, initial_backoff_s=0.05))
    with subscribed(bus, SUBSCRIPTIONS, GatewayHandlers(service, bus, results)):
        await bus.start()
        await bus.publish(image_event(ref))
        await asyncio.sleep(0.08)
        model.fail_with = None  # the model server comes back
        await bus.drain(timeout_s=10)
        await bus.stop()
    await service.close()
    assert len(bus.events_of(InferenceCompleted)) == 1 and bus.dead_letters == []
    assert len(results.sent) == 1


async def test_sha_mismatch_is_dead_lettered_at_once(tmp_path: Path) -> None:
    model = FakeModelClient()
    ref = store_blob(tmp_path, jpeg_bytes())
    tampered = BlobRef(sha256="0" * 64, uri=ref.uri, content_type=ref.content_type, size_bytes=ref.size_bytes)
    service = make_service(model)
    bus = await run_gateway(service, FakeResults(), [image_event(tampered)])
    await service.close()
    [dead] = bus.dead_letters
    assert isinstance(dead, DeadLetter)
    assert dead.attempts == 1 and dead.error_type == "BlobIntegrityError"
    assert "sha256" in dead.reason and ref.sha256 in dead.reason
    assert model.calls == []


async def test_missing_blob_and_corrupt_image_are_dead_lettered_with_reasons(tmp_path: Path) -> None:
    missing = store_blob(tmp_path, jpeg_bytes())
    remove_blob(missing)
    corrupt = store_blob(tmp_path, b"\xff\xd8\xff\xe0 this is not a JPEG at all")
    service = make_service(FakeModelClient())
    bus = await run_gateway(service, FakeResults(), [image_event(missing), image_event(corrupt)])
    await service.close()
    reasons = {dead.error_type: dead.reason for dead in bus.dead_letters}
    assert set(reasons) == {"BlobNotFoundError", "InvalidImageError"}
    assert "blob not found" in reasons["BlobNotFoundError"]
    assert "JPEG or PNG" in reasons["InvalidImageError"]
    assert all(dead.attempts == 1 for dead in bus.dead_letters)


async def test_unsupported_blob_uri_is_dead_lettered(tmp_path: Path) -> None:
    data = jpeg_bytes()
    ref = store_blob(tmp_path, data)
    s3 = BlobRef(sha256=ref.sha256, uri="s3://bucket/key", content_type="image/jpeg", size_bytes=len(data))
    service = make_service(FakeModelClient())
    bus = await run_gateway(service, FakeResults(), [image_event(s3)])
    await service.close()
    [dead] = bus.dead_letters
    assert dead.error_type == "UnsupportedBlobUriError" and "s3" in dead.reason


def test_model_unavailable_error_is_transient_and_no_domain_error_is_the_bus_s() -> None:
    from edgeloop_common.bus import PermanentError
    from edgeloop_common.serving import ModelServingError, UnclassifiableError
    from edgeloop_inference_gateway.ports import BlobIntegrityError, BlobUnavailableError, GatewayError

    assert not isinstance(ModelServerUnavailableError("x"), UnclassifiableError)
    assert not isinstance(BlobUnavailableError("x"), UnclassifiableError)
    assert isinstance(InvalidImageError("x"), UnclassifiableError) and isinstance(BlobIntegrityError("x"), GatewayError)
    assert not issubclass(GatewayError, PermanentError) and not issubclass(ModelServingError, PermanentError)
