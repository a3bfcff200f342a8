"""The shared telemetry scorer's logic (edgeloop_common.telemetry.scoring) with a fake model server: batching,
alerts with hysteresis, machine events, thresholds, refusals. The real model server: the gateway's and the edge
agent's telemetry tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from edgeloop_common.serving import ModelInputError, ModelRoute, ModelServerUnavailableError
from edgeloop_common.telemetry.features import SIGNALS, DeviceWindows
from edgeloop_common.telemetry.scoring import (
    NoThresholds,
    RawWindows,
    ScoredReading,
    ScoringConfig,
    TelemetryScorer,
    batch_window_features,
)

ROUTE = ModelRoute("machine-failure")


class FakeModel:
    """Answers each window's probability as its last temperature (window of 2: mean + slope / 2)."""

    def __init__(self, version: int = 3) -> None:
        self.version = version
        self.calls: list[int] = []
        self.fail_next: list[Exception] = []

    async def predict_tensors(self, route: ModelRoute, inputs: dict[str, Any]) -> tuple[int, Any]:
        if self.fail_next:
            raise self.fail_next.pop(0)
        rows = np.asarray(inputs["features"])
        self.calls.append(len(rows))
        await asyncio.sleep(0.001)
        return self.version, {"failure_probability": (rows[:, 0] + rows[:, 4] / 2).tolist()}


class FixedThresholds:
    def __init__(self, value: float | None) -> None:
        self.value = value

    async def threshold(self, model_name: str, version: int) -> float | None:
        return self.value


def reading(temperature: float) -> dict[str, float]:
    return {signal: temperature if signal == "temperature_c" else 1.0 for signal in SIGNALS}


async def scored_of(
    feed: Sequence[tuple[str, float | str]],
    *,
    model: FakeModel | None = None,
    thresholds: Any = None,
    **config: Any,
) -> tuple[list[ScoredReading], TelemetryScorer]:
    out: list[ScoredReading] = []

    async def emit(batch: Sequence[ScoredReading]) -> None:
        out.extend(batch)

    values = {"served_by": "edge", "window": 2, "default_threshold": 0.5, "hysteresis": 0.1} | config
    scorer = TelemetryScorer(
        model or FakeModel(),
        thresholds or NoThresholds(),
        ScoringConfig(**values),
        route_for=lambda _site: ROUTE,
        emit=emit,
    )
    scorer.start()
    for device, value in feed:
        if isinstance(value, str):
            await scorer.add("s", device, reading(0.0), machine_event=value)
        else:
            await scorer.add("s", device, reading(value))
    await asyncio.wait_for(scorer.drained(), 5)
    await scorer.close()
    return out, scorer


async def test_an_alert_on_the_crossing_and_again_only_after_the_probability_fell_below_the_band() -> None:
    probabilities = [0.1, 0.3, 0.6, 0.7, 0.45, 0.8, 0.35, 0.2, 0.9, 0.95]
    out, _ = await scored_of([("m1", p) for p in probabilities])

    assert [round(r.scored.failure_probability, 6) for r in out] == probabilities[1:]  # the first fills the window
    alerts = [r for r in out if r.alert is not None]
    # 0.6 crosses; 0.45 is within the band (> 0.5 - 0.1): 0.8 raises nothing; 0.35 re-arms; 0.9 alerts again.
    assert [round(a.alert.failure_probability, 6) for a in alerts if a.alert] == [0.6, 0.9]
    assert [r.scored.alert for r in out] == [False, True, True, True, True, False, False, True, True]
    assert all(a.alert and a.alert.served_by == "edge" and a.alert.model_version == 3 for a in alerts)


async def test_windows_of_many_devices_go_to_the_model_in_batches_in_order() -> None:
    model = FakeModel()
    feed = [(f"m{device}", 0.01 * step) for step in range(4) for device in range(300)]
    out, scorer = await scored_of(feed, model=model, max_batch=128, max_wait_s=0.01)

    assert len(out) == 900 and sum(model.calls) == 900
    assert max(model.calls) <= 128 and len(model.calls) < 900 / 8  # batched, not one call per window
    taken = [r.scored.measured_at for r in out]  # stamped when each reading was added
    assert taken == sorted(taken)  # emitted in the order the readings came
    assert scorer.stats.scored == 900 and scorer.stats.readings == 1200


async def test_a_machine_event_starts_the_window_and_the_alert_state_afresh() -> None:
    out, _ = await scored_of([("m1", 0.2), ("m1", 0.9), ("m1", "failure"), ("m1", 0.9), ("m1", 0.95)])

    assert [round(r.scored.failure_probability, 6) for r in out] == [0.9, 0.95]
    assert [r.alert is not None for r in out] == [True, True]  # the repaired machine alerts anew


async def test_the_deployments_threshold_wins_then_the_registered_one_then_the_default() -> None:
    feed = [("m1", 0.1), ("m1", 0.75)]
    override, _ = await scored_of(feed, thresholds=FixedThresholds(0.9), threshold_override=0.7)
    registered, _ = await scored_of(feed, thresholds=FixedThresholds(0.8))
    default, _ = await scored_of(feed, thresholds=FixedThresholds(None), default_threshold=0.6)

    assert [(r.scored.threshold, r.alert is not None) for r in override + registered + default] == [
        (0.7, True),
        (0.8, False),
        (0.6, True),
    ]


async def test_a_refused_batch_is_counted_and_lost_and_an_unavailable_server_is_waited_for() -> None:
    model = FakeModel()
    model.fail_next = [ModelServerUnavailableError("restarting"), ModelInputError("bad input")]
    out, scorer = await scored_of([("m1", 0.1), ("m1", 0.2), ("m1", 0.3)], model=model, max_wait_s=0.0)

    assert scorer.stats.retries == 1 and scorer.stats.refused >= 1
    assert len(out) + scorer.stats.refused == 2


def test_the_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        TelemetryScorer(
            FakeModel(),
            NoThresholds(),
            ScoringConfig(served_by="cloud", max_batch=100, max_pending=10),
            route_for=lambda _site: ROUTE,
            emit=lambda _batch: asyncio.sleep(0),
        )


def test_the_scorers_windows_and_batched_features_are_the_documented_features() -> None:
    """RawWindows + batch_window_features == DeviceWindows (window_features), readings with gaps included."""
    rng = np.random.default_rng(3)
    reference, raw = DeviceWindows(), RawWindows()
    expected, windows = [], []
    for step in range(400):
        device = f"m{step % 7}"
        values: dict[str, object] = {signal: float(rng.normal(50, 10)) for signal in SIGNALS}
        if rng.random() < 0.1:
            values[SIGNALS[int(rng.integers(len(SIGNALS)))]] = rng.choice(["n/a", None, True, float("nan")])
        if step == 100:
            reference.forget("s", "m2")
            raw.forget("s", "m2")
        one, other = reference.add("s", device, values), raw.add("s", device, values)
        assert (one is None) == (other is None)
        if one is not None and other is not None:
            expected.append(one)
            windows.append(other)
    assert len(expected) > 100
    np.testing.assert_allclose(batch_window_features(np.stack(windows)), np.stack(expected), rtol=1e-6, atol=1e-5)
