"""The learning loop in standalone mode: the second act of ``edgeloop demo``.

Every service of the loop runs in this process around one in-process event bus, with SQLite and local folders
under ``<state>/loop/`` and the deployer's ``local`` target (it switches the lite model server's version):

1. the trainer trains a first version on part of the photos (the seed); the registry promotes it (there is no
   production version yet), the deployer rolls it out, the gateway serves it;
2. a camera sends photos as before, then photos under a new condition (by default sensor noise; any drift of
   :mod:`edgeloop.drifts`, or photos of the operator's own taken under a condition of their own);
3. the drift service compares the live statistics with the version's reference and raises DriftDetected;
4. a simulated labeler answers the alarm and labels the oldest hard examples of ingest's queue with their true
   class (it knows the photos; the newest other photos too if the queue is short); after enough new labels the
   trainer retrains (warm start);
5. the registry promotes the candidate only if it beats production on the same evaluation set; the deployer
   rolls it out; the camera's next photos are answered by the new version.

Each step is printed as it happens, from the events on the bus. The pieces that play the world around EdgeLoop
(:func:`split_photos`, :func:`send_photos`, :class:`SimulatedLabeler`) are also used by the end-to-end test of
the distributed path (tests/e2e).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from edgeloop.drifts import DEFAULT_DRIFT, Drift, parse_drift
from edgeloop.local_mqtt import LocalBroker
from edgeloop.narration import BusNarrator, Echo, Handler
from edgeloop.system import CONSOLE, DOCUMENTED_PORTS, System, SystemConfig, wait_ready

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


# -- photos ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    name: str
    label: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class LoopPhotos:
    """The photos of one scenario, each used once: a seed folder, a stream before the change, one after it."""

    seed_dir: Path  # <seed_dir>/<class>/<photo>: what the first version learns from (the trainer's seed data)
    before: tuple[Photo, ...]  # what the camera sees before the change
    after: tuple[Photo, ...]  # other photos, under the new condition: what it sees after
    change: str  # the change in words: "darker light (brightness x0.25)"
    expected_features: tuple[str, ...] | None  # image statistics the change should move; None: not known

    def label_of(self) -> dict[str, str]:
        """True class by sha256 of every photo the camera may send: what the simulated labeler knows."""
        return {photo.sha256: photo.label for photo in (*self.before, *self.after)}


def _shuffle_key(path: Path) -> str:
    """A fixed pseudo-random order of the photos, independent of the trainer's split (a hash of the bytes)."""
    return hashlib.sha256(b"edgeloop-closed-loop:" + path.read_bytes()).hexdigest()


def class_photos(train_dir: Path) -> dict[str, list[Path]]:
    """``train_dir/<class>/`` photos per class, classes sorted; ValueError if ``train_dir`` is no folder."""
    if not train_dir.is_dir():
        raise ValueError(f"{train_dir} is not a folder (one subfolder of photos per class expected)")
    classes = sorted(p for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {
        folder.name: [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        for folder in classes
    }


def drifted_photos(drifted_dir: Path, classes: Iterable[str]) -> dict[str, list[Path]]:
    """``drifted_dir/<class>/`` photos per class; every class folder must be a class of the data set."""
    by_class = {label: files for label, files in class_photos(drifted_dir).items() if files}
    unknown = sorted(set(by_class) - set(classes))
    if unknown:
        raise ValueError(
            f"{drifted_dir}: {', '.join(unknown)} is no class of the data set ({', '.join(sorted(classes))}); "
            "the class folders of the drifted photos must be among those of the data set"
        )
    if not by_class:
        raise ValueError(f"{drifted_dir} holds no class folder with photos (JPEG or PNG)")
    return by_class


def _alternating(by_class: dict[str, list[Path]]) -> list[Path]:
    """The photos of every class in their shuffled order, classes alternating: any prefix is balanced."""
    ordered = {label: sorted(files, key=_shuffle_key) for label, files in by_class.items()}
    longest = max(map(len, ordered.values()), default=0)
    return [ordered[label][index] for index in range(longest) for label in ordered if index < len(ordered[label])]


def split_photos(
    train_dir: Path,
    destination: Path,
    *,
    seed_per_class: int,
    before_count: int,
    after_count: int,
    drift: Drift | None = None,
    drifted_dir: Path | None = None,
) -> LoopPhotos:
    """Split ``train_dir/<class>/`` deterministically (by content hash) into seed, before and after photos.

    The seed photos are linked into ``destination/seed/<class>/``. The streams alternate the classes, so any
    prefix of them is balanced; no photo appears twice across the three parts. The after photos are other photos
    of the data set put through ``drift`` (default :data:`DEFAULT_DRIFT`) — or, with ``drifted_dir``, photos
    already under the new condition (``drifted_dir/<class>/``, classes of the data set), taken as they are.
    """
    by_class = {label: sorted(files, key=_shuffle_key) for label, files in class_photos(train_dir).items()}
    from_data_set = before_count + (0 if drifted_dir else after_count)
    needed = seed_per_class + math.ceil(from_data_set / max(1, len(by_class)))
    short = {label: len(files) for label, files in by_class.items() if len(files) < needed}
    if len(by_class) < 2 or short:
        raise ValueError(f"{train_dir} needs two or more class folders of {needed} photos each (short: {short})")
    seed_dir = destination / "seed"
    for label, files in by_class.items():
        (seed_dir / label).mkdir(parents=True, exist_ok=True)
        for path in files[:seed_per_class]:
            link = seed_dir / label / path.name
            if not link.exists():
                link.symlink_to(path.resolve())
    stream = _alternating({label: files[seed_per_class:] for label, files in by_class.items()})
    before = tuple(Photo(path.name, path.parent.name, path.read_bytes()) for path in stream[:before_count])
    if drifted_dir is not None:
        drifted = _alternating(drifted_photos(drifted_dir, by_class))
        if len(drifted) < after_count:
            raise ValueError(f"{drifted_dir} holds {len(drifted)} photos; {after_count} are needed")
        after = tuple(
            Photo(f"drifted-{path.name}", path.parent.name, path.read_bytes()) for path in drifted[:after_count]
        )
        change = f"photos of {drifted_dir} (a change brought by the operator)"
        return LoopPhotos(seed_dir, before, after, change, expected_features=None)
    drift = drift or parse_drift(DEFAULT_DRIFT)
    after = tuple(
        Photo(f"{drift.name}-{path.name}", path.parent.name, drift.apply(path.read_bytes()))
        for path in stream[before_count : before_count + after_count]
    )
    return LoopPhotos(seed_dir, before, after, drift.describe(), expected_features=drift.moves)


# -- the camera ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraResult:
    photo: Photo
    payload: dict[str, Any]  # the result JSON the gateway sent to the device

    @property
    def model_version(self) -> int | None:
        version = self.payload.get("model_version")
        return int(version) if version is not None else None

    @property
    def right(self) -> bool:
        return self.payload.get("top_label") == self.photo.label

    def describe(self) -> str:
        confidence = self.payload.get("confidence")
        figure = f"{confidence:.3f}" if isinstance(confidence, int | float) else "?"
        verdict = "right" if self.right else f"wrong, it is a {self.photo.label}"
        model = f"{self.payload.get('model_name')} v{self.model_version}"
        return f"{self.photo.name} -> {self.payload.get('top_label')} {figure} ({model}; {verdict})"


async def send_photos(
    photos: Iterable[Photo],
    *,
    site: str,
    device: str,
    model_name: str,
    mqtt_host: str,
    mqtt_port: int,
    rate: float = 20.0,
    timeout_s: float = 60.0,
) -> list[CameraResult]:
    """A camera at ``site`` publishes ``photos`` over MQTT (QoS 1, like ``edgeloop device simulate``) and waits
    for the result of each on its result topic, matched by ``image_sha256``.

    A broker may be shared (the tests' Mosquitto): other installations' gateways may see this camera's images and
    answer with their own model, so only results from ``model_name`` count.
    """
    from edgeloop_common import topics
    from edgeloop_common.mqtt_asyncio import AsyncMqttClient

    waiting: dict[str, list[Photo]] = {}
    results: list[CameraResult] = []
    all_in = asyncio.Event()
    expected = 0
    published = False  # every photo is out: a result may now be the last one

    def on_message(topic: str, payload: bytes) -> None:
        with contextlib.suppress(ValueError):
            result = json.loads(payload)
            pending = waiting.get(str(result.get("image_sha256")))
            if result.get("model_name") == model_name and pending:
                results.append(CameraResult(pending.pop(0), result))
                if published and len(results) == expected:
                    all_in.set()

    client_id = f"camera-{device}-{uuid.uuid4().hex[:6]}"
    client = AsyncMqttClient(mqtt_host, mqtt_port, client_id=client_id, on_message=on_message)
    await client.connect()
    try:
        await client.subscribe(topics.mqtt_topic(topics.MQTT_RESULT, site=site, device=device), qos=1)
        image_topic = topics.mqtt_topic(topics.MQTT_IMAGE, site=site, device=device)
        acks = []
        for photo in photos:
            waiting.setdefault(photo.sha256, []).append(photo)
            expected += 1
            acks.append(client.publish(image_topic, photo.data, qos=1))
            await asyncio.sleep(1.0 / rate)
        await asyncio.gather(*acks)
        published = True
        if len(results) == expected:
            all_in.set()
        try:
            async with asyncio.timeout(timeout_s):
                await all_in.wait()
        except TimeoutError:
            missing = [photo.name for pending in waiting.values() for photo in pending]
            raise TimeoutError(f"camera {device}@{site}: no result from {model_name} for {missing}") from None
    finally:
        await client.close()
    return results


# -- the labeler -----------------------------------------------------------------------------------------------


@dataclass
class SimulatedLabeler:
    """A person labeling hard examples from ingest's queue with their true class (known from the photo).

    A site's queue may also hold samples of other devices (a shared broker); the labeler takes only those of
    ``devices``, and fails on one of them it does not recognise.
    """

    ingest_url: str
    label_of: dict[str, str]  # sha256 -> true class
    site: str
    devices: frozenset[str]
    name: str = "labeler"
    labeled: list[str] = field(default_factory=list)  # sample ids
    labeled_sha256: set[str] = field(default_factory=set)
    topped_up: int = 0  # labels given to samples that were not in the queue (see label_queue)

    async def queue(self, client: httpx.AsyncClient) -> list[dict[str, Any]]:
        """The site's labeling queue, oldest first, only this labeler's devices."""
        params: dict[str, Any] = {"site_id": self.site, "limit": 1000}
        response = await client.get(f"{self.ingest_url}/v1/labeling/queue", params=params)
        response.raise_for_status()
        return [sample for sample in response.json()["samples"] if sample["device_id"] in self.devices]

    async def unlabeled(self, client: httpx.AsyncClient) -> list[dict[str, Any]]:
        """Every unlabeled sample of this labeler's devices at the site, newest first."""
        samples: list[dict[str, Any]] = []
        for device in sorted(self.devices):
            params: dict[str, Any] = {"site_id": self.site, "device_id": device, "labeled": "false", "limit": 1000}
            response = await client.get(f"{self.ingest_url}/v1/samples", params=params)
            response.raise_for_status()
            samples.extend(response.json()["samples"])
        return sorted(samples, key=lambda sample: str(sample["received_at"]), reverse=True)

    async def label_queue(self, *, limit: int, batch: bool = True, top_up: bool = False) -> int:
        """Label the ``limit`` oldest samples waiting in the queue; return how many.

        ``batch``: in one ``POST /v1/labels`` (the console's "label selected"), else one ``PUT`` per sample.
        ``top_up``: when the queue holds fewer than ``limit`` (a model sure of itself mines few hard examples),
        label the newest other unlabeled samples of the devices too, as a person answering a drift alarm looks
        at the latest pictures: ``limit`` labels in all, as many as there are samples.
        """
        async with httpx.AsyncClient(timeout=30.0) as client:
            chosen = (await self.queue(client))[:limit]
            if top_up and len(chosen) < limit:
                queued = {sample["sample_id"] for sample in chosen}
                others = [sample for sample in await self.unlabeled(client) if sample["sample_id"] not in queued]
                self.topped_up += min(len(others), limit - len(chosen))
                chosen += others[: limit - len(chosen)]
            labels = [self._true_label(sample) for sample in chosen]
            if batch and labels:
                body = {"labels": labels, "labeled_by": self.name}
                response = await client.post(f"{self.ingest_url}/v1/labels", json=body)
                if response.status_code != 200 or response.json().get("errors"):
                    raise RuntimeError(f"batch labeling: HTTP {response.status_code} {response.text[:500]}")
            else:
                for item in labels:
                    response = await client.put(
                        f"{self.ingest_url}/v1/samples/{item['sample_id']}/label",
                        json={"label": item["label"], "labeled_by": self.name},
                    )
                    if response.status_code != 200:
                        raise RuntimeError(f"labeling {item}: HTTP {response.status_code} {response.text}")
            self.labeled.extend(item["sample_id"] for item in labels)
            self.labeled_sha256.update(sample["sha256"] for sample in chosen)
        return len(labels)

    def _true_label(self, sample: dict[str, Any]) -> dict[str, str]:
        label = self.label_of.get(sample["sha256"])
        if label is None:
            raise RuntimeError(f"a sample of the labeler's devices is not one of the known photos: {sample}")
        return {"sample_id": sample["sample_id"], "label": label}


async def wait_until(
    probe: Callable[[], Awaitable[Any]], what: str, *, timeout_s: float, interval_s: float = 0.25
) -> Any:
    """Poll ``probe`` until it returns something truthy; TimeoutError naming ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what} (last seen: {last!r})")
        await asyncio.sleep(interval_s)


# -- the standalone loop ---------------------------------------------------------------------------------------


MIN_WINDOW = 10  # the drift service's smallest window: the least of each stream
MIN_SEED_PER_CLASS = 8
MIN_LABELS = 8
UNLABELED_LEFT = 4  # photos after the change that the labels leave, to show the new version on


@dataclass(frozen=True)
class LoopScenario:
    """Sizes and thresholds of the loop; the defaults are those the end-to-end test is tuned with (cat/dog).

    :meth:`fitted_to` fits the sizes to another data set; the demo and the end-to-end test both use it.
    """

    model_name: str = "edgeloop-classifier"
    site: str = "site-a"
    device: str = "cam-1"
    backbone: str = "efficientnet-lite0"  # the trainer's recipe (edgeloop_trainer.recipe)
    image_size: int | None = None  # None: the backbone's own
    epochs: int | None = None  # the first version, from scratch (None: the backbone's default)
    incremental_epochs: int | None = None  # each warm-started version (None: the backbone's default)
    incremental_learning_rate: float | None = None
    new_sample_weight: int = 3  # a warm start sees each new label this many times: a few dozen among the seed
    seed: int = 42
    seed_per_class: int = 60
    before_photos: int = 24  # the camera before the change: more than one drift window
    after_photos: int = 160  # after it
    # The trainer retrains after this many new labels; the labeler labels this many: every hard example first,
    # then the newest other photos (a pretrained model is sure of most photos even after the change, and the
    # evaluation set needs enough photos of the new condition for the promotion gate to see it).
    labels_per_training: int = 96
    drift: str = DEFAULT_DRIFT  # what changes (edgeloop.drifts), unless drifted_images
    drifted_images: Path | None = None  # <dir>/<class>/ photos already under a new condition: the after stream
    drift_window: int = 20
    drift_check_every: int = 5
    promotion_margin: float = 0.02
    rate: float = 25.0
    photos_shown: int = 8  # results printed one by one once the new version serves

    def parsed_drift(self) -> Drift | None:
        """The transform of the after photos; None when they come from ``drifted_images``."""
        return None if self.drifted_images is not None else parse_drift(self.drift)

    def fitted_to(self, train_dir: Path) -> LoopScenario:
        """The sizes fitted to the data set ``train_dir/<class>/`` (and to ``drifted_images``).

        A data set large enough keeps them (the cat/dog set does). A smaller one, or one of more classes, gets the
        same proportions scaled down to its smallest class, each stream at least one drift window
        (:data:`MIN_WINDOW`) and the seed at least :data:`MIN_SEED_PER_CLASS` per class; ``drifted_images``
        gives the after stream (at most ``after_photos`` of them). The drift window shrinks to the shorter
        stream, the labels in proportion to the streams (leaving a few after photos unlabeled to show the new
        version on). ValueError saying what is missing when the photos are too few for a loop.
        """
        parse_drift(self.drift)  # a bad spec fails before anything is done
        counts = {label: len(files) for label, files in class_photos(train_dir).items()}
        if len(counts) < 2 or min(counts.values()) == 0:
            raise ValueError(f"{train_dir} needs two or more class folders of photos (found {counts or 'none'})")
        classes, smallest = len(counts), min(counts.values())
        after = self.after_photos
        if self.drifted_images is not None:
            available = sum(map(len, drifted_photos(self.drifted_images, counts).values()))
            if available < MIN_WINDOW:
                raise ValueError(
                    f"{self.drifted_images} holds {available} photos: the loop needs at least {MIN_WINDOW} "
                    "(a drift window)"
                )
            after = min(after, available)

        def per_class(before: int, after: int) -> int:
            """Photos of each class the streams take from the data set."""
            return math.ceil((before + (0 if self.drifted_images is not None else after)) / classes)

        seed, before = self.seed_per_class, self.before_photos
        if smallest < seed + per_class(before, after):
            scale = smallest / (seed + per_class(before, after))
            before = max(MIN_WINDOW, int(before * scale))
            if self.drifted_images is None:
                after = max(MIN_WINDOW, int(after * scale))
                if smallest - per_class(before, after) < MIN_SEED_PER_CLASS:
                    # The streams' floors took the seed's share: shorten the after stream (never below a window).
                    after = max(MIN_WINDOW, (smallest - MIN_SEED_PER_CLASS) * classes - before)
            seed = min(max(MIN_SEED_PER_CLASS, int(seed * scale)), smallest - per_class(before, after))
            if seed < MIN_SEED_PER_CLASS:
                least = MIN_SEED_PER_CLASS + per_class(MIN_WINDOW, MIN_WINDOW)
                raise ValueError(
                    f"{train_dir}: {smallest} photos in its smallest class; the loop needs at least {least} per "
                    f"class ({MIN_SEED_PER_CLASS} to train the first version on, the rest for the camera)"
                )
        streamed = before + after
        labels = round(self.labels_per_training * streamed / (self.before_photos + self.after_photos))
        labels = max(MIN_LABELS, min(labels, streamed - UNLABELED_LEFT))
        window = max(MIN_WINDOW, min(self.drift_window, before, after))
        return replace(
            self,
            seed_per_class=seed,
            before_photos=before,
            after_photos=after,
            labels_per_training=labels,
            drift_window=window,
        )

    def describe_sizes(self) -> str:
        return (
            f"seed {self.seed_per_class} photos per class, {self.before_photos} before the change, "
            f"{self.after_photos} after, {self.labels_per_training} labels per training, drift window "
            f"{self.drift_window}"
        )


class _Narrator(BusNarrator):
    """Prints the loop's steps as their events pass on the bus."""

    group = "demo-narrator"

    def __init__(self, echo: Echo, started: float) -> None:
        super().__init__(echo, started)
        self.drift_alarms = 0
        self.alarmed: dict[str, set[str]] = {}  # feature -> the tests that alarmed on it
        self.labels = 0
        self.deployments: list[Any] = []
        self.changed = asyncio.Event()

    def handlers(self) -> list[tuple[type[Any], Handler]]:
        from edgeloop_common.events import (
            DeploymentUpdated,
            DriftDetected,
            ModelPromoted,
            ModelRegistered,
            SampleLabeled,
            TrainingRequested,
        )

        return [
            (DriftDetected, self._drift),
            (TrainingRequested, self._training),
            (ModelRegistered, self._registered),
            (ModelPromoted, self._promoted),
            (DeploymentUpdated, self._deployment),
            (SampleLabeled, self._labeled),
        ]

    async def _drift(self, event: Any, context: Any) -> None:
        self.drift_alarms += 1
        self.alarmed.setdefault(event.feature, set()).add(event.test)
        if self.drift_alarms == 1:
            self.say(
                "drift",
                f"DriftDetected on {event.model_name} v{event.model_version} at {event.site_id}: {event.test} of "
                f"{event.feature} {event.statistic:.3g} > {event.threshold:.3g} (window of {event.window_size})",
            )

    async def _training(self, event: Any, context: Any) -> None:
        detail = f": {event.detail}" if event.detail else ""
        self.say("trainer", f"TrainingRequested ({event.reason} by {event.requested_by}{detail})")

    async def _registered(self, event: Any, context: Any) -> None:
        metrics = event.metrics
        baseline = metrics.get("baseline") or {}
        versus = (
            f", production v{baseline['version']} {baseline['accuracy']:.3f} on the same evaluation set"
            if baseline
            else ""
        )
        self.say("registry", f"ModelRegistered version {event.version}: accuracy {metrics['accuracy']:.3f}{versus}")

    async def _promoted(self, event: Any, context: Any) -> None:
        self.say("registry", f"ModelPromoted version {event.version} to {event.alias} ({event.reason})")

    async def _deployment(self, event: Any, context: Any) -> None:
        self.deployments.append(event)
        self.changed.set()
        if event.phase in ("ready", "failed", "rolled_back"):
            self.say(
                "deployer",
                f"DeploymentUpdated {event.node_group}: {event.phase}, version {event.actual_version} ({event.reason})",
            )

    async def _labeled(self, event: Any, context: Any) -> None:
        self.labels += 1

    async def wait_deployed(self, version: int, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not any(d.phase == "ready" and d.actual_version == version for d in self.deployments):
                self.changed.clear()
                await self.changed.wait()


@dataclass
class _LoopServices:
    """The loop's services in this process (:class:`edgeloop.system.System`) around one in-process bus."""

    scenario: LoopScenario
    home: Path
    seed_dir: Path
    broker: LocalBroker
    console_token: str | None = None  # the web console too, signed in with this token
    system: System = field(init=False)

    def __post_init__(self) -> None:
        from edgeloop_common.bus.inprocess import InProcessBus

        scenario = self.scenario
        protocol = "5" if self.broker.kind == "mosquitto" else "3.1.1"  # the embedded broker speaks 3.1.1 only
        self.system = System(
            SystemConfig(
                model_name=scenario.model_name,
                model_base=self.home / "models",
                common=lambda service: self.common(),
                bus=InProcessBus(source="edgeloop-demo-loop"),
                ports=DOCUMENTED_PORTS,
                settings={
                    "registry": {"promotion_margin": scenario.promotion_margin},
                    "ingest": {"mqtt_session_expiry_s": 60, "mqtt_protocol": protocol},
                    "inference-gateway": {"mqtt_protocol": protocol},
                    "drift": {
                        "window_size": scenario.drift_window,
                        "check_every": scenario.drift_check_every,
                        "reference_retry_s": 1.0,
                        # The labeler answers the alarm and the trainer retrains on the new labels: a training
                        # requested by the alarm itself would start before any photo of the new condition has a label.
                        "request_training": False,
                    },
                    "trainer": {
                        "seed_data_dir": self.seed_dir,
                        "data_dir": self.home / "trainer",
                        "retrain_every_labels": scenario.labels_per_training,
                        "backbone": scenario.backbone,
                        "epochs": scenario.epochs,
                        "incremental_epochs": scenario.incremental_epochs,
                        "incremental_learning_rate": scenario.incremental_learning_rate,
                        "new_sample_weight": scenario.new_sample_weight,
                        "image_size": scenario.image_size,
                        "seed": scenario.seed,
                    },
                    "deployer": {
                        "target": "local",
                        "node_groups": scenario.site,
                        "rollout_timeout_s": 60,
                        "poll_interval_s": 0.25,
                    },
                    CONSOLE: {"admin_token": self.console_token or ""},
                },
            )
        )

    @property
    def urls(self) -> dict[str, str]:
        return self.system.urls

    @property
    def bus(self) -> Any:
        return self.system.config.bus

    async def start(self, narrator: _Narrator) -> None:
        narrator.subscribe(self.bus)
        await self.system.start_model_server()
        await self.bus.start()
        # No version exists before the first training: the gateway is waited for only until it is alive.
        await self.system.start(wait_for_model=False)
        if self.console_token is not None:
            await self.system.start([CONSOLE])

    async def stop(self) -> None:
        await self.system.stop()
        await self.bus.stop()

    @property
    def model_base(self) -> Path:
        return self.home / "models"

    def common(self) -> Any:
        from edgeloop_common.settings import CommonSettings

        return CommonSettings(
            mode="standalone", data_dir=self.home / "data", mqtt_host=self.broker.host, mqtt_port=self.broker.port
        )


def console_sign_in(token: str) -> str:
    """How to sign in to the demo's console, as printed: the token made for this run; never one the operator set
    in EDGELOOP_CONSOLE_ADMIN_TOKEN (a secret)."""
    if token == os.environ.get("EDGELOOP_CONSOLE_ADMIN_TOKEN"):
        return "the token in EDGELOOP_CONSOLE_ADMIN_TOKEN"
    return f"the token {token}"


@dataclass(frozen=True)
class LoopOutcome:
    promoted: bool
    served_version: int | None
    drift_detected: bool = True


async def run_learning_loop(
    scenario: LoopScenario,
    train_dir: Path,
    home: Path,
    broker: LocalBroker,
    stop: asyncio.Event,
    echo: Echo,
    *,
    keep_running: bool = False,
    console_token: str | None = None,
) -> LoopOutcome | None:
    """Play the loop once, from a cold start under ``home`` (wiped first). None if ``stop`` was set meanwhile.

    ``keep_running``: afterwards, leave the services up until ``stop`` (to look at their HTTP APIs).
    """
    scenario, photos = await asyncio.to_thread(_prepare, scenario, train_dir, home)
    classes = sorted(class_photos(train_dir))
    echo(f"loop:  data set {train_dir}: {len(classes)} classes ({', '.join(classes)}); {scenario.describe_sizes()}")
    echo(f"loop:  the change: {photos.change}")
    _quiet_service_warnings()  # the narrator tells what they would warn about (drift, no version yet)
    narrator = _Narrator(echo, time.monotonic())
    services = _LoopServices(scenario, home, photos.seed_dir, broker, console_token)
    await services.start(narrator)
    try:
        echo(
            f"loop:  registry {services.urls['registry']}, trainer {services.urls['trainer']}, drift "
            f"{services.urls['drift']}, deployer {services.urls['deployer']} (local target), ingest, gateway and "
            f"model server around one in-process bus; SQLite and folders in {home}"
        )
        if CONSOLE in services.urls:
            echo(f"loop:  console {services.urls[CONSOLE]} (sign in with {console_sign_in(console_token or '')})")
        steps = _LoopSteps(scenario, services, narrator, photos, echo)
        outcome = await _unless_stopped(steps.play(), stop)
        if keep_running and not stop.is_set():
            registry = services.urls["registry"]
            console = f", or open the console at {services.urls[CONSOLE]}" if CONSOLE in services.urls else ""
            echo(
                f"loop:  services keep running; try curl {registry}/v1/models/{scenario.model_name}/versions{console}"
                " — Ctrl-C stops"
            )
            await stop.wait()
        return outcome
    finally:
        await services.stop()


def _prepare(scenario: LoopScenario, train_dir: Path, home: Path) -> tuple[LoopScenario, LoopPhotos]:
    """A cold start: an empty ``home`` and the photos split for the scenario (fitted to the data set)."""
    scenario = scenario.fitted_to(train_dir)
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    photos = split_photos(
        train_dir,
        home / "photos",
        seed_per_class=scenario.seed_per_class,
        before_count=scenario.before_photos,
        after_count=scenario.after_photos,
        drift=scenario.parsed_drift(),
        drifted_dir=scenario.drifted_images,
    )
    return scenario, photos


async def _unless_stopped(play: Awaitable[LoopOutcome], stop: asyncio.Event) -> LoopOutcome | None:
    playing = asyncio.ensure_future(play)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({playing, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not playing.done():
        playing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await playing
        return None
    return playing.result()


@dataclass
class _LoopSteps:
    scenario: LoopScenario
    services: _LoopServices
    narrator: _Narrator
    photos: LoopPhotos
    echo: Echo

    async def play(self) -> LoopOutcome:
        scenario, say = self.scenario, self.narrator.say
        say("trainer", f"first training of {scenario.model_name} on {self.photos.seed_dir} (the seed photos)")
        first = await self._train_by_hand()
        await self._deployed(first["version"])

        before = await self._camera(self.photos.before)
        say("camera", f"{len(before)} photos before the change: {_tally(before)}")
        say("camera", f"the pictures change: {self.photos.change}: {len(self.photos.after)} photos")
        after = await self._camera(self.photos.after)
        say("camera", f"photos after the change: {_tally(after)}")
        say(
            "camera",
            f"version {first['version']} was right on {sum(r.right for r in before)} of {len(before)} photos before "
            f"the change ({_share(before)}) and on {sum(r.right for r in after)} of {len(after)} after it "
            f"({_share(after)}); none of them is in its training set",
        )
        stream = await self._drift_checked(first["version"], len(before) + len(after))
        try:
            await wait_until(self._drift_raised, "a drift alarm", timeout_s=5)
        except TimeoutError:
            say(
                "drift",
                f"no alarm: the {len(after)} photos after the change moved no statistic beyond its sampling noise "
                f"(window of {stream['window_size']}; closest: {_closest(stream)}); nothing calls for labels"
                + ("; more photos after the change would give the tests more power" if len(after) < 20 else ""),
            )
            return LoopOutcome(promoted=False, served_version=first["version"], drift_detected=False)

        await self._predictions_stored(len(before) + len(after))
        say("drift", self._alarms_text())
        labeler = SimulatedLabeler(
            self.services.urls["ingest"],
            self.photos.label_of(),
            scenario.site,
            devices=frozenset({scenario.device}),
            name="demo-labeler",
        )
        async with httpx.AsyncClient(timeout=30) as http:
            queued = len(await labeler.queue(http))
        labeled = await labeler.label_queue(limit=scenario.labels_per_training, top_up=True)
        extra = f", and {labeler.topped_up} of the newest other photos" if labeler.topped_up else ""
        say(
            "labeler",
            f"labeled {labeled - labeler.topped_up} of the {queued} hard examples waiting in the queue{extra} "
            "(their true class)",
        )

        run = await self._wait_for_run(_finished_after_labels)
        if run["state"] != "succeeded":
            raise RuntimeError(f"the training after the new labels failed: {run['error']}")
        result = run["result"]
        if not result["promotion"]["promoted"]:
            say("registry", f"version {result['version']} NOT promoted: {result['promotion']['decision']}")
            # What it would have answered: the refused candidate on the same photos, straight from the model server.
            unseen = [photo for photo in self.photos.after if photo.sha256 not in labeler.labeled_sha256]
            earlier = {r.photo.sha256: r for r in after}
            candidate_right = await self._right_by_version(result["version"], unseen)
            was_right = [earlier[photo.sha256] for photo in unseen]
            say(
                "camera",
                f"the {len(unseen)} photos after the change that no one labeled: version {result['version']} (not "
                f"promoted) would have been right on {candidate_right} ({_ratio(candidate_right, len(unseen))}), "
                f"version {first['version']} was right on {sum(r.right for r in was_right)} ({_share(was_right)})",
            )
            return LoopOutcome(promoted=False, served_version=first["version"])
        await self._deployed(result["version"])

        # The photos after the change that no one labeled: the new version never saw them.
        unseen = [photo for photo in self.photos.after if photo.sha256 not in labeler.labeled_sha256]
        which = "that no one labeled"
        if not unseen:  # a short stream, every photo of it labeled: show the new version on some all the same
            unseen, which = list(self.photos.after[: scenario.photos_shown]), "(all of them labeled)"
        earlier = {r.photo.sha256: r for r in after}
        answers = await self._camera(unseen)
        for answer in answers[: scenario.photos_shown]:
            was = earlier[answer.photo.sha256]
            self.echo(f"result: {answer.describe()}   (v{was.model_version} said {was.payload.get('top_label')})")
        was_right = [earlier[r.photo.sha256] for r in answers]
        say(
            "camera",
            f"the {len(answers)} photos after the change {which}: version {result['version']} right on "
            f"{sum(r.right for r in answers)} ({_share(answers)}), version {first['version']} was right on "
            f"{sum(r.right for r in was_right)} ({_share(was_right)})",
        )
        return LoopOutcome(promoted=True, served_version=result["version"])

    # -- steps ----------------------------------------------------------------------------------------------------

    async def _train_by_hand(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.services.urls["trainer"], timeout=30) as http:
            response = await http.post(
                "/v1/trainings",
                json={"model_name": self.scenario.model_name, "reason": "manual", "requested_by": "demo"},
            )
            response.raise_for_status()
        run_id = response.json()["run_id"]
        run = await self._wait_for_run(lambda r: r["run_id"] == run_id and r["state"] in ("succeeded", "failed"))
        if run["state"] != "succeeded":
            raise RuntimeError(f"the first training failed: {run['error']}")
        return dict(run["result"])

    async def _right_by_version(self, version: int, photos: Sequence[Photo]) -> int:
        """How many of ``photos`` one version answers right, asked through TF Serving's REST API (any version)."""
        right = 0
        url = f"/v1/models/{self.scenario.model_name}/versions/{version}"
        async with httpx.AsyncClient(base_url=self.services.urls["model-server"], timeout=120) as http:

            async def available() -> bool:  # the server loads a new version on its own poll: seconds
                response = await http.get(url)
                states = [status["state"] for status in response.json().get("model_version_status", [])]
                return response.status_code == 200 and states == ["AVAILABLE"]

            await wait_until(available, f"the model server to load version {version}", timeout_s=120)
            for start in range(0, len(photos), 32):
                batch = photos[start : start + 32]
                body = {"instances": [{"b64": base64.b64encode(photo.data).decode("ascii")} for photo in batch]}
                response = await http.post(f"{url}:predict", json=body)
                response.raise_for_status()
                for photo, answer in zip(batch, response.json()["predictions"], strict=True):
                    scores, classes = answer["scores"], answer["classes"]
                    right += classes[max(range(len(scores)), key=scores.__getitem__)] == photo.label
        return right

    async def _wait_for_run(self, finished: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Follow the trainer's runs (each new stage printed) until one matches ``finished``."""
        shown: set[tuple[str, str]] = set()

        async def probe() -> dict[str, Any] | None:
            async with httpx.AsyncClient(base_url=self.services.urls["trainer"], timeout=30) as http:
                runs = (await http.get("/v1/trainings", params={"model_name": self.scenario.model_name})).json()
            for run in runs["trainings"]:
                if finished(run):
                    return dict(run)
                stage = (run.get("progress") or {}).get("stage")
                if run["state"] == "running" and stage and (run["run_id"], stage) not in shown:
                    shown.add((run["run_id"], stage))
                    self.narrator.say("trainer", f"run {run['run_id']}: {_progress_text(run['progress'])}")
            return None

        return dict(await wait_until(probe, "the training run", timeout_s=1800, interval_s=0.5))

    async def _deployed(self, version: int) -> None:
        await self.narrator.wait_deployed(version, timeout_s=120)

        async def routed() -> bool:
            async with httpx.AsyncClient(base_url=self.services.urls["inference-gateway"], timeout=10) as http:
                routes = (await http.get("/v1/routes")).json()
            return bool(routes["sites"].get(self.scenario.site) == f"{self.scenario.model_name}:{version}")

        await wait_until(routed, f"the gateway to serve version {version}", timeout_s=60)
        await wait_ready(f"{self.services.urls['inference-gateway']}/readyz", "inference gateway", timeout_s=60)
        self.narrator.say("gateway", f"{self.scenario.site} is served by {self.scenario.model_name} v{version}")

    async def _camera(self, photos: Iterable[Photo]) -> list[CameraResult]:
        return await send_photos(
            photos,
            site=self.scenario.site,
            device=self.scenario.device,
            model_name=self.scenario.model_name,
            mqtt_host=self.services.broker.host,
            mqtt_port=self.services.broker.port,
            rate=self.scenario.rate,
            timeout_s=120,
        )

    def _alarms_text(self) -> str:
        alarmed = self.narrator.alarmed
        text = "alarms on " + ", ".join(f"{feature} ({'+'.join(sorted(tests))})" for feature, tests in alarmed.items())
        expected = self.photos.expected_features
        if expected is None:
            return text
        seen = [feature for feature in expected if feature in alarmed]
        if seen:
            return f"{text}; the change was expected to move {', '.join(expected)}: seen"
        return f"{text}; NOT on {', '.join(expected)}, which the change was expected to move"

    async def _drift_checked(self, version: int, samples: int) -> dict[str, Any]:
        """The drift service's view of the site's stream once it has seen ``samples`` predictions of ``version``."""

        async def checked() -> dict[str, Any] | None:
            params = {"model_name": self.scenario.model_name, "site_id": self.scenario.site}
            async with httpx.AsyncClient(base_url=self.services.urls["drift"], timeout=30) as http:
                view = (await http.get("/v1/drift", params=params)).json()
            for stream in view["streams"]:
                if stream["model_version"] == version and stream["samples_seen"] >= samples:
                    return dict(stream)
            return None

        return dict(await wait_until(checked, f"the drift service to see {samples} predictions", timeout_s=60))

    async def _drift_raised(self) -> bool:
        return self.narrator.drift_alarms > 0

    async def _predictions_stored(self, count: int) -> None:
        """Ingest keeps the gateway's prediction and hard-example verdict on each sample (from its events)."""

        async def stored() -> bool:
            async with httpx.AsyncClient(base_url=self.services.urls["ingest"], timeout=30) as http:
                params: dict[str, Any] = {"device_id": self.scenario.device, "limit": 1000}
                page = (await http.get("/v1/samples", params=params)).json()
            return sum(1 for sample in page["samples"] if sample.get("predicted_label")) >= count

        await wait_until(stored, "ingest to store every prediction", timeout_s=60)


def _quiet_service_warnings() -> None:
    import logging

    for name in ("edgeloop_drift.service", "edgeloop_model_server.service"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)  # readiness probes that connect and leave


def _finished_after_labels(run: dict[str, Any]) -> bool:
    reasons = {request["reason"] for request in run["requests"]}
    return run["state"] in ("succeeded", "failed") and "new_labels" in reasons


def _closest(stream: dict[str, Any]) -> str:
    """The comparison of the last check nearest to its threshold, e.g. ``psi of contrast_std 2.1 / 3.5``."""
    comparisons = [
        (
            entry["statistic"] / entry["threshold"],
            f"{test} of {feature} {entry['statistic']:.3g} / {entry['threshold']:.3g}",
        )
        for feature, tests in stream.get("statistics", {}).items()
        for test, entry in tests.items()
        if entry.get("threshold")
    ]
    return max(comparisons)[1] if comparisons else "no comparison yet"


def _share(results: Sequence[CameraResult]) -> str:
    return _ratio(sum(r.right for r in results), len(results))


def _ratio(right: int, total: int) -> str:
    return f"{right / total:.0%}" if total else "none"


def _tally(results: list[CameraResult]) -> str:
    versions = sorted({r.model_version for r in results if r.model_version is not None})
    return (
        f"answered by version {', '.join(map(str, versions))}, {sum(r.right for r in results)} of {len(results)} right"
    )


def _progress_text(progress: dict[str, Any]) -> str:
    epochs = f" ({progress['epochs']} epochs)" if progress.get("stage") == "training" and progress.get("epochs") else ""
    message = f": {progress['message']}" if progress.get("message") else ""
    return f"{progress['stage']}{epochs}{message}"
