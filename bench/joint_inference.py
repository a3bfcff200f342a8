"""Joint inference, measured on labelled photos no model trained on: edge only, cloud only, and the edge agent's mix.

``catdog/train`` is split in two stratified, seeded halves (``--seed``): one half trains both models with the
trainer's own ``train_classifier`` (exported SavedModels, as ``edgeloop train`` makes them), the other half is
held out and only ever classified. Defaults: the shallow **edge** model is the small CNN (``small-cnn``, from
scratch), the deep **cloud** model EfficientNet-Lite2 (frozen ImageNet features + the trainer's head).

Each model is served by its own ``edgeloop model-server`` (its own process): the edge model is the node group's
model server, the cloud model sits behind the real inference gateway (``edgeloop inference-gateway``, standalone,
its own process), so a hard example takes the product's path: ``POST {gateway}/v1/classify``.

1. **direct**: every held-out photo to the edge model server (the agent's TF Serving client) and to the gateway
   (``/v1/classify``), one at a time at ``--rate``: each model's accuracy and latency, and the confidence the
   edge model gives each photo. From these the whole threshold sweep is *predicted* (joint = edge answer unless
   the edge confidence is below the threshold, then the cloud's).
2. **agent**: for each ``--threshold``, a real edge agent (``edgeloop-edge --site S``, its own process, the
   confidence miner at that threshold, ``cloud_url`` = the gateway, ``--budget-ms``) answers a simulated camera
   (:class:`edgeloop.device.DeviceSimulator`) publishing every held-out photo over Mosquitto (QoS 1) at
   ``--rate``. Each ``DeviceResult`` is compared with the photo's label: accuracy of what the device got,
   offload rate (answers ``served_by: cloud``; hard examples offered to the cloud), and device-measured latency
   (publish -> result) of the edge answers, the cloud answers and all answers (joint).

The trained models are cached under ``.edgeloop/bench/joint/`` (per backbone and seed; ``--retrain``). The photos
are read from ../shared/datasets/catdog and never copied into the repository (the camera's folder is a temporary
folder outside it; each frame gets a JPEG comment so every picture is unique, as a camera's frames are).

    .venv/bin/python bench/joint_inference.py                                      # threshold 0.8 (the default)
    .venv/bin/python bench/joint_inference.py --threshold 0.6 --threshold 0.8 --threshold 0.95
    .venv/bin/python bench/joint_inference.py --edge-backbone efficientnet-lite0 --rate 5 --json joint.json

Target (issue "Joint inference"): joint accuracy above edge-only at an offload rate well below 1 (measure).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_latency import Spread, edge_agent, end_session, service_process, unique_frame, wait_http_ready
from model_server import free_port, start_server, wait_ready
from models import folds

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASET = REPO_ROOT.parent / "shared" / "datasets" / "catdog" / "train"
CACHE = REPO_ROOT / ".edgeloop" / "bench" / "joint"
EDGELOOP = Path(sys.executable).parent / "edgeloop"
EDGE_MODEL, CLOUD_MODEL = "joint-edge", "joint-cloud"
DEVICE = "cam-1"


# -- the split and the models ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    path: Path
    label: str


def split(data_dir: Path, seed: int) -> tuple[list[Photo], list[Photo]]:
    """Two stratified halves of ``data_dir`` (class sub-folders), seeded: (train, held out)."""
    photos = [
        Photo(path, folder.name)
        for folder in sorted(data_dir.iterdir())
        if folder.is_dir()
        for path in sorted(folder.iterdir())
        if path.suffix.lower() in {".jpg", ".jpeg", ".png"}
    ]
    labels = np.array([photo.label for photo in photos])
    train_idx, held_idx = folds(labels, 2, seed)
    return [photos[i] for i in sorted(train_idx)], [photos[i] for i in sorted(held_idx)]


def trained_model(backbone: str, name: str, train: list[Photo], seed: int, retrain: bool) -> tuple[Path, float]:
    """``train_classifier`` on the train half (symlinks in a temporary folder); (model base, seconds or 0 cached)."""
    base = CACHE / f"{backbone}-seed{seed}-n{len(train)}"
    if not retrain and any((base / name).glob("*/saved_model.pb")):
        return base, 0.0
    from edgeloop_trainer.training import train_classifier

    shutil.rmtree(base, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="joint-train-") as folder:
        for photo in train:
            (Path(folder) / photo.label).mkdir(exist_ok=True)
            (Path(folder) / photo.label / photo.path.name).symlink_to(photo.path)
        started = time.monotonic()
        train_classifier(folder, name, base, backbone=backbone, seed=seed, progress=False)
        return base, time.monotonic() - started


# -- direct: each model on every held-out photo ---------------------------------------------------------------------


@dataclass
class Direct:
    edge_scores: list[dict[str, float]] = field(default_factory=list)
    cloud_scores: list[dict[str, float]] = field(default_factory=list)
    edge_ms: list[float] = field(default_factory=list)
    cloud_ms: list[float] = field(default_factory=list)


async def direct_pass(frames: list[bytes], edge_rest: str, gateway: str, rate: float) -> Direct:
    from edgeloop_common.serving import ModelRoute, create_model_client

    client = create_model_client("rest", rest_url=edge_rest, grpc_target="", timeout_s=30.0, metadata_ttl_s=60.0)
    route = ModelRoute(EDGE_MODEL)
    result = Direct()
    loop = asyncio.get_running_loop()
    try:
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
            for image in frames[:3]:  # warm-up
                await client.classify(route, [image])
                await http.post("/v1/classify", content=image, headers={"content-type": "application/octet-stream"})
            start = loop.time()
            for index, image in enumerate(frames):
                delay = start + index / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                began = time.perf_counter()
                batch = await client.classify(route, [image])
                result.edge_ms.append((time.perf_counter() - began) * 1000.0)
                result.edge_scores.append(batch.scores[0])
                began = time.perf_counter()
                response = await http.post(
                    "/v1/classify", content=image, headers={"content-type": "application/octet-stream"}
                )
                result.cloud_ms.append((time.perf_counter() - began) * 1000.0)
                response.raise_for_status()
                result.cloud_scores.append({str(k): float(v) for k, v in response.json()["scores"].items()})
    finally:
        await client.close()
    return result


def top(scores: dict[str, float]) -> str:
    return max(scores, key=lambda label: scores[label])


def predicted_sweep(direct: Direct, labels: list[str], thresholds: list[float]) -> list[dict[str, float]]:
    """Joint accuracy and offload rate the direct scores predict for each confidence threshold."""
    rows = []
    for threshold in thresholds:
        correct = offloaded = 0
        for edge, cloud, label in zip(direct.edge_scores, direct.cloud_scores, labels, strict=True):
            hard = max(edge.values()) < threshold
            offloaded += hard
            correct += top(cloud if hard else edge) == label
        rows.append({"threshold": threshold, "accuracy": correct / len(labels), "offload": offloaded / len(labels)})
    return rows


# -- the agent: a camera publishing every held-out photo ------------------------------------------------------------


@dataclass
class AgentRun:
    threshold: float
    results: int
    missing: int
    foreign: int
    accuracy: float
    accuracy_edge_served: float
    accuracy_cloud_served: float
    hard: int
    served_by_cloud: int
    offload_rate: float
    joint_outcomes: dict[str, float]
    edge_answer: Spread
    cloud_answer: Spread
    fallback_answer: Spread
    joint: Spread
    per_photo: list[dict[str, Any]] = field(default_factory=list, repr=False)


async def camera(folder: Path, site: str, rate: float, timeout_s: float) -> tuple[list[Any], int, int]:
    """(the agent's results, images without a result, results from another pipeline on the shared broker)."""
    from edgeloop.device import DeviceResult, DeviceSimulator, SimulatorConfig
    from edgeloop_common.settings import CommonSettings

    common = CommonSettings()
    results: list[Any] = []
    foreign = 0

    def on_result(result: DeviceResult) -> None:
        nonlocal foreign
        # Every cloud ingest on the shared Mosquitto subscribes dt/edgeloop/+/+/image: another engineer's running
        # stack may classify our picture too and answer on our result topic first (docs/benchmarks-e2e.md).
        if result.model_name not in (EDGE_MODEL, CLOUD_MODEL):
            foreign += 1
            return
        results.append(result)

    simulator = DeviceSimulator(
        SimulatorConfig(
            images_dir=folder,
            site=site,
            device=DEVICE,
            rate=rate,
            mqtt_host=common.mqtt_host,
            mqtt_port=common.mqtt_port,
            timeout_s=timeout_s,
        ),
        on_result=on_result,
    )
    summary = await simulator.run()
    return results, summary.missing, foreign


def joint_counts(metrics_text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "edgeloop_edge_joint":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["outcome"]] = sample.value
    return counts


def agent_pass(
    threshold: float, folder: Path, labels: dict[str, str], args: argparse.Namespace, edge_rest: str, gateway: str
) -> AgentRun:
    site = f"bench-joint-{uuid.uuid4().hex[:8]}"
    env = {
        "EDGELOOP_EDGE_MODEL_NAME": EDGE_MODEL,
        "EDGELOOP_EDGE_MODEL_SERVER_URL": edge_rest,
        "EDGELOOP_EDGE_CLOUD_URL": gateway,
        "EDGELOOP_EDGE_JOINT_BUDGET_MS": str(args.budget_ms),
        "EDGELOOP_EDGE_HARD_EXAMPLE_MINER": "confidence",
        "EDGELOOP_EDGE_HARD_EXAMPLE_THRESHOLD": str(threshold),
    }
    with edge_agent(site, args.work / site, env) as agent:
        results, missing, foreign = asyncio.run(camera(folder, site, args.rate, args.timeout))
        outcomes = joint_counts(httpx.get(f"{agent.url}/metrics", timeout=5).text)
    end_session(agent.client_id)
    correct = {"edge": 0, "cloud": 0}
    served = {"edge": 0, "cloud": 0}
    # edge: not hard, the edge's answer; cloud: the cloud's answer; fallback: hard, the edge's answer after all
    latency: dict[str, list[float]] = {"edge": [], "cloud": [], "fallback": []}
    hard = 0
    per_photo: list[dict[str, Any]] = []
    for result in results:
        by = result.payload["served_by"]
        is_hard = bool(result.payload.get("hard_example"))
        served[by] += 1
        correct[by] += result.top_label == labels[result.image_name]
        latency["fallback" if by == "edge" and is_hard else by].append(result.latency_ms)
        hard += is_hard
        per_photo.append(
            {
                "photo": result.image_name,
                "label": labels[result.image_name],
                "top_label": result.top_label,
                "confidence": result.confidence,
                "served_by": by,
                "hard_example": is_hard,
                "latency_ms": round(result.latency_ms, 2),
            }
        )
    total = len(results)
    return AgentRun(
        threshold=threshold,
        results=total,
        missing=missing,
        foreign=foreign,
        accuracy=sum(correct.values()) / max(total, 1),
        accuracy_edge_served=correct["edge"] / max(served["edge"], 1),
        accuracy_cloud_served=correct["cloud"] / max(served["cloud"], 1),
        hard=hard,
        served_by_cloud=served["cloud"],
        offload_rate=served["cloud"] / max(total, 1),
        joint_outcomes=outcomes,
        edge_answer=Spread.of(latency["edge"]),
        cloud_answer=Spread.of(latency["cloud"]),
        fallback_answer=Spread.of(latency["fallback"]),
        joint=Spread.of([ms for values in latency.values() for ms in values]),
        per_photo=sorted(per_photo, key=lambda photo: photo["photo"]),
    )


# -- the servers ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def model_server(base: Path, name: str) -> Iterator[str]:
    http_port = free_port()
    server = start_server(base, name, http_port, free_port())
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_ready(url, server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextlib.contextmanager
def gateway(model_rest: str, work: Path) -> Iterator[str]:
    """``edgeloop inference-gateway`` (standalone, its own process) in front of the cloud model's server."""
    port = free_port()
    env = {
        **os.environ,
        "EDGELOOP_MODE": "standalone",
        "EDGELOOP_DATA_DIR": str(work / "gateway-data"),
        "EDGELOOP_LOG_LEVEL": "WARNING",
        "EDGELOOP_INFERENCE_GATEWAY_HTTP_HOST": "127.0.0.1",
        "EDGELOOP_INFERENCE_GATEWAY_HTTP_PORT": str(port),
        "EDGELOOP_INFERENCE_GATEWAY_MODEL_NAME": CLOUD_MODEL,
        "EDGELOOP_INFERENCE_GATEWAY_MODEL_SERVER_REST_URL": model_rest,
        "EDGELOOP_TOPIC_PREFIX": f"bench-joint-{uuid.uuid4().hex[:8]}.",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    url = f"http://127.0.0.1:{port}"
    with service_process("inference-gateway", [str(EDGELOOP), "inference-gateway"], env, work / "logs") as process:
        wait_http_ready(url, [process])
        yield url


# -- main -----------------------------------------------------------------------------------------------------------


def accuracy(scores: list[dict[str, float]], labels: list[str]) -> float:
    return sum(top(s) == label for s, label in zip(scores, labels, strict=True)) / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATASET, help="labelled photos, one sub-folder per class")
    parser.add_argument("--edge-backbone", default="small-cnn", help="the shallow edge model's backbone")
    parser.add_argument("--cloud-backbone", default="efficientnet-lite2", help="the deep cloud model's backbone")
    parser.add_argument(
        "--threshold", type=float, action="append", help="confidence miner threshold for the agent runs (repeatable)"
    )
    parser.add_argument("--sweep", default="0.5,0.55,0.6,0.65,0.7,0.75,0.8,0.85,0.9,0.95,0.99",
                        help="thresholds predicted from the direct scores")  # fmt: skip
    parser.add_argument("--budget-ms", type=float, default=300.0, help="the agent's joint budget")
    parser.add_argument("--rate", type=float, default=10.0, help="photos per second (camera and direct calls)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for late results")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--retrain", action="store_true", help="train the models again (ignore the cache)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    thresholds = args.threshold or [0.8]
    sweep = sorted({float(t) for t in args.sweep.split(",") if t.strip()} | set(thresholds))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    train, held_out = split(args.data, args.seed)
    print(f"joint inference: {len(train)} photos train both models, {len(held_out)} held out (seed {args.seed}); "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    edge_base, edge_s = trained_model(args.edge_backbone, EDGE_MODEL, train, args.seed, args.retrain)
    print(f"edge model {args.edge_backbone}: {edge_base} ({f'trained in {edge_s:.0f} s' if edge_s else 'cached'})")
    cloud_base, cloud_s = trained_model(args.cloud_backbone, CLOUD_MODEL, train, args.seed, args.retrain)
    print(f"cloud model {args.cloud_backbone}: {cloud_base} ({f'trained in {cloud_s:.0f} s' if cloud_s else 'cached'})")

    run = uuid.uuid4().hex[:8]
    frames = [unique_frame(photo.path.read_bytes(), f"joint-{run}-{i}") for i, photo in enumerate(held_out)]
    labels = [photo.label for photo in held_out]
    args.work = Path(tempfile.mkdtemp(prefix="bench-joint-"))
    camera_dir = args.work / "camera"
    camera_dir.mkdir()
    by_name = {}
    for index, (frame, photo) in enumerate(zip(frames, held_out, strict=True)):
        name = f"{index:05d}-{photo.path.stem}.jpg"
        (camera_dir / name).write_bytes(frame)
        by_name[name] = photo.label
    runs: list[AgentRun] = []
    try:
        with (
            model_server(edge_base, EDGE_MODEL) as edge_rest,
            model_server(cloud_base, CLOUD_MODEL) as cloud_rest,
            gateway(cloud_rest, args.work) as gateway_url,
        ):
            print(f"direct: {len(frames)} held-out photos to the edge model server and to the gateway ...", flush=True)
            direct = asyncio.run(direct_pass(frames, edge_rest, gateway_url, args.rate))
            for threshold in thresholds:
                print(f"agent: threshold {threshold:g}, {len(frames)} photos at {args.rate:g}/s ...", flush=True)
                runs.append(agent_pass(threshold, camera_dir, by_name, args, edge_rest, gateway_url))
    finally:
        shutil.rmtree(args.work, ignore_errors=True)

    edge_acc, cloud_acc = accuracy(direct.edge_scores, labels), accuracy(direct.cloud_scores, labels)
    edge_direct, cloud_direct = Spread.of(direct.edge_ms), Spread.of(direct.cloud_ms)
    predicted = predicted_sweep(direct, labels, sweep)
    print(f"\nheld-out photos: {len(held_out)}; load average now {os.getloadavg()[0]:.2f}")
    print("\ndirect (each model on every held-out photo):")
    print(f"  edge  {args.edge_backbone:<18} accuracy {edge_acc:.3f}  model server {edge_direct.describe()}")
    print(f"  cloud {args.cloud_backbone:<18} accuracy {cloud_acc:.3f}  gateway      {cloud_direct.describe()}")
    print("\npredicted from the direct scores (joint = edge answer unless edge confidence < threshold):")
    print("| threshold | joint accuracy | offload rate |")
    print("|---|---|---|")
    for row in predicted:
        print(f"| {row['threshold']:g} | {row['accuracy']:.3f} | {row['offload']:.3f} |")
    print("\nmeasured through the edge agent (device publish -> result over Mosquitto; edge answer: not a hard")
    print("example; cloud answer: served_by cloud; hard, edge's answer: the cloud timed out or failed):")
    print(
        "| threshold | results (missing, foreign) | edge-only acc | cloud-only acc | joint acc | hard "
        "| offload (served by cloud) | joint outcomes | edge answer p50/p99 ms | cloud answer p50/p99 ms "
        "| hard, edge's answer p50/p99 ms | joint p50/p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        outcomes = ", ".join(f"{k} {v:g}" for k, v in sorted(r.joint_outcomes.items())) or "-"
        print(
            f"| {r.threshold:g} | {r.results} ({r.missing}, {r.foreign}) | {edge_acc:.3f} | {cloud_acc:.3f} "
            f"| **{r.accuracy:.3f}** "
            f"| {r.hard} | {r.offload_rate:.3f} ({r.served_by_cloud}) | {outcomes} "
            f"| {r.edge_answer.p50_ms:.1f} / {r.edge_answer.p99_ms:.1f} "
            f"| {r.cloud_answer.p50_ms:.1f} / {r.cloud_answer.p99_ms:.1f} "
            f"| {r.fallback_answer.p50_ms:.1f} / {r.fallback_answer.p99_ms:.1f} ({r.fallback_answer.count}) "
            f"| {r.joint.p50_ms:.1f} / {r.joint.p99_ms:.1f} |"
        )
    if args.json:
        document = {
            "held_out": len(held_out),
            "edge": {"backbone": args.edge_backbone, "accuracy": edge_acc, "latency": asdict(edge_direct)},
            "cloud": {"backbone": args.cloud_backbone, "accuracy": cloud_acc, "latency": asdict(cloud_direct)},
            "predicted": predicted,
            "agent": [asdict(r) for r in runs],
        }
        args.json.write_text(json.dumps(document, indent=2))
    if any(r.foreign for r in runs):
        print("WARNING: another pipeline on the shared broker answered some of our pictures first; those photos are "
              "left out (the 'foreign' count)")  # fmt: skip
    if any(r.missing for r in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
