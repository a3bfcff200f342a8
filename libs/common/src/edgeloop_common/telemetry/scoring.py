"""Scoring sensor readings with the failure model: one core for the cloud (gateway) and the edge (edge agent).

A reading goes into its device's rolling window (:class:`RawWindows`, ``features.DeviceWindows``' rules); once
the window is full every reading queues the window, whose features (``features.FEATURE_NAMES``) are computed with
its batch's, vectorised (:func:`batch_window_features`, the same figures as ``features.window_features``).
One batching task takes up to ``max_batch``
queued windows (of any devices, waiting at most ``max_wait_s`` for more once one is there), asks the model
server for them in one ``:predict`` per route, and hands the scored readings, in arrival order, to ``emit``
(the gateway publishes them on Kafka and MQTT; the edge agent queues them for its uplink and answers the device).
A second task runs ``emit`` so the next batch is predicted while the previous one is published.

* ``add`` never waits for a prediction: the bus hands readings to a handler one at a time, so awaiting each
  prediction would make every batch one reading long. It waits only while ``max_pending`` readings are queued
  (back-pressure: a model server that is down holds up consumption instead of filling memory).
* Delivery of scores is at most once: a crash loses the scores of the readings queued then (as it loses every
  device's window, which lives in memory: a restart refills each window over ``WINDOW_READINGS`` readings).
* A batch the model server cannot answer now is retried (backoff doubling to 5 s) until it answers; a batch it
  refuses (4xx) is dropped, counted and logged: no retry can change that.

Alerts (``MaintenanceAlert``): raised when a device's probability reaches the alert threshold while the device
is not in alert; the device stays in alert, raising nothing more, until its probability falls below
``threshold - hysteresis``, after which a new crossing alerts again. A ``failure`` or ``maintenance`` reading
forgets the device's window and its alert state (the repaired machine is a new one). ``TelemetryScored.alert``
says whether the device is in alert after this reading (probability at or above the threshold, or still within
the hysteresis band of an alert).

The threshold of a version: ``threshold_override`` when the deployment sets one (settings), else the version's
calibrated ``metrics.threshold`` in the registry (asked once per version, cached), else ``default_threshold``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import quote

import httpx
import numpy as np

from edgeloop_common.events import MaintenanceAlert, ServedBy, TelemetryScored, utc_now
from edgeloop_common.serving.errors import (
    ModelInputError,
    ModelNotFoundError,
    ModelResponseError,
    ModelServerUnavailableError,
)
from edgeloop_common.serving.route import ModelRoute
from edgeloop_common.telemetry.features import (
    FEATURE_NAMES,
    HORIZON_READINGS,
    SIGNALS,
    WINDOW_READINGS,
    features_dict,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "machine-failure"
FEATURES_INPUT = "features"
PROBABILITY_OUTPUT = "failure_probability"
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0


class TensorPredictor(Protocol):
    """A TF Serving API client that runs ``:predict`` on named tensors, given as arrays (``TfServingRestClient``,
    ``TfServingGrpcClient``)."""

    async def predict_tensors(self, route: ModelRoute, inputs: dict[str, Any]) -> tuple[int, Any]: ...


class ThresholdSource(Protocol):
    async def threshold(self, model_name: str, version: int) -> float | None:
        """The version's alert threshold, or None when it cannot be had now."""
        ...


@dataclass(frozen=True)
class ScoredReading:
    """One reading's score and, when it crossed the threshold, the alert."""

    scored: TelemetryScored
    alert: MaintenanceAlert | None


Emit = Callable[[Sequence[ScoredReading]], Awaitable[None]]


@dataclass(frozen=True)
class ScoringConfig:
    served_by: ServedBy
    max_batch: int = 256
    max_wait_s: float = 0.005
    max_pending: int = 8192
    hysteresis: float = 0.1
    default_threshold: float = 0.5
    threshold_override: float | None = None
    window: int = WINDOW_READINGS
    horizon: int = HORIZON_READINGS


@dataclass
class ScoringStats:
    """Counts for the services' metrics and the bench."""

    readings: int = 0
    scored: int = 0
    alerts: int = 0
    batches: int = 0
    refused: int = 0  # readings of batches the model refused
    retries: int = 0


@dataclass
class _Queued:
    site_id: str
    device_id: str
    measured_at: datetime
    # The window's readings ``(window, len(SIGNALS))`` until the batch computes its features (all of a batch's at
    # once); None: the machine broke down or was repaired, its alert state starts afresh.
    features: np.ndarray | None
    route: ModelRoute
    queued_at: float


class RegistryThresholds:
    """``metrics.threshold`` of a version in the registry (``GET /v1/models/{m}/versions/{v}``), cached per version;
    a failed lookup is asked again after ``retry_s``."""

    def __init__(
        self, base_url: str, *, timeout_s: float = 5.0, retry_s: float = 60.0, auth: httpx.Auth | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_s = retry_s
        self._http = httpx.AsyncClient(timeout=timeout_s, auth=auth)
        self._known: dict[tuple[str, int], float] = {}
        self._failed_at: dict[tuple[str, int], float] = {}

    async def threshold(self, model_name: str, version: int) -> float | None:
        key = (model_name, version)
        if key in self._known:
            return self._known[key]
        failed = self._failed_at.get(key)
        if failed is not None and time.monotonic() - failed < self.retry_s:
            return None
        value = await self._ask(model_name, version)
        if value is None:
            self._failed_at[key] = time.monotonic()
        else:
            self._known[key] = value
        return value

    async def _ask(self, model_name: str, version: int) -> float | None:
        url = f"{self.base_url}/v1/models/{quote(model_name, safe='')}/versions/{version}"
        try:
            response = await self._http.get(url)
        except httpx.HTTPError as exc:
            log.warning("registry unreachable for the threshold of %s:%d: %r", model_name, version, exc)
            return None
        if response.status_code != 200:
            log.warning("registry answered %d for %s:%d", response.status_code, model_name, version)
            return None
        try:
            raw = response.json().get("metrics", {}).get("threshold")
            value = float(raw)
        except (ValueError, TypeError, AttributeError):
            log.warning("version %s:%d has no numeric metrics.threshold in the registry", model_name, version)
            return None
        return value if 0.0 <= value <= 1.0 else None

    async def close(self) -> None:
        await self._http.aclose()


class NoThresholds:
    """No registry: the default (or the deployment's) threshold."""

    async def threshold(self, model_name: str, version: int) -> float | None:
        return None

    async def close(self) -> None:
        return None


class TelemetryScorer:
    def __init__(
        self,
        predictor: TensorPredictor,
        thresholds: ThresholdSource,
        config: ScoringConfig,
        *,
        route_for: Callable[[str], ModelRoute],
        emit: Emit,
        on_latency: Callable[[float], None] | None = None,
    ) -> None:
        """``on_latency``: called with each reading's seconds from ``add`` to its score (metrics, the bench)."""
        if config.max_batch < 1 or config.max_pending < config.max_batch:
            raise ValueError("max_batch >= 1 and max_pending >= max_batch")
        self.predictor = predictor
        self.thresholds = thresholds
        self.config = config
        self.route_for = route_for
        self.emit = emit
        self.on_latency = on_latency
        self.stats = ScoringStats()
        self.windows = RawWindows(config.window)
        self._in_alert: set[tuple[str, str]] = set()
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(maxsize=config.max_pending)
        self._scored: asyncio.Queue[list[ScoredReading]] = asyncio.Queue(maxsize=2)
        self._tasks: list[asyncio.Task[None]] = []
        self._unfinished = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._batches(), name="telemetry-scoring"),
            asyncio.create_task(self._emitting(), name="telemetry-emit"),
        ]

    async def close(self, *, drain_s: float = 5.0) -> None:
        """Score what is queued (for at most ``drain_s``), then stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drained(), drain_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def drained(self) -> None:
        """Return once every reading added so far was scored and emitted (tests, the bench)."""
        await self._idle.wait()

    @property
    def pending(self) -> int:
        return self._unfinished

    async def add(
        self,
        site_id: str,
        device_id: str,
        readings: Mapping[str, object],
        *,
        measured_at: datetime | None = None,
        machine_event: str | None = None,
    ) -> bool:
        """Add a reading to its device's window; True when the window is queued for scoring."""
        self.stats.readings += 1
        if machine_event is not None:
            # The machine broke down or was repaired: its next window starts afresh, and so does its alert state,
            # in order with the scores queued before (the batching task resets it when it reaches this reading).
            self.windows.forget(site_id, device_id)
            features = None
        else:
            features = self.windows.add(site_id, device_id, readings)
            if features is None:
                return False
        queued = _Queued(
            site_id, device_id, measured_at or utc_now(), features, self.route_for(site_id), time.perf_counter()
        )
        self._unfinished += 1
        self._idle.clear()
        await self._queue.put(queued)  # waits only when max_pending readings are queued
        return features is not None

    # -- the batching task -----------------------------------------------------------------------------------------

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.config.max_wait_s
            while len(batch) < self.config.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            try:
                scored = await self._score_batch(batch)
            except Exception:  # a bug must not stop scoring for good: logged, the batch's scores lost
                log.exception("could not score a batch of %d windows", len(batch))
                self._finish(len(batch))
                continue
            await self._scored.put(scored)

    async def _score_batch(self, batch: list[_Queued]) -> list[ScoredReading]:
        by_route: dict[ModelRoute, list[int]] = {}
        for index, item in enumerate(batch):
            if item.features is not None:
                by_route.setdefault(item.route, []).append(index)
        scored_items = [item for item in batch if item.features is not None]
        if scored_items:  # one vectorised computation for the whole batch (per reading it is most of the CPU)
            computed = batch_window_features(np.stack([item.features for item in scored_items]))  # type: ignore[misc]
            for item, features in zip(scored_items, computed, strict=True):
                item.features = features
        probabilities: list[tuple[str, int, float] | None] = [None] * len(batch)
        for route, indices in by_route.items():
            rows = [features for i in indices if (features := batch[i].features) is not None]
            answer = await self._predict(route, np.stack(rows))
            if answer is None:
                continue
            version, values = answer
            for i, probability in zip(indices, values, strict=True):
                probabilities[i] = (route.model_name, version, probability)
        thresholds: dict[tuple[str, int], float] = {}
        results: list[ScoredReading] = []
        now = time.perf_counter()
        resets = 0
        for item, scored in zip(batch, probabilities, strict=True):
            if item.features is None:
                self._in_alert.discard((item.site_id, item.device_id))
                resets += 1
                continue
            if scored is None:
                continue
            model_name, version, probability = scored
            if (model_name, version) not in thresholds:
                thresholds[(model_name, version)] = await self._threshold(model_name, version)
            results.append(self._reading(item, model_name, version, probability, thresholds[(model_name, version)]))
            if self.on_latency is not None:
                self.on_latency(now - item.queued_at)
        self.stats.batches += len(by_route)  # model calls
        self._finish(resets)
        return results

    async def _predict(self, route: ModelRoute, features: np.ndarray) -> tuple[int, list[float]] | None:
        delay = RETRY_FIRST_S
        while True:
            try:
                version, outputs = await self.predictor.predict_tensors(route, {FEATURES_INPUT: features})
                return version, _probabilities(outputs, expected=len(features))
            except (ModelServerUnavailableError, ModelNotFoundError) as exc:
                self.stats.retries += 1
                log.warning("model server cannot score %s now (%s); retrying in %.1fs", route, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            except (ModelResponseError, ModelInputError) as exc:  # not a failure model's answer, or a 4xx
                self._refused(route, len(features), exc)
                return None

    def _refused(self, route: ModelRoute, count: int, exc: Exception) -> None:
        self.stats.refused += count
        self._finish(count)
        log.error("model %s refused a batch of %d windows; their scores are lost: %s", route, count, exc)

    async def _threshold(self, model_name: str, version: int) -> float:
        if self.config.threshold_override is not None:
            return self.config.threshold_override
        value = await self.thresholds.threshold(model_name, version)
        return self.config.default_threshold if value is None else value

    def _reading(
        self, item: _Queued, model_name: str, version: int, probability: float, threshold: float
    ) -> ScoredReading:
        assert item.features is not None  # a reset marker is never scored
        key = (item.site_id, item.device_id)
        alert: MaintenanceAlert | None = None
        if probability >= threshold:
            if key not in self._in_alert:
                self._in_alert.add(key)
                alert = MaintenanceAlert(
                    device_id=item.device_id,
                    site_id=item.site_id,
                    measured_at=item.measured_at,
                    model_name=model_name,
                    model_version=version,
                    served_by=self.config.served_by,
                    failure_probability=probability,
                    threshold=threshold,
                    horizon_readings=self.config.horizon,
                )
        elif probability < threshold - self.config.hysteresis:
            self._in_alert.discard(key)  # re-armed: the next crossing alerts again
        scored = TelemetryScored(
            device_id=item.device_id,
            site_id=item.site_id,
            measured_at=item.measured_at,
            model_name=model_name,
            model_version=version,
            served_by=self.config.served_by,
            failure_probability=probability,
            threshold=threshold,
            alert=key in self._in_alert,
            window_readings=self.config.window,
            features=features_dict(item.features),
        )
        return ScoredReading(scored, alert)

    # -- the emitting task -----------------------------------------------------------------------------------------

    async def _emitting(self) -> None:
        while True:
            scored = await self._scored.get()
            try:
                if scored:
                    await self.emit(scored)
                    self.stats.scored += len(scored)
                    self.stats.alerts += sum(1 for reading in scored if reading.alert is not None)
            except Exception:  # logged; the scores of this batch are lost (at most once)
                log.exception("could not emit %d scored readings; they are lost", len(scored))
            finally:
                self._finish(len(scored))

    def _finish(self, count: int) -> None:
        self._unfinished -= count
        if self._unfinished <= 0:
            self._unfinished = 0
            self._idle.set()


class RawWindows:
    """Every device's last ``window`` readings as rows of ``SIGNALS`` values (``features.DeviceWindows``' rules:
    a missing or non-numeric value holds the signal's last one; a device is windowed once every signal has a value;
    the least recently heard of more than ``max_devices`` is forgotten), kept in a ring per device. ``add`` returns
    the window's rows, oldest first, once it is full; the features are computed later, a batch at a time
    (:func:`batch_window_features`), which is what makes thousands of readings a second affordable."""

    def __init__(self, window: int = WINDOW_READINGS, *, max_devices: int = 100_000) -> None:
        if window < 2 or max_devices < 1:
            raise ValueError("window >= 2 and max_devices >= 1")
        self.window = window
        self.max_devices = max_devices
        self._devices: OrderedDict[tuple[str, str], _Ring] = OrderedDict()

    def __len__(self) -> int:
        return len(self._devices)

    def add(self, site_id: str, device_id: str, readings: Mapping[str, object]) -> np.ndarray | None:
        key = (site_id, device_id)
        ring = self._devices.get(key)
        if ring is None:
            ring = self._devices[key] = _Ring(self.window)
            if len(self._devices) > self.max_devices:
                self._devices.popitem(last=False)
        else:
            self._devices.move_to_end(key)
        last = ring.last
        for index, signal in enumerate(SIGNALS):
            value = readings.get(signal)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                last[index] = float(value)
        if ring.missing and any(value is None for value in last):
            return None
        ring.missing = False
        ring.rows[ring.position] = last
        ring.position = (ring.position + 1) % self.window
        ring.count += 1
        if ring.count < self.window:
            return None
        return np.concatenate((ring.rows[ring.position :], ring.rows[: ring.position]))

    def forget(self, site_id: str, device_id: str) -> None:
        self._devices.pop((site_id, device_id), None)


class _Ring:
    __slots__ = ("count", "last", "missing", "position", "rows")

    def __init__(self, window: int) -> None:
        self.rows = np.empty((window, len(SIGNALS)), dtype=np.float64)
        self.last: list[float | None] = [None] * len(SIGNALS)
        self.missing = True
        self.position = 0
        self.count = 0


def batch_window_features(windows: np.ndarray) -> np.ndarray:
    """``features.window_features`` of many windows at once: ``(n, readings, len(SIGNALS))`` -> ``(n, 25)``
    float32, the same figures in the same order (``FEATURE_NAMES``)."""
    values = np.asarray(windows, dtype=np.float64)
    if values.ndim != 3 or values.shape[2] != len(SIGNALS) or values.shape[1] < 2:
        raise ValueError(f"windows are (n, readings >= 2, {len(SIGNALS)}) values, got {values.shape}")
    steps = np.arange(values.shape[1], dtype=np.float64)
    centred = steps - steps.mean()
    mean = values.mean(axis=1)
    slope = np.einsum("r,nrs->ns", centred, values - mean[:, None, :]) / (centred**2).sum()
    figures = np.stack([mean, values.std(axis=1), values.min(axis=1), values.max(axis=1), slope], axis=2)
    return figures.reshape(len(values), -1).astype(np.float32)  # (n, signal, statistic): signal-major


def _probabilities(outputs: Any, *, expected: int) -> list[float]:
    """``failure_probability`` of a columnar answer: the bare tensor (one output) or a dict of outputs."""
    if isinstance(outputs, dict):
        if PROBABILITY_OUTPUT not in outputs:
            raise ModelResponseError(f"predict response lacks {PROBABILITY_OUTPUT!r} ({sorted(outputs)})")
        outputs = outputs[PROBABILITY_OUTPUT]
    values = np.asarray(outputs, dtype=np.float64).reshape(-1)
    if values.size != expected:
        raise ModelResponseError(f"model returned {values.size} probabilities for {expected} windows")
    if not np.all(np.isfinite(values)) or values.min() < -1e-4 or values.max() > 1 + 1e-4:
        raise ModelResponseError("model returned values that are not probabilities")
    return [float(v) for v in np.clip(values, 0.0, 1.0)]


__all__ = [
    "DEFAULT_MODEL_NAME",
    "FEATURE_NAMES",
    "NoThresholds",
    "RegistryThresholds",
    "ScoredReading",
    "ScoringConfig",
    "TelemetryScorer",
    "TensorPredictor",
]
