"""Versions: picked up without a restart, swapped with zero failed requests, broken ones refused, labels, policy."""

from __future__ import annotations

import base64
import shutil
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
import tensorflow as tf
from model_server_helpers import ServerFactory, add_version, wait_for
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.model_fixtures import copy_model_base

pytestmark = [pytest.mark.tf, pytest.mark.slow]


def grpc_predict(stub: prediction_service_pb2_grpc.PredictionServiceStub, model: str, image: bytes, **spec: object):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = int(value)  # type: ignore[call-overload]
        else:
            setattr(request.model_spec, key, value)
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))
    return stub.Predict(request, 10.0)


def version_states(rest: httpx.Client, model: str) -> dict[str, str]:
    response = rest.get(f"/v1/models/{model}")
    if response.status_code != 200:
        return {}
    return {entry["version"]: entry["state"] for entry in response.json()["model_version_status"]}


class RequestHammer:
    """Sends predict requests over REST and gRPC in background threads until stopped; counts what came back."""

    def __init__(self, rest_url: str, grpc_target: str, model: str, image: bytes) -> None:
        self.versions: Counter[int] = Counter()
        self.successes = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._body = {"instances": [{"b64": base64.b64encode(image).decode("ascii")}]}
        self._threads = [
            threading.Thread(target=self._over_rest, args=(rest_url, model), daemon=True),
            threading.Thread(target=self._over_grpc, args=(grpc_target, model, image), daemon=True),
        ]
        self._lock = threading.Lock()

    def _record(self, outcome: Callable[[], int | None]) -> None:
        try:
            version = outcome()
        except (grpc.RpcError, httpx.HTTPError, AssertionError) as exc:
            with self._lock:
                self.failures.append(repr(exc))
            return
        with self._lock:
            self.successes += 1
            if version is not None:
                self.versions[version] += 1

    def _over_rest(self, rest_url: str, model: str) -> None:
        with httpx.Client(base_url=rest_url, timeout=30) as client:
            while not self._stop.is_set():

                def call() -> None:
                    response = client.post(f"/v1/models/{model}:predict", json=self._body)
                    assert response.status_code == 200, response.text
                    assert sum(response.json()["predictions"][0]["scores"]) == pytest.approx(1.0, abs=1e-5)

                self._record(call)

    def _over_grpc(self, grpc_target: str, model: str, image: bytes) -> None:
        with grpc.insecure_channel(grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not self._stop.is_set():
                self._record(lambda: grpc_predict(stub, model, image).model_spec.version.value)

    def __enter__(self) -> RequestHammer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def test_a_new_version_is_served_without_restart_and_without_a_failed_request(
    start_model_server: ServerFactory,
    trained_model_base: Path,
    trained_model_name: str,
    capture_images: list[Path],
    tmp_path: Path,
) -> None:
    model_base = copy_model_base(trained_model_base, tmp_path)
    model_dir = model_base / trained_model_name
    with (
        start_model_server(model_base, trained_model_name) as server,
        httpx.Client(base_url=server.rest_url, timeout=30) as rest,
        RequestHammer(
            server.rest_url, server.grpc_target, trained_model_name, capture_images[0].read_bytes()
        ) as hammer,
    ):
        wait_for(lambda: hammer.versions[1] >= 5, what="requests answered by version 1")
        add_version(model_dir, 2, model_dir / "1")
        wait_for(lambda: hammer.versions[2] >= 5, what="requests answered by version 2")
        wait_for(lambda: version_states(rest, trained_model_name) == {"2": "AVAILABLE", "1": "END"}, what="v1 unloaded")
        settled = hammer.successes
        wait_for(lambda: hammer.successes >= settled + 10, what="requests after the switch")

    assert hammer.failures == []
    assert hammer.versions[1] >= 5 and hammer.versions[2] >= 5


@pytest.mark.parametrize(
    ("breakage", "without"),
    [("corrupt saved_model.pb", ()), ("missing variables", ("variables",))],
)
def test_a_broken_version_is_refused_with_a_reason_while_the_old_one_keeps_serving(
    start_model_server: ServerFactory,
    trained_model_base: Path,
    trained_model_name: str,
    capture_images: list[Path],
    tmp_path: Path,
    breakage: str,
    without: tuple[str, ...],
) -> None:
    model_base = copy_model_base(trained_model_base, tmp_path)
    model_dir = model_base / trained_model_name
    image = capture_images[0].read_bytes()
    with (
        start_model_server(model_base, trained_model_name) as server,
        httpx.Client(base_url=server.rest_url, timeout=30) as rest,
        grpc.insecure_channel(server.grpc_target) as channel,
        RequestHammer(server.rest_url, server.grpc_target, trained_model_name, image) as hammer,
    ):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        broken = tmp_path / "broken"
        shutil.copytree(model_dir / "1", broken, ignore=shutil.ignore_patterns(*without) if without else None)
        if breakage == "corrupt saved_model.pb":
            (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel protobuf" * 100)
        add_version(model_dir, 2, broken)

        status = wait_for(
            lambda: next(
                (
                    entry
                    for entry in rest.get(f"/v1/models/{trained_model_name}").json()["model_version_status"]
                    if entry["version"] == "2" and entry["state"] == "END"
                ),
                None,
            ),
            what="version 2 refused",
        )
        served_after = grpc_predict(stub, trained_model_name, image)
        states = version_states(rest, trained_model_name)
        answered = hammer.successes
        wait_for(lambda: hammer.successes >= answered + 5, what="requests after the refusal")

    assert status["status"]["error_code"] != "OK"
    assert status["status"]["error_message"], "the refusal must say why"
    assert states == {"2": "END", "1": "AVAILABLE"}
    assert served_after.model_spec.version.value == 1
    assert hammer.failures == []
    assert set(hammer.versions) == {1}


def test_a_half_written_version_folder_is_ignored(
    start_model_server: ServerFactory, trained_model_base: Path, trained_model_name: str, tmp_path: Path
) -> None:
    model_base = copy_model_base(trained_model_base, tmp_path)
    model_dir = model_base / trained_model_name
    (model_dir / "2" / "variables").mkdir(parents=True)  # a copy in progress: no saved_model.pb yet
    with start_model_server(model_base, trained_model_name) as server, httpx.Client(base_url=server.rest_url) as rest:
        wait_for(lambda: version_states(rest, trained_model_name) == {"1": "AVAILABLE"}, what="version 1")
        states_while_incomplete = version_states(rest, trained_model_name)

    assert states_while_incomplete == {"1": "AVAILABLE"}


def test_version_labels_and_specific_versions_route_requests(
    start_model_server: ServerFactory,
    trained_model_base: Path,
    trained_model_name: str,
    capture_images: list[Path],
    tmp_path: Path,
) -> None:
    model_base = copy_model_base(trained_model_base, tmp_path)
    model_dir = model_base / trained_model_name
    add_version(model_dir, 2, model_dir / "1")
    add_version(model_dir, 3, model_dir / "1")
    image = capture_images[1].read_bytes()
    body = {"instances": [{"b64": base64.b64encode(image).decode("ascii")}]}
    with (
        start_model_server(
            model_base, trained_model_name, model_version_policy="specific:1,2", version_labels="stable=1,canary=2"
        ) as server,
        httpx.Client(base_url=server.rest_url, timeout=30) as rest,
        grpc.insecure_channel(server.grpc_target) as channel,
    ):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        states = version_states(rest, trained_model_name)
        latest = grpc_predict(stub, trained_model_name, image).model_spec.version.value
        canary = grpc_predict(stub, trained_model_name, image, version_label="canary").model_spec.version.value
        stable = grpc_predict(stub, trained_model_name, image, version_label="stable").model_spec.version.value
        pinned = grpc_predict(stub, trained_model_name, image, version=1).model_spec.version.value
        rest_canary = rest.post(f"/v1/models/{trained_model_name}/labels/canary:predict", json=body)
        rest_v2 = rest.post(f"/v1/models/{trained_model_name}/versions/2:predict", json=body)
        rest_v3 = rest.post(f"/v1/models/{trained_model_name}/versions/3:predict", json=body)
        rest_unknown_label = rest.post(f"/v1/models/{trained_model_name}/labels/nightly:predict", json=body)
        stable_metadata = rest.get(f"/v1/models/{trained_model_name}/labels/stable/metadata").json()
        canary_status = rest.get(f"/v1/models/{trained_model_name}/labels/canary").json()

    assert states == {"2": "AVAILABLE", "1": "AVAILABLE"}  # version 3 is on disk but not in the policy
    assert (latest, canary, stable, pinned) == (2, 2, 1, 1)
    assert rest_canary.status_code == rest_v2.status_code == 200
    assert rest_canary.json() == rest_v2.json()
    assert rest_v3.status_code == 404
    assert rest_unknown_label.status_code == 400 and rest_unknown_label.json()["error"]
    assert stable_metadata["model_spec"]["version"] == "1"
    assert canary_status["model_version_status"][0]["version"] == "2"


def test_readiness_waits_for_a_first_version(
    start_model_server: ServerFactory, trained_model_base: Path, trained_model_name: str, tmp_path: Path
) -> None:
    model_base = tmp_path / "models"
    (model_base / trained_model_name).mkdir(parents=True)
    with start_model_server(model_base, trained_model_name) as server, httpx.Client(base_url=server.rest_url) as rest:
        before = rest.get("/readyz")
        missing = rest.post(f"/v1/models/{trained_model_name}:predict", json={"instances": [{"b64": "aGVsbG8="}]})
        add_version(model_base / trained_model_name, 1, trained_model_base / trained_model_name / "1")
        wait_for(lambda: rest.get("/readyz").status_code == 200, what="ready")

    assert before.status_code == 503
    assert missing.status_code == 404


def test_several_models_from_a_tf_serving_model_config_file(
    start_model_server: ServerFactory,
    trained_model_base: Path,
    trained_model_name: str,
    capture_images: list[Path],
    tmp_path: Path,
) -> None:
    model_base = copy_model_base(trained_model_base, tmp_path)
    (model_base / "second").mkdir()
    add_version(model_base / "second", 7, model_base / trained_model_name / "1")
    config_file = tmp_path / "models.config"
    config_file.write_text(
        "model_config_list {\n"
        f'  config {{ name: "{trained_model_name}" base_path: "{model_base / trained_model_name}" '
        'model_platform: "tensorflow" }\n'
        f'  config {{ name: "second" base_path: "{model_base / "second"}" model_platform: "tensorflow" '
        "model_version_policy { all {} } version_labels { key: 'stable' value: 7 } }\n"
        "}\n"
    )
    body = {"instances": [{"b64": base64.b64encode(capture_images[0].read_bytes()).decode("ascii")}]}
    with (
        start_model_server(model_base, "ignored", model_config_file=config_file) as server,
        httpx.Client(base_url=server.rest_url, timeout=30) as rest,
    ):
        first = rest.post(f"/v1/models/{trained_model_name}:predict", json=body)
        second = rest.post("/v1/models/second/labels/stable:predict", json=body)
        ready = rest.get("/readyz").json()

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert ready["checks"] == {f"model {trained_model_name}": "ok", "model second": "ok"}
