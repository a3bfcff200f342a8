"""What each backbone is worth: accuracy on photos it never saw, training time, size and serving speed.

For each backbone (``efficientnet-lite0``, ``efficientnet-lite2``, ``small-cnn``), on the cat/dog photos:

* **5-fold accuracy**: stratified folds of ``catdog/train`` (seeded); each fold trained on four fifths and measured
  on the fifth it never saw. A pretrained backbone's features are computed once (frozen), the head trained per
  fold with the trainer's own ``compile_and_fit`` and defaults; the small CNN trains from scratch per fold.
* **training time** of ``edgeloop train`` on the whole folder (``train_classifier``: decode, features, head,
  export, evaluation through the serving signature), first with an empty feature cache, then again with the
  cache filled — what a retraining on mostly known photos costs.
* **SavedModel size** (``saved_model.pb`` + ``variables/``; the Keras checkpoint for warm starts beside it).
* **serving**: the version on ``edgeloop model-server`` (its own process), REST ``:predict`` with one photo per
  request (p50/p99 over ``--requests``) and with 32 per request (images/s).

    .venv/bin/python bench/models.py                                   # all three backbones
    .venv/bin/python bench/models.py --backbones efficientnet-lite0 --requests 100

Targets (issue "Models that recognize"): Lite0 5-fold accuracy >= 0.95; retraining on ~400 photos <= 60 s, with
features cached <= 15 s (2 cores).
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_server import free_port, start_server, wait_ready

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "catdog" / "train"
MODEL = "bench-backbone"
FOLDS = 5


def folds(labels: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    """Stratified folds: each class's indices shuffled (seeded) and dealt round-robin."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        assignment[members] = np.arange(len(members)) % count
    return [np.flatnonzero(assignment == fold) for fold in range(count)]


def cross_validate(backbone: str, data_dir: Path, seed: int) -> tuple[list[float], float]:
    """Per-fold accuracy and the seconds taken (feature extraction included)."""
    import keras
    from edgeloop_trainer.classifier import BACKBONE_LAYER, build_classifier, compile_and_fit
    from edgeloop_trainer.dataset import load_split
    from edgeloop_trainer.preprocessing import load_images
    from edgeloop_trainer.recipe import Recipe

    started = time.monotonic()
    recipe = Recipe(backbone)
    split = load_split(data_dir, 0.2, seed)
    loaded = load_images([*split.train, *split.evaluation], recipe.size)
    images, labels, classes = loaded.images, loaded.labels, len(split.class_names)
    inputs: np.ndarray = images
    if recipe.pretrained:
        extractor = build_classifier(recipe, classes, seed).get_layer(BACKBONE_LAYER)
        inputs = np.asarray(extractor.predict(images.astype(np.float32), batch_size=32, verbose=0))
    accuracies = []
    for held_out in folds(labels, FOLDS, seed):
        train = np.setdiff1d(np.arange(len(labels)), held_out)
        keras.utils.set_random_seed(seed)
        if recipe.pretrained:
            features_in = keras.Input(shape=inputs.shape[1:])
            dropped = keras.layers.Dropout(0.2, seed=seed)(features_in)
            model = keras.Model(features_in, keras.layers.Dense(classes, activation="softmax")(dropped))
        else:
            model = build_classifier(recipe, classes, seed)
        compile_and_fit(
            model,
            inputs[train],
            labels[train],
            classes,
            epochs=recipe.default_epochs,
            learning_rate=recipe.default_learning_rate,
            batch_size=32,
            seed=seed,
        )
        predicted = np.argmax(model.predict(inputs[held_out].astype(np.float32), verbose=0), axis=1)
        accuracies.append(float(np.mean(predicted == labels[held_out])))
    return accuracies, time.monotonic() - started


def train_twice(backbone: str, data_dir: Path, work: Path, seed: int) -> tuple[float, float, Path, float]:
    """``train_classifier`` with an empty feature cache, then with it filled: (cold s, cached s, version, accuracy)."""
    from edgeloop_trainer.training import train_classifier

    cache = work / ".feature-cache"
    times, result = [], None
    for _ in range(2):
        started = time.monotonic()
        result = train_classifier(
            data_dir, MODEL, work, backbone=backbone, seed=seed, progress=False, feature_cache=cache
        )
        times.append(time.monotonic() - started)
    assert result is not None
    return times[0], times[1], result.path, float(result.metrics["accuracy"])


def saved_model_bytes(version_dir: Path) -> tuple[int, int]:
    """(the SavedModel: saved_model.pb + variables/, the whole version folder)."""
    serving = (version_dir / "saved_model.pb").stat().st_size + sum(
        path.stat().st_size for path in (version_dir / "variables").rglob("*") if path.is_file()
    )
    everything = sum(path.stat().st_size for path in version_dir.rglob("*") if path.is_file())
    return serving, everything


def serve(model_base: Path, photos: list[Path], requests: int) -> tuple[float, float, float]:
    """p50 and p99 ms of one photo per REST request, and images/s with 32 per request."""
    import httpx

    http_port, grpc_port = free_port(), free_port()
    server = start_server(model_base, MODEL, http_port, grpc_port)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_ready(url, server)
        encoded = [base64.b64encode(path.read_bytes()).decode() for path in photos]
        with httpx.Client(base_url=url, timeout=60) as client:

            def predict(batch: list[str]) -> None:
                body = {"instances": [{"b64": one} for one in batch]}
                response = client.post(f"/v1/models/{MODEL}:predict", json=body)
                response.raise_for_status()

            for one in encoded[:5]:
                predict([one])  # warm-up
            single = []
            for index in range(requests):
                started = time.perf_counter()
                predict([encoded[index % len(encoded)]])
                single.append(time.perf_counter() - started)
            batches = max(3, requests // 32)
            started = time.perf_counter()
            for index in range(batches):
                predict([encoded[(index * 32 + k) % len(encoded)] for k in range(32)])
            throughput = batches * 32 / (time.perf_counter() - started)
    finally:
        server.terminate()
        server.wait(timeout=30)
    p50 = statistics.median(single) * 1000
    p99 = float(np.percentile(single, 99)) * 1000
    return p50, p99, throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of class sub-folders")
    parser.add_argument(
        "--backbones", default="efficientnet-lite0,efficientnet-lite2,small-cnn", help="comma-separated"
    )
    parser.add_argument("--requests", type=int, default=200, help="single-photo requests per backbone")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    photos = sorted(args.data.rglob("*.jpg"))[:64]
    rows = []
    for backbone in [name.strip() for name in args.backbones.split(",") if name.strip()]:
        print(f"--- {backbone}", flush=True)
        accuracies, cv_s = cross_validate(backbone, args.data, args.seed)
        print(f"5-fold accuracy {np.mean(accuracies):.3f} ± {np.std(accuracies):.3f} ({cv_s:.0f} s)", flush=True)
        work = Path(tempfile.mkdtemp(prefix=f"bench-{backbone}-"))
        try:
            cold_s, cached_s, version_dir, held_out = train_twice(backbone, args.data, work, args.seed)
            print(f"edgeloop train: {cold_s:.1f} s, again with features cached {cached_s:.1f} s", flush=True)
            serving, everything = saved_model_bytes(version_dir)
            p50, p99, throughput = serve(work, photos, args.requests)
            print(f"served: p50 {p50:.1f} ms, p99 {p99:.1f} ms at batch 1; {throughput:.1f} images/s at 32", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows.append(
            (backbone, np.mean(accuracies), np.std(accuracies), held_out, cold_s, cached_s, serving, everything,
             p50, p99, throughput)
        )  # fmt: skip
    print()
    print(
        "| backbone | 5-fold accuracy | held-out (train) | train s | cached s | SavedModel MB | version MB "
        "| p50 ms (1) | p99 ms (1) | images/s (32) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, mean, std, held, cold, cached, serving, everything, p50, p99, throughput in rows:
        print(
            f"| {name} | {mean:.3f} ± {std:.3f} | {held:.3f} | {cold:.1f} | {cached:.1f} | {serving / 1e6:.1f} "
            f"| {everything / 1e6:.1f} | {p50:.1f} | {p99:.1f} | {throughput:.1f} |"
        )


if __name__ == "__main__":
    main()
