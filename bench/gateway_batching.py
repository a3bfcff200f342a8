"""Gateway throughput at saturation with dynamic batching vs batch size 1, and p99 latency below saturation.

One run measures both modes against the same real lite model server (``edgeloop model-server``,
started here as its own process) serving a really trained model:

Both modes run in alternating rounds (``--rounds``), so that other load on a shared machine
falls on both alike.

1. saturation: ``--clients`` concurrent callers classify photos back to back through the
   gateway's classify path (:meth:`InferenceService.classify_bytes`: image checks and statistics,
   dynamic batcher, TF Serving REST or gRPC client) for ``--duration`` seconds; images/s.
2. below saturation: requests arrive at a fixed rate (``--rate-fraction`` of the slower mode's
   saturation throughput, the same rate for both modes) and each request's latency is recorded;
   p50 and p99.

Targets (issue 3): batched throughput >= 2x unbatched; batched p99 below saturation <= 1.5x unbatched.

    .venv/bin/python bench/gateway_batching.py                      # trains a model if none is given
    .venv/bin/python bench/gateway_batching.py --model-base .edgeloop/models --model catdog
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for tests.helpers
from tests.helpers import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASET = REPO_ROOT.parent / "shared" / "datasets" / "catdog"
BENCH_MODEL_BASE = REPO_ROOT / ".edgeloop" / "bench" / "models"
BENCH_MODEL_NAME = "bench-classifier"


@dataclass
class ModeResult:
    mode: str
    max_batch_size: int
    saturation_images_per_s: float
    saturation_mean_batch: float
    saturation_errors: int
    rate_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    rate_mean_batch: float = 0.0
    rate_errors: int = 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100.0 * len(ordered) + 0.5) - 1))]


def ensure_model(model_base: Path | None, model_name: str | None, epochs: int) -> tuple[Path, str]:
    """The given model, or one trained here with the trainer's default architecture (cached)."""
    if model_base is not None:
        if model_name is None or not (model_base / model_name).is_dir():
            raise SystemExit(f"--model-base {model_base} has no model {model_name!r}")
        return model_base, model_name
    if not any((BENCH_MODEL_BASE / BENCH_MODEL_NAME).glob("*/saved_model.pb")):
        print(f"training {BENCH_MODEL_NAME} ({epochs} epoch(s), default architecture) into {BENCH_MODEL_BASE} ...")
        command = [
            str(REPO_ROOT / ".venv" / "bin" / "edgeloop"), "train", "--data", str(DATASET / "train"),
            "--model", BENCH_MODEL_NAME, "--out", str(BENCH_MODEL_BASE), "--epochs", str(epochs), "--no-progress",
        ]  # fmt: skip
        subprocess.run(command, check=True)
    return BENCH_MODEL_BASE, BENCH_MODEL_NAME


@contextmanager
def model_server(model_base: Path, model_name: str, threads: int) -> Iterator[tuple[str, str]]:
    """``edgeloop model-server`` in its own process; yields (REST URL, gRPC target) once the model is AVAILABLE."""
    rest_port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "EDGELOOP_MODEL_SERVER_HTTP_HOST": "127.0.0.1",
        "EDGELOOP_MODEL_SERVER_HTTP_PORT": str(rest_port),
        "EDGELOOP_MODEL_SERVER_GRPC_HOST": "127.0.0.1",
        "EDGELOOP_MODEL_SERVER_GRPC_PORT": str(grpc_port),
        "EDGELOOP_MODEL_SERVER_MODEL_NAME": model_name,
        "EDGELOOP_MODEL_SERVER_MODEL_BASE_PATH": str(model_base.resolve()),
        "EDGELOOP_MODEL_SERVER_INFERENCE_THREADS": str(threads),
        "EDGELOOP_LOG_LEVEL": "WARNING",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    command = [str(REPO_ROOT / ".venv" / "bin" / "edgeloop"), "model-server"]
    process = subprocess.Popen(command, env=env, start_new_session=True)
    rest_url = f"http://127.0.0.1:{rest_port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the model server exited with {process.returncode}")
            try:
                status = httpx.get(f"{rest_url}/v1/models/{model_name}", timeout=2).json()
                if any(v.get("state") == "AVAILABLE" for v in status.get("model_version_status", [])):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the model server did not make the model AVAILABLE within 180 s")
            time.sleep(0.5)
        yield rest_url, f"127.0.0.1:{grpc_port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def load_images(count: int) -> list[bytes]:
    paths = sorted((DATASET / "train").rglob("*.jpg"))[:count] + sorted((DATASET / "captures").glob("*.jpg"))
    return [path.read_bytes() for path in paths]


class Gateway:
    """The gateway's classify path (service + batcher + model client), built as the app builds it."""

    def __init__(self, args: argparse.Namespace, rest_url: str, grpc_target: str, *, batched: bool) -> None:
        from edgeloop_inference_gateway.app import model_client_from_settings, router_from_settings
        from edgeloop_inference_gateway.metrics import GatewayMetrics
        from edgeloop_inference_gateway.service import BatchingConfig, InferenceService
        from edgeloop_inference_gateway.settings import Settings

        self.max_batch_size = args.max_batch_size if batched else 1
        settings = Settings(
            model_server_protocol=args.protocol,
            model_server_rest_url=rest_url,
            model_server_grpc_target=grpc_target,
            model_name=args.model_name_resolved,
            request_timeout_s=60,
            mqtt_results=False,
        )
        self.metrics = GatewayMetrics()
        self.client = model_client_from_settings(settings)
        self.service = InferenceService(
            model_client=self.client,
            router=router_from_settings(settings),
            batching=BatchingConfig(
                max_batch_size=self.max_batch_size,
                max_wait_ms=args.max_wait_ms if batched else 0.0,
                # batch size 1: no batching at all, every request its own call, as many at once as callers
                max_concurrent_batches=args.concurrent_batches if batched else args.clients,
            ),
            metrics=self.metrics,
        )

    def batch_counters(self) -> tuple[float, float]:
        registry = self.metrics.registry
        return (
            registry.get_sample_value("edgeloop_inference_batch_size_sum") or 0.0,
            registry.get_sample_value("edgeloop_inference_batch_size_count") or 0.0,
        )

    async def close(self) -> None:
        await self.service.close()
        await self.client.close()


async def saturate(gateway: Gateway, images: list[bytes], clients: int, duration_s: float) -> tuple[float, float, int]:
    """Images/s with ``clients`` callers back to back; the mean batch size; failed requests."""
    done = errors = 0
    stop_at = time.perf_counter() + duration_s

    async def caller(offset: int) -> None:
        nonlocal done, errors
        index = offset
        while time.perf_counter() < stop_at:
            try:
                await gateway.service.classify_bytes(images[index % len(images)])
                done += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported, the benchmark goes on
                errors += 1
                print(f"  request failed: {exc}", file=sys.stderr)
            index += clients

    sum_before, count_before = gateway.batch_counters()
    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    sum_after, count_after = gateway.batch_counters()
    mean_batch = (sum_after - sum_before) / max(1.0, count_after - count_before)
    return done / elapsed, mean_batch, errors


async def at_rate(gateway: Gateway, images: list[bytes], rate: float, count: int) -> tuple[list[float], float, int]:
    """Latencies (ms) of ``count`` requests arriving every 1/rate s; the mean batch size; failed requests."""
    latencies: list[float] = []
    errors = 0

    async def one(image: bytes) -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            await gateway.service.classify_bytes(image)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors += 1
            print(f"  request failed: {exc}", file=sys.stderr)
            return
        latencies.append((time.perf_counter() - started) * 1000.0)

    sum_before, count_before = gateway.batch_counters()
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for index in range(count):
        delay = start + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(images[index % len(images)])))
    await asyncio.gather(*tasks)
    sum_after, count_after = gateway.batch_counters()
    return latencies, (sum_after - sum_before) / max(1.0, count_after - count_before), errors


async def warm_up(gateway: Gateway, images: list[bytes]) -> None:
    await asyncio.gather(*(gateway.service.classify_bytes(image) for image in images[:64]))


async def run(args: argparse.Namespace, rest_url: str, grpc_target: str, images: list[bytes]) -> list[ModeResult]:
    """Both modes, in alternating rounds, so that the load of a shared machine falls on both alike."""
    gateways = {
        "batched": Gateway(args, rest_url, grpc_target, batched=True),
        "unbatched": Gateway(args, rest_url, grpc_target, batched=False),
    }
    for gateway in gateways.values():
        await warm_up(gateway, images)
    rounds = [list(gateways) if index % 2 == 0 else list(reversed(gateways)) for index in range(args.rounds)]

    saturation = {mode: [0.0, 0.0, 0] for mode in gateways}  # images, seconds, errors
    batch_means: dict[str, list[float]] = {mode: [] for mode in gateways}
    for order in rounds:
        for mode in order:
            throughput, mean_batch, errors = await saturate(
                gateways[mode], images, args.clients, args.duration / args.rounds
            )
            saturation[mode][0] += throughput * args.duration / args.rounds
            saturation[mode][1] += args.duration / args.rounds
            saturation[mode][2] += errors
            batch_means[mode].append(mean_batch)
    results = {
        mode: ModeResult(
            mode,
            gateways[mode].max_batch_size,
            saturation[mode][0] / saturation[mode][1],
            sum(batch_means[mode]) / len(batch_means[mode]),
            int(saturation[mode][2]),
        )
        for mode in gateways
    }
    for result in results.values():
        print(f"{result.mode:>9} (max batch {result.max_batch_size:>2}): {result.saturation_images_per_s:7.1f} "
              f"images/s at saturation, mean batch {result.saturation_mean_batch:5.1f}, "
              f"{result.saturation_errors} errors")  # fmt: skip

    rate = args.rate_fraction * min(result.saturation_images_per_s for result in results.values())
    per_round = max(25, int(rate * args.rate_duration / args.rounds))
    latencies: dict[str, list[float]] = {mode: [] for mode in gateways}
    rate_batches: dict[str, list[float]] = {mode: [] for mode in gateways}
    for order in rounds:
        for mode in order:
            measured, mean_batch, errors = await at_rate(gateways[mode], images, rate, per_round)
            latencies[mode].extend(measured)
            rate_batches[mode].append(mean_batch)
            results[mode].rate_errors += errors
    for mode, result in results.items():
        result.rate_per_s = rate
        result.rate_mean_batch = sum(rate_batches[mode]) / len(rate_batches[mode])
        result.p50_ms, result.p99_ms = percentile(latencies[mode], 50), percentile(latencies[mode], 99)
        print(f"{mode:>9} at {rate:6.1f} images/s ({len(latencies[mode])} requests): p50 {result.p50_ms:7.1f} ms, "
              f"p99 {result.p99_ms:7.1f} ms, mean batch {result.rate_mean_batch:4.1f}, "
              f"{result.rate_errors} errors")  # fmt: skip
    for gateway in gateways.values():
        await gateway.close()
    return list(results.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-base", type=Path, help="Model base path (default: train one into .edgeloop/bench)")
    parser.add_argument("--model", help="Model name under --model-base")
    parser.add_argument("--train-epochs", type=int, default=1, help="Epochs when training the benchmark model")
    parser.add_argument("--protocol", choices=("rest", "grpc"), default="rest")
    parser.add_argument("--clients", type=int, default=64, help="Concurrent callers at saturation")
    parser.add_argument("--duration", type=float, default=15.0, help="Seconds of saturation per mode")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--concurrent-batches", type=int, default=2, help="Model calls in flight when batching")
    parser.add_argument("--rate-fraction", type=float, default=0.5, help="Below-saturation rate / slower saturation")
    parser.add_argument("--rate-duration", type=float, default=20.0, help="Seconds of fixed-rate load per mode")
    parser.add_argument("--server-threads", type=int, default=4, help="Model server inference threads")
    parser.add_argument("--rounds", type=int, default=4, help="Alternating rounds per phase (fairness under load)")
    parser.add_argument("--images", type=int, default=120, help="Training photos to cycle through (plus captures)")
    args = parser.parse_args()

    model_base, model_name = ensure_model(args.model_base, args.model, args.train_epochs)
    args.model_name_resolved = model_name
    images = load_images(args.images)
    print(f"gateway batching benchmark: model {model_name} from {model_base}, {len(images)} photos, "
          f"{args.protocol.upper()}, {args.clients} clients, {os.cpu_count()} CPUs")  # fmt: skip
    with model_server(model_base, model_name, args.server_threads) as (rest_url, grpc_target):
        results = asyncio.run(run(args, rest_url, grpc_target, images))

    batched, unbatched = results
    speedup = batched.saturation_images_per_s / unbatched.saturation_images_per_s
    p99_ratio = batched.p99_ms / unbatched.p99_ms
    print()
    print(f"throughput batched / unbatched: {speedup:.2f}x (target >= 2x) {'PASS' if speedup >= 2 else 'FAIL'}")
    print(f"p99 below saturation batched / unbatched: {p99_ratio:.2f} (target <= 1.5) "
          f"{'PASS' if p99_ratio <= 1.5 else 'FAIL'}")  # fmt: skip
    summary = {"speedup": round(speedup, 2), "p99_ratio": round(p99_ratio, 2), "protocol": args.protocol}
    print(json.dumps({"modes": [asdict(result) for result in results], **summary}))


if __name__ == "__main__":
    main()
