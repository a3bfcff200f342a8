"""The edge agent's logic: a device's picture in, the device's answer out, and the record queued for the cloud.

I/O comes in as collaborators: the edge store (SQLite), the node group's model client (TF Serving REST/gRPC),
the site's canary (:class:`~edgeloop_edge.canary.CanaryWatcher`), the deep cloud model
(:class:`~edgeloop_edge.joint.CloudClassifier`), the site broker (results), the forwarder.
Pictures are accepted one at a time, in arrival order (the per-device sequence is the uplink's order), and
classified concurrently.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from edgeloop_common.device_messages import DeviceResult
from edgeloop_common.events import JointInference
from edgeloop_common.images import ImageFacts, InvalidImageError, inspect_image
from edgeloop_common.mining import HardExampleMiner, HardExampleVerdict
from edgeloop_common.mqtt_asyncio import ReceivedMessage
from edgeloop_common.serving import (
    ModelClient,
    ModelNotFoundError,
    ModelRoute,
    ModelServerUnavailableError,
    ModelServingError,
    UnclassifiableError,
)
from edgeloop_common.topics import MQTT_RESULT, mqtt_topic, parse_device_topic
from edgeloop_common.uplink import EdgeInference

from edgeloop_edge.canary import CanaryWatcher
from edgeloop_edge.joint import CloudClassifier
from edgeloop_edge.metrics import EdgeMetrics
from edgeloop_edge.settings import UplinkPolicy
from edgeloop_edge.store import Dropped, EdgeStore, Picture

log = logging.getLogger(__name__)

# Model-server failures are retried for as long as it takes: the picture is durable and the device waits.
MODEL_RETRY_FIRST_S = 0.2
MODEL_RETRY_MAX_S = 5.0
# How long a stop waits for answers under way (a device waiting on one gets it rather than a resend later).
STOP_GRACE_S = 5.0
_SCORE_TOLERANCE = 1e-4

SendResult = Callable[[str, bytes], Awaitable[None]]


@dataclass(frozen=True)
class AgentConfig:
    site_id: str
    route: ModelRoute
    uplink_policy: UplinkPolicy = "hard+sample"
    uplink_sample_rate: float = 0.05
    max_image_bytes: int = 20 * 1024 * 1024
    inference_concurrency: int = 4


@dataclass
class LastAnswer:
    """What the status page shows of the latest answer."""

    model_name: str
    model_version: int
    served_by: str
    at: datetime


class EdgeAgent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        store: EdgeStore,
        model_client: ModelClient,
        miner: HardExampleMiner,
        send_result: SendResult,
        metrics: EdgeMetrics,
        cloud: CloudClassifier | None = None,
        canary: CanaryWatcher | None = None,
        on_answered: Callable[[], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.model_client = model_client
        self.miner = miner
        self.send_result = send_result
        self.metrics = metrics
        self.cloud = cloud
        self.canary = canary
        self.on_answered = on_answered or (lambda: None)
        self.rng = rng or random.Random()
        self.last_answer: LastAnswer | None = None
        self._intake: asyncio.Queue[ReceivedMessage] = asyncio.Queue()
        self._inference_slots = asyncio.Semaphore(config.inference_concurrency)
        self._in_progress: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._intake_task: asyncio.Task[None] | None = None

    # -- life cycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Answer what was acknowledged before a stop and never answered, then take new pictures."""
        for picture in await asyncio.to_thread(self.store.unanswered):
            log.info("answering %s of %s, accepted before the last stop", picture.record_id, picture.device_id)
            self._spawn(self._answer_stored(picture))
        self._intake_task = asyncio.create_task(self._take_pictures(), name="edge-intake")

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Take no new pictures; let answers under way finish for ``grace_s``, then cancel the rest.

        A cancelled answer is not lost: its picture is durable and unanswered, and the next start answers it.
        """
        if self._intake_task is not None:
            self._intake_task.cancel()
            await asyncio.gather(self._intake_task, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def on_message(self, message: ReceivedMessage) -> None:
        """The MQTT driver's callback (on the event loop, in arrival order): queue it for acceptance."""
        self._intake.put_nowait(message)

    @property
    def waiting(self) -> int:
        return self._intake.qsize() + len(self._in_progress)

    # -- acceptance ----------------------------------------------------------------------------------------------

    async def _take_pictures(self) -> None:
        while True:
            message = await self._intake.get()
            try:
                await self._accept(message)
            except Exception:  # never stop taking pictures; this one stays unacknowledged and comes back
                log.exception("could not accept a picture on %s; the broker will send it again", message.topic)

    async def _accept(self, message: ReceivedMessage) -> None:
        where = parse_device_topic(message.topic)
        if where is None or where.kind != "image" or where.site_id != self.config.site_id:
            await self._reject(message, "unknown", f"not an image topic of site {self.config.site_id!r}")
            return
        if len(message.payload) > self.config.max_image_bytes:
            reason = f"picture of {len(message.payload)} bytes is over the limit of {self.config.max_image_bytes}"
            await self._reject(message, where.device_id, reason)
            return
        try:
            facts = await asyncio.to_thread(inspect_image, message.payload)
        except InvalidImageError as exc:
            await self._reject(message, where.device_id, f"not a JPEG or PNG picture: {exc}")
            return
        picture = await asyncio.to_thread(
            self.store.accept,
            device_id=where.device_id,
            mqtt_topic=message.topic,
            mqtt_packet_id=message.packet_id,
            image=message.payload,
            sha256=_sha256(message.payload),
            image_format=facts.format,
            width=facts.width,
            height=facts.height,
            redelivered=message.dup,
        )
        message.ack()  # durable at the edge: the broker may forget it
        if picture is None:
            self.metrics.pictures.labels(outcome="redelivered").inc()
            return
        self.metrics.pictures.labels(outcome="accepted").inc()
        self._spawn(self._answer(picture, facts, arrived=time.perf_counter()))

    async def _reject(self, message: ReceivedMessage, device_id: str, reason: str) -> None:
        """Not a picture the agent can answer: kept with the reason (GET /v1/rejected), acknowledged, counted."""
        log.warning("rejected a message on %s: %s", message.topic, reason)
        await asyncio.to_thread(
            self.store.reject,
            device_id=device_id,
            mqtt_topic=message.topic,
            size_bytes=len(message.payload),
            reason=reason,
        )
        message.ack()
        self.metrics.pictures.labels(outcome="rejected").inc()

    # -- answering -----------------------------------------------------------------------------------------------

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_stored(self, picture: Picture) -> None:
        assert picture.image is not None  # an unanswered picture keeps its bytes
        try:
            facts = await asyncio.to_thread(inspect_image, picture.image)
        except InvalidImageError as exc:  # it was checked before it was stored; the store was tampered with
            await asyncio.to_thread(self.store.give_up, picture, f"stored picture no longer decodes: {exc}")
            return
        await self._answer(picture, facts, arrived=time.perf_counter())

    async def _answer(self, picture: Picture, facts: ImageFacts, *, arrived: float) -> None:
        if picture.record_id in self._in_progress:
            return
        self._in_progress.add(picture.record_id)
        try:
            async with self._inference_slots:
                inference = await self._infer(picture, facts, arrived)
            if inference is None:
                return
            await self._send(picture, inference)
            keep_image = self._travels_with_picture(inference.hard_example)
            await asyncio.to_thread(self.store.answer, picture.record_id, inference, keep_image=keep_image)
            self.metrics.answers.labels(served_by=inference.served_by).inc()
            self.metrics.answer_latency.labels(served_by=inference.served_by).observe(time.perf_counter() - arrived)
            self.last_answer = LastAnswer(
                inference.model_name, inference.model_version, inference.served_by, inference.completed_at
            )
            self._count_drops(await asyncio.to_thread(self.store.enforce_bounds))
            self.on_answered()
        finally:
            self._in_progress.discard(picture.record_id)

    async def _infer(self, picture: Picture, facts: ImageFacts, arrived: float) -> EdgeInference | None:
        """The edge's answer, joint with the cloud's for a hard example; None when the picture was given up."""
        assert picture.image is not None
        edge_started = time.perf_counter()
        try:
            prediction = await self._classify_at_the_edge(picture.image, picture.record_id)
        except UnclassifiableError as exc:
            log.error("the model refused %s of %s: %s", picture.record_id, picture.device_id, exc)
            await asyncio.to_thread(self.store.give_up, picture, f"the model refused it: {exc}")
            self.metrics.pictures.labels(outcome="refused_by_model").inc()
            return None
        edge_latency_ms = (time.perf_counter() - edge_started) * 1000.0
        edge_scores = prediction.scores[0]
        verdict = self._verdict(edge_scores, facts)
        served = (prediction.model_name, prediction.model_version, edge_scores, "edge")
        joint: JointInference | None = None
        if verdict.hard and self.cloud is not None:
            answer = await self.cloud.classify(picture.image, site_id=self.config.site_id, device_id=picture.device_id)
            self.metrics.joint.labels(outcome=answer.outcome).inc()
            joint = JointInference(
                edge_model_name=prediction.model_name,
                edge_model_version=prediction.model_version,
                edge_scores=edge_scores,
                edge_latency_ms=edge_latency_ms,
                outcome=answer.outcome,
                cloud_model_name=answer.model_name,
                cloud_model_version=answer.model_version,
                cloud_scores=answer.scores,
                cloud_latency_ms=answer.latency_ms,
                detail=answer.detail,
            )
            if answer.outcome == "cloud" and answer.scores and answer.model_name and answer.model_version is not None:
                served = (answer.model_name, answer.model_version, answer.scores, "cloud")
        model_name, model_version, scores, served_by = served
        top_label = max(scores, key=lambda label: scores[label])
        return EdgeInference(
            model_name=model_name,
            model_version=model_version,
            scores=scores,
            top_label=top_label,
            confidence=min(1.0, max(0.0, scores[top_label])),
            latency_ms=(time.perf_counter() - arrived) * 1000.0,
            served_by=served_by,
            hard_example=verdict.hard,
            hard_example_reason=verdict.reason,
            image_stats=facts.stats,
            quality=facts.quality,
            joint=joint,
            completed_at=datetime.now(UTC),
        )

    async def _classify_at_the_edge(self, image: bytes, sample_id: str) -> _Prediction:
        """The site's canary's answer when the sample is in its share, else (or when the canary fails) the node
        group's model server's; an unavailable server is waited for (the picture is durable). The answer names the
        version that gave it: a stable answer to a sample in the canary's share is how the deployer sees a failure."""
        split = self.canary.split_for(sample_id) if self.canary is not None else None
        if split is not None:
            try:
                prediction = await self._predict(split.client, split.route, image)
            except (ModelServingError, UnclassifiableError) as exc:
                log.warning(
                    "canary %s at %s failed %s (%s); answered by the node group's server",
                    split.route,
                    split.canary.endpoint,
                    sample_id,
                    exc,
                )
                self.metrics.canary_samples.labels(outcome="canary_fallback").inc()
            else:
                self.metrics.canary_samples.labels(outcome="canary").inc()
                return prediction
        delay = MODEL_RETRY_FIRST_S
        while True:
            try:
                return await self._predict(self.model_client, self.config.route, image)
            except (ModelServerUnavailableError, ModelNotFoundError) as exc:
                kind = "unavailable" if isinstance(exc, ModelServerUnavailableError) else "not_found"
                self.metrics.model_errors.labels(kind=kind).inc()
                log.warning("the node group's model server cannot answer (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MODEL_RETRY_MAX_S)

    @staticmethod
    async def _predict(client: ModelClient, route: ModelRoute, image: bytes) -> _Prediction:
        batch = await client.classify(route, [image])
        if len(batch.scores) != 1 or not batch.scores[0]:
            raise UnclassifiableError(f"the model answered {len(batch.scores)} score rows for one picture")
        return _Prediction(batch.model_name, batch.model_version, [_checked(batch.scores[0])])

    def _verdict(self, scores: dict[str, float], facts: ImageFacts) -> HardExampleVerdict:
        if facts.quality != "ok":  # a picture with nothing to classify is never worth the cloud's time
            return HardExampleVerdict(hard=False)
        return self.miner.assess(scores, facts.stats)

    def _travels_with_picture(self, hard: bool) -> bool:
        policy = self.config.uplink_policy
        if policy == "all" or hard:
            return True
        if policy == "hard":
            return False
        return self.rng.random() < self.config.uplink_sample_rate

    async def _send(self, picture: Picture, inference: EdgeInference) -> None:
        result = DeviceResult(
            sample_id=picture.record_id,
            site_id=self.config.site_id,
            device_id=picture.device_id,
            image_sha256=picture.sha256,
            model_name=inference.model_name,
            model_version=inference.model_version,
            top_label=inference.top_label,
            confidence=inference.confidence,
            scores=inference.scores,
            latency_ms=round(inference.latency_ms, 3),
            served_by=inference.served_by,
            hard_example=inference.hard_example,
            quality=inference.quality,
            completed_at=inference.completed_at,
        )
        topic = mqtt_topic(MQTT_RESULT, site=self.config.site_id, device=picture.device_id)
        await self.send_result(topic, result.model_dump_json().encode())

    def _count_drops(self, dropped: Dropped) -> None:
        if not dropped:
            return
        log.warning(
            "uplink queue at its bound: %d pictures, %d records and %d hard-example records let go",
            dropped.pictures,
            dropped.records,
            dropped.hard_records,
        )
        for what, count in (
            ("picture", dropped.pictures),
            ("record", dropped.records),
            ("hard_record", dropped.hard_records),
        ):
            if count:
                self.metrics.uplink_dropped.labels(what=what).inc(count)


@dataclass(frozen=True)
class _Prediction:
    model_name: str
    model_version: int
    scores: list[dict[str, float]]


def _checked(scores: dict[str, float]) -> dict[str, float]:
    for label, score in scores.items():
        if not -_SCORE_TOLERANCE <= score <= 1.0 + _SCORE_TOLERANCE:
            raise UnclassifiableError(f"score {score} for {label!r} is not a probability")
    return {label: min(1.0, max(0.0, float(score))) for label, score in scores.items()}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
