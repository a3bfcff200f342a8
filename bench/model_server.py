"""Per-request overhead of ``edgeloop model-server`` vs calling the SavedModel in-process.

Same image, batch size 1, N requests one after another, measured three ways:

* in-process: ``tf.saved_model.load(...).signatures["serving_default"]`` called directly;
* REST: ``POST /v1/models/NAME:predict`` with ``{"instances": [{"b64": ...}]}`` over a kept-alive connection;
* gRPC: ``PredictionService/Predict`` with the official ``tensorflow-serving-api`` stub.

The server runs as its own process (``edgeloop model-server``), as in production.
The three are measured in interleaved rounds so background load on the machine
hits them alike. Prints p50/p99 of each, and the overhead of REST and gRPC over
in-process in milliseconds and as a ratio.

    .venv/bin/python bench/model_server.py                      # trains a 128 px model first if none is given
    .venv/bin/python bench/model_server.py --model-base models --model catdog --requests 1000
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for tests.helpers
from tests.helpers import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = REPO_ROOT.parent / "shared" / "datasets" / "catdog"
BENCH_MODELS = REPO_ROOT / ".edgeloop" / "bench" / "models"


def ensure_model(model_base: Path | None, model: str, data_dir: Path) -> Path:
    if model_base is not None:
        return model_base
    if not (BENCH_MODELS / model).is_dir():
        from edgeloop_trainer.training import train_classifier

        # The small CNN, as the figures in BENCHMARKS.md were measured with: the server's overhead is the point.
        print(f"training a benchmark model (small CNN, 128 px, 3 epochs) into {BENCH_MODELS} ...", flush=True)
        train_classifier(data_dir, model, BENCH_MODELS, backbone="small-cnn", epochs=3, image_size=128, progress=False)
    return BENCH_MODELS


def start_server(model_base: Path, model: str, http_port: int, grpc_port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "EDGELOOP_MODEL_SERVER_MODEL_BASE_PATH": str(model_base),
        "EDGELOOP_MODEL_SERVER_MODEL_NAME": model,
        "EDGELOOP_MODEL_SERVER_HTTP_HOST": "127.0.0.1",
        "EDGELOOP_MODEL_SERVER_HTTP_PORT": str(http_port),
        "EDGELOOP_MODEL_SERVER_GRPC_HOST": "127.0.0.1",
        "EDGELOOP_MODEL_SERVER_GRPC_PORT": str(grpc_port),
        "EDGELOOP_LOG_LEVEL": "WARNING",
    }
    edgeloop = Path(sys.executable).parent / "edgeloop"
    return subprocess.Popen([str(edgeloop), "model-server"], env=env, stdout=subprocess.DEVNULL)


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the model server exited with code {server.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the model server did not become ready")


def timed(call: Callable[[], object], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-base", type=Path, help="model base path (default: train one under .edgeloop/bench)")
    parser.add_argument("--model", default="catdog")
    parser.add_argument("--image", type=Path, help="the image sent every time (default: the first capture)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per method")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the requests are split into")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured requests per method first")
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import grpc
    import httpx
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    image_path = args.image or sorted((DEFAULT_IMAGES / "captures").glob("*.jpg"))[0]
    image = image_path.read_bytes()
    model_base = ensure_model(args.model_base, args.model, DEFAULT_IMAGES / "train")
    versions = sorted(int(p.name) for p in (model_base / args.model).iterdir() if p.name.isdigit())
    version_dir = model_base / args.model / str(versions[-1])

    http_port, grpc_port = free_port(), free_port()
    server = start_server(model_base, args.model, http_port, grpc_port)
    try:
        rest_url = f"http://127.0.0.1:{http_port}"
        wait_ready(rest_url, server)
        serving = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
        in_process_input = tf.constant([image])
        body = {"instances": [{"b64": base64.b64encode(image).decode("ascii")}]}
        request = predict_pb2.PredictRequest()
        request.model_spec.name = args.model
        request.model_spec.signature_name = "serving_default"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))

        with httpx.Client(base_url=rest_url, timeout=30) as rest, grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)

            def rest_call() -> None:
                response = rest.post(f"/v1/models/{args.model}:predict", json=body)
                response.raise_for_status()
                response.json()

            methods: dict[str, Callable[[], object]] = {
                "in-process": lambda: serving(image_bytes=in_process_input)["scores"].numpy(),
                "REST": rest_call,
                "gRPC": lambda: tf.make_ndarray(stub.Predict(request, 30.0).outputs["scores"]),
            }
            in_process = methods["in-process"]()
            answer = rest.post(f"/v1/models/{args.model}:predict", json=body).json()
            over_rest = np.asarray(answer["predictions"][0]["scores"])
            assert np.allclose(in_process[0], over_rest, atol=1e-5), "the server answers differently from the model"
            samples: dict[str, list[float]] = {name: [] for name in methods}
            for call in methods.values():
                timed(call, args.warmup)
            per_round = max(1, args.requests // args.rounds)
            for _ in range(args.rounds):
                for name, call in methods.items():
                    samples[name] += timed(call, per_round)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

    report(samples, image_path, version_dir, len(image))


def report(samples: dict[str, list[float]], image_path: Path, version_dir: Path, image_bytes: int) -> None:
    def ms(values: list[float], q: float) -> float:
        return float(np.percentile(np.asarray(values) * 1000, q))

    count = len(samples["in-process"])
    print(f"\nmodel {version_dir}, image {image_path.name} ({image_bytes} bytes), batch size 1, {count} requests each")
    print(f"{'':12}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    for name, values in samples.items():
        print(f"{name:12}{ms(values, 50):>10.2f}{ms(values, 99):>10.2f}{1000 * float(np.mean(values)):>10.2f}")
    base50, base99 = ms(samples["in-process"], 50), ms(samples["in-process"], 99)
    print("\noverhead over the in-process call:")
    for name in ("REST", "gRPC"):
        p50, p99 = ms(samples[name], 50), ms(samples[name], 99)
        print(
            f"  {name:5} p50 +{p50 - base50:.2f} ms (x{p50 / base50:.2f})"
            f"   p99 +{p99 - base99:.2f} ms (x{p99 / base99:.2f})"
        )


if __name__ == "__main__":
    main()
