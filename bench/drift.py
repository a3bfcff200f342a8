"""The drift tests' cost per update, detection delay after an injected shift, and false alarms on stationary data.

Everything runs with the drift service's defaults (``edgeloop_drift.settings.Settings``; override them with the
usual ``EDGELOOP_DRIFT_*`` variables to try others), on the service's own detector code:

1. cost per update
   * ADWIN (river) on 1/0 correctness, through the service's :class:`AccuracyMonitor`;
   * the windowed PSI/KS tests: adding one sample's features to the window, the cost of one check
     (every feature, both tests), and the two amortized per sample (check / check_every);
   * the whole service path for one InferenceCompleted (features, window, checks), for reference.
2. detection delay after an injected shift, over ``--trials`` independent trials:
   * ADWIN: accuracy 0.9 -> 0.6 after ``--warmup`` labels;
   * windowed brightness test (PSI or KS, whichever first): ``brightness_mean`` drawn like the cat/dog photos'
     (Beta with mean 0.446, sd 0.122, as the gateway measures them), reference of ``--reference-size`` values
     drawn independently, then the images darkened by ``--darken`` (0.5: half the light, as the darkened photos
     of the closed loop; their measured mean is 0.222).
   Delay = samples after the shift until the first alarm.
3. false alarms over ``--stationary`` samples with no shift, over ``--runs`` runs (independent references):
   every check over its threshold counts (no debounce: the raw test).

Targets (issue 5): online update <= 10 us; an alarm within 100 samples of the shift (here: in 95% of trials;
the worst trial is printed too); no false alarm over 100,000 stationary samples (in every run).

    .venv/bin/python bench/drift.py
    .venv/bin/python bench/drift.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import numpy as np
from edgeloop_common.events import BlobRef, InferenceCompleted
from edgeloop_common.reference_stats import ReferenceStats, compute_reference_stats, sample_features
from edgeloop_drift.app import drift_policy, window_config
from edgeloop_drift.concept import AccuracyMonitor
from edgeloop_drift.service import DriftService
from edgeloop_drift.settings import Settings
from edgeloop_drift.windows import PreparedReference, StreamWindow, WindowConfig

# brightness_mean of the cat/dog training photos as the gateway measures them: mean 0.446, sd 0.122.
BRIGHTNESS_MEAN, BRIGHTNESS_SD = 0.446, 0.122
ONLINE_TARGET_US = 10.0
DELAY_TARGET = 100


def beta_params(mean: float, sd: float) -> tuple[float, float]:
    common = mean * (1 - mean) / sd**2 - 1
    return mean * common, (1 - mean) * common


BRIGHTNESS_AB = beta_params(BRIGHTNESS_MEAN, BRIGHTNESS_SD)


@dataclass(frozen=True)
class DelayFigures:
    delays: list[int | None]

    def detected(self) -> list[int]:
        return sorted(delay for delay in self.delays if delay is not None)

    def summary(self) -> str:
        found = self.detected()
        missed = len(self.delays) - len(found)
        if not found:
            return f"no alarm in {len(self.delays)} trials"
        within = sum(delay <= DELAY_TARGET for delay in found)
        return (
            f"median {np.median(found):.0f}, p95 {self.p95():.0f}, max {found[-1]} samples; "
            f"{within}/{len(self.delays)} trials within {DELAY_TARGET}" + (f", {missed} missed" if missed else "")
        )

    def p95(self) -> float:
        values = [delay if delay is not None else 10**9 for delay in self.delays]
        return float(np.percentile(values, 95, method="higher"))

    def passes(self) -> bool:
        return self.p95() <= DELAY_TARGET


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def per_call_us(action: Callable[[], object], calls: int, rounds: int = 5) -> float:
    """Microseconds per call, the best of ``rounds`` rounds (the machine is shared: the best round is the one
    least disturbed by other work)."""
    best = float("inf")
    per_round = max(1, calls // rounds)
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(per_round):
            action()
        best = min(best, (time.perf_counter() - started) / per_round)
    return best * 1e6


# --- ADWIN on correctness ---------------------------------------------------------------------------------


def adwin_cost_us(settings: Settings, updates: int) -> float:
    rng = np.random.default_rng(1)
    outcomes = iter((rng.random(updates) < 0.9).tolist())
    monitor = AccuracyMonitor(1, delta=settings.adwin_delta, clock=settings.adwin_clock)
    return per_call_us(lambda: monitor.add(next(outcomes)), updates)


def adwin_delay(settings: Settings, *, trials: int, warmup: int, before: float, after: float) -> DelayFigures:
    delays: list[int | None] = []
    for trial in range(trials):
        rng = np.random.default_rng(10_000 + trial)
        monitor = AccuracyMonitor(1, delta=settings.adwin_delta, clock=settings.adwin_clock)
        for correct in (rng.random(warmup) < before).tolist():
            monitor.add(correct)
        delay = None
        for index, correct in enumerate((rng.random(2000) < after).tolist(), start=1):
            if monitor.add(correct) is not None:
                delay = index
                break
        delays.append(delay)
    return DelayFigures(delays)


def adwin_false_alarms(settings: Settings, *, runs: int, samples: int, accuracy: float) -> list[int]:
    counts = []
    for run in range(runs):
        rng = np.random.default_rng(20_000 + run)
        monitor = AccuracyMonitor(1, delta=settings.adwin_delta, clock=settings.adwin_clock)
        counts.append(sum(monitor.add(correct) is not None for correct in (rng.random(samples) < accuracy).tolist()))
    return counts


# --- the windowed brightness test -------------------------------------------------------------------------


def brightness(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.beta(*BRIGHTNESS_AB, size=size)


def brightness_reference(config: WindowConfig, rng: np.random.Generator, size: int) -> PreparedReference:
    return PreparedReference.build(
        {"brightness_mean": brightness(rng, size).tolist()}, config, source="registry", size=size
    )


def first_alarm(window: StreamWindow, reference: PreparedReference, values: np.ndarray) -> int | None:
    """1-based index of the value after which a check first found drift; None if none did."""
    for index, value in enumerate(values.tolist(), start=1):
        window.add({"brightness_mean": value})
        if window.check_due() and any(outcome.drifted for outcome in window.compare(reference)):
            return index
    return None


def brightness_delay(config: WindowConfig, *, trials: int, darken: float, reference_size: int) -> DelayFigures:
    delays: list[int | None] = []
    for trial in range(trials):
        rng = np.random.default_rng(30_000 + trial)
        reference = brightness_reference(config, rng, reference_size)
        window = StreamWindow(config)
        warmup = config.window_size * 5 + int(rng.integers(0, config.check_every))  # shift at any check phase
        if first_alarm(window, reference, brightness(rng, warmup)) is not None:
            delays.append(None)  # a false alarm before the shift: count the trial as failed
            continue
        delays.append(first_alarm(window, reference, brightness(rng, 2000) * darken))
    return DelayFigures(delays)


def brightness_false_alarms(
    config: WindowConfig, *, runs: int, samples: int, reference_size: int
) -> list[tuple[int, int, float, float]]:
    """Per run: checks over threshold for PSI, for KS, the largest PSI / threshold and the smallest KS p-value."""
    results = []
    for run in range(runs):
        rng = np.random.default_rng(40_000 + run)
        reference = brightness_reference(config, rng, reference_size)
        window = StreamWindow(config)
        psi_alarms = ks_alarms = 0
        worst_psi_ratio, smallest_p = 0.0, 1.0
        for value in brightness(rng, samples).tolist():
            window.add({"brightness_mean": value})
            if not window.check_due():
                continue
            for outcome in window.compare(reference):
                if outcome.test == "psi":
                    psi_alarms += outcome.drifted
                    worst_psi_ratio = max(worst_psi_ratio, outcome.statistic / outcome.threshold)
                else:
                    ks_alarms += outcome.drifted
                    smallest_p = min(smallest_p, outcome.p_value or 1.0)
        results.append((psi_alarms, ks_alarms, worst_psi_ratio, smallest_p))
    return results


# --- costs of the windowed tests and of the whole service path ----------------------------------------------


def synthetic_predictions(rng: np.random.Generator, size: int) -> list[dict[str, Any]]:
    """Records like the gateway's: two classes, confidence, the eight image statistics (the default features)."""
    cat = rng.beta(2.0, 2.0, size)
    light = brightness(rng, size)
    return [
        {
            "scores": {"cat": float(c), "dog": float(1 - c)},
            "confidence": float(max(c, 1 - c)),
            "image_stats": {
                "brightness_mean": float(b),
                "contrast_std": float(rng.normal(0.22, 0.058)),
                "sharpness_laplacian_var": float(rng.gamma(2.0, 0.0075)),
                "width": 500.0,
                "height": float(rng.choice([375.0, 333.0, 500.0])),
                "saturation_mean": float(rng.beta(3.0, 6.0)),
                "red_green_mean": float(rng.normal(0.02, 0.03)),
                "blue_yellow_mean": float(rng.normal(-0.05, 0.04)),
            },
        }
        for c, b in zip(cat, light, strict=True)
    ]


def window_costs(config: WindowConfig, samples: int) -> tuple[float, float, int]:
    """(us to add one sample's features, us per check of every feature, features compared)."""
    rng = np.random.default_rng(5)
    records = synthetic_predictions(rng, config.window_size * 5 + samples)
    stats = ReferenceStats.model_validate(compute_reference_stats(records[:1000]))
    reference = PreparedReference.build(stats.features, config, source="registry", size=stats.n)
    features = [sample_features(record["scores"], record["confidence"], record["image_stats"]) for record in records]
    window = StreamWindow(config)
    for values in features[: config.window_size]:
        window.add(values)
    live = iter(features[config.window_size :])
    add_us = per_call_us(lambda: window.add(next(live)), samples)
    check_us = per_call_us(lambda: window.compare(reference), max(50, samples // config.check_every))
    return add_us, check_us, len(reference.features)


class FixedReferences:
    def __init__(self, stats: ReferenceStats) -> None:
        self.stats = stats

    async def reference_stats(self, model_name: str, version: int) -> ReferenceStats | None:
        return self.stats


def prediction_events(settings: Settings, samples: int, seed: int) -> tuple[DriftService, list[InferenceCompleted]]:
    """A service whose reference is 1,000 synthetic predictions, and ``samples`` more from the same distribution."""
    rng = np.random.default_rng(seed)
    records = synthetic_predictions(rng, 1000 + samples)
    stats = ReferenceStats.model_validate(compute_reference_stats(records[:1000]))
    policy = replace(drift_policy(settings), debounce=timedelta(0))  # count every check over its threshold
    service = DriftService(window_config(settings), FixedReferences(stats), policy=policy)
    blob = BlobRef(sha256="0" * 64, uri="file:///dev/null", content_type="image/jpeg", size_bytes=1)
    events = [
        InferenceCompleted(
            sample_id=f"s{index}",
            device_id="cam-1",
            site_id="site-a",
            image=blob,
            model_name="bench",
            model_version=1,
            scores=record["scores"],
            top_label="cat",
            confidence=record["confidence"],
            latency_ms=1.0,
            image_stats=record["image_stats"],
        )
        for index, record in enumerate(records[1000:])
    ]
    return service, events


def service_cost_us(settings: Settings, samples: int) -> float:
    service, events = prediction_events(settings, samples, seed=6)

    async def run() -> float:
        started = time.perf_counter()
        for event in events:
            await service.observe_inference(event)
        return (time.perf_counter() - started) / len(events) * 1e6

    return asyncio.run(run())


def service_false_alarms(settings: Settings, samples: int, seed: int) -> dict[str, int]:
    """Alarms per test:feature when every feature of stationary predictions goes through the service."""
    service, events = prediction_events(settings, samples, seed=seed)

    async def run() -> dict[str, int]:
        found: dict[str, int] = {}
        for event in events:
            for drift in (await service.observe_inference(event)).drift:
                found[f"{drift.test}:{drift.feature}"] = found.get(f"{drift.test}:{drift.feature}", 0) + 1
        return found

    return asyncio.run(run())


# --- report -------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200, help="Trials per detection-delay figure.")
    parser.add_argument("--runs", type=int, default=5, help="Stationary runs per false-alarm figure.")
    parser.add_argument("--stationary", type=int, default=100_000, help="Samples per stationary run.")
    parser.add_argument("--warmup", type=int, default=2000, help="Labels before the accuracy drop.")
    parser.add_argument("--darken", type=float, default=0.5, help="Brightness factor of the shift.")
    parser.add_argument("--reference-size", type=int, default=1000, help="Reference values of brightness_mean.")
    parser.add_argument("--quick", action="store_true", help="Fewer trials and runs (a smoke run).")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.runs = 40, 1

    settings = Settings()
    config = window_config(settings)
    print(
        f"defaults: window {config.window_size}, check every {config.check_every}, PSI > {config.psi_threshold} "
        f"({config.psi_bins} bins, noise alpha {config.psi_noise_alpha:g}), KS p < {config.ks_alpha:g}, "
        f"ADWIN delta {settings.adwin_delta:g} clock {settings.adwin_clock}"
    )
    verdicts: list[bool] = []

    print("\n1. cost per update")
    adwin_us = adwin_cost_us(settings, 200_000)
    verdicts.append(adwin_us <= ONLINE_TARGET_US)
    print(f"   ADWIN update (river, via AccuracyMonitor):      {adwin_us:6.2f} us   {verdict(verdicts[-1])}")
    add_us, check_us, features = window_costs(config, 20_000)
    amortized = add_us + check_us / config.check_every
    verdicts.append(amortized <= ONLINE_TARGET_US)
    print(f"   window add, one sample ({features} features):        {add_us:6.2f} us")
    print(f"   one check, {features} features x (PSI + KS):          {check_us:6.1f} us")
    print(f"   windowed PSI/KS amortized per sample:           {amortized:6.2f} us   {verdict(verdicts[-1])}")
    print(f"   whole service path per InferenceCompleted:     {service_cost_us(settings, 20_000):6.2f} us")

    print(f"\n2. detection delay after an injected shift (target: within {DELAY_TARGET} samples in 95% of trials)")
    adwin = adwin_delay(settings, trials=args.trials, warmup=args.warmup, before=0.9, after=0.6)
    verdicts.append(adwin.passes())
    print(f"   ADWIN, accuracy 0.9 -> 0.6: {adwin.summary()}   {verdict(verdicts[-1])}")
    light = brightness_delay(config, trials=args.trials, darken=args.darken, reference_size=args.reference_size)
    verdicts.append(light.passes())
    print(
        f"   brightness x{args.darken} (reference {args.reference_size}): {light.summary()}   {verdict(verdicts[-1])}"
    )
    for darken in (0.7, 0.8):
        milder = brightness_delay(
            config, trials=max(20, args.trials // 4), darken=darken, reference_size=args.reference_size
        )
        print(f"   (for information) brightness x{darken}: {milder.summary()}")
    small = brightness_delay(config, trials=max(20, args.trials // 4), darken=args.darken, reference_size=100)
    print(f"   (for information) brightness x{args.darken}, reference of 100: {small.summary()}")

    print(f"\n3. false alarms over {args.stationary:,} stationary samples, {args.runs} runs (target: none)")
    adwin_alarms = adwin_false_alarms(settings, runs=args.runs, samples=args.stationary, accuracy=0.9)
    verdicts.append(not any(adwin_alarms))
    print(f"   ADWIN, accuracy 0.9: alarms per run {adwin_alarms}   {verdict(verdicts[-1])}")
    for reference_size in (args.reference_size, 100):
        runs = brightness_false_alarms(config, runs=args.runs, samples=args.stationary, reference_size=reference_size)
        alarms = [psi + ks for psi, ks, _, _ in runs]
        detail = ", ".join(f"psi/threshold max {ratio:.2f}, min KS p {p:.1e}" for _, _, ratio, p in runs)
        line = f"   brightness, reference {reference_size}: alarms per run {alarms} ({detail})"
        if reference_size == args.reference_size:
            verdicts.append(not any(alarms))
            line += f"   {verdict(verdicts[-1])}"
        print(line)
    for run in range(args.runs):
        found = service_false_alarms(settings, args.stationary, seed=50_000 + run)
        print(f"   (for information) the whole service, every feature, run {run + 1}: alarms {found or 'none'}")

    print(f"\n{sum(verdicts)} of {len(verdicts)} targets met")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
