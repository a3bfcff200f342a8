"""TF Serving's Classify, Regress and HandleReloadConfigRequest, through its REST API and the official gRPC stubs.

The model is built here the way an Estimator exported one: signatures taking serialized tf.Examples
(``method_name`` classify and regress) beside a predict signature, so the same requests would work against the
real ``tensorflow/serving``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import tensorflow as tf
from edgeloop_model_server.embedded import RunningServer
from google.protobuf import text_format
from model_server_helpers import ServerFactory, wait_for
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
    regression_pb2,
)

pytestmark = pytest.mark.tf

MODEL = "pump"


def export_example_model(path: Path, *, slope: float = 2.0) -> None:
    """y = slope * x + 1 (regress); classes hot/cold scored by sigmoid(x) (classify); y again under predict."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        serialized = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
        parsed = tf.io.parse_example(
            serialized,
            {"x": tf.io.FixedLenFeature([1], tf.float32), "site": tf.io.FixedLenFeature([1], tf.string, [b"none"])},
        )
        x = parsed["x"]
        y = slope * x + 1.0
        hot = tf.sigmoid(x)
        scores = tf.concat([hot, 1.0 - hot], axis=1)
        classes = tf.tile(tf.constant([["hot", "cold"]]), [tf.shape(x)[0], 1])
        raw = tf.compat.v1.placeholder(tf.float32, [None, 1], name="x")
        builder = tf.compat.v1.saved_model.Builder(str(path))
        builder.add_meta_graph_and_variables(
            session,
            ["serve"],
            signature_def_map={
                "classify": tf.compat.v1.saved_model.classification_signature_def(serialized, classes, scores),
                "regress": tf.compat.v1.saved_model.regression_signature_def(serialized, y),
                "serving_default": tf.compat.v1.saved_model.predict_signature_def({"x": raw}, {"y": slope * raw + 1.0}),
            },
        )
        builder.save()


@pytest.fixture(scope="module")
def model_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("example-models")
    export_example_model(base / MODEL / "1")
    export_example_model(base / "spare" / "1", slope=3.0)
    return base


@pytest.fixture(scope="module")
def server(model_base: Path) -> Iterator[RunningServer]:
    from edgeloop_model_server.embedded import serve_in_thread
    from model_server_helpers import server_settings

    with serve_in_thread(server_settings(model_base, MODEL)) as running:
        yield running


@pytest.fixture
def rest(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.rest_url, timeout=30) as client:
        yield client


@pytest.fixture
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as opened:
        yield opened


def example(x: float) -> example_pb2.Example:
    made = example_pb2.Example()
    made.features.feature["x"].float_list.value.append(x)
    return made


def test_rest_regress_and_classify_answer_per_example(rest: httpx.Client) -> None:
    regressed = rest.post(
        f"/v1/models/{MODEL}:regress", json={"signature_name": "regress", "examples": [{"x": 1.5}, {"x": -2.0}]}
    )
    assert regressed.status_code == 200, regressed.text
    assert regressed.json()["result"] == pytest.approx([4.0, -3.0])

    classified = rest.post(
        f"/v1/models/{MODEL}/versions/1:classify", json={"signature_name": "classify", "examples": [{"x": 0.0}]}
    )
    assert classified.status_code == 200, classified.text
    (row,) = classified.json()["result"]
    assert [label for label, _ in row] == ["hot", "cold"]
    assert [score for _, score in row] == pytest.approx([0.5, 0.5])


def test_rest_context_is_merged_into_each_example_and_the_example_wins(rest: httpx.Client) -> None:
    answered = rest.post(
        f"/v1/models/{MODEL}:regress",
        json={"signature_name": "regress", "context": {"x": 10.0}, "examples": [{"site": "a"}, {"x": 1.0}]},
    )
    assert answered.status_code == 200, answered.text
    assert answered.json()["result"] == pytest.approx([21.0, 3.0])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"examples": [{"x": 1.0}]}, "Expected regression signature method_name"),  # serving_default: predict
        ({"signature_name": "regress", "examples": []}, "non-empty"),
        ({"signature_name": "regress", "examples": [{"x": True}]}, "feature x"),
        ({"signature_name": "regress", "examples": [{"x": [1, "a"]}]}, "mixes numbers and strings"),
        ({"signature_name": "regress", "examples": [{"x": {"b64": "@@@"}}]}, "not valid base64"),
        ({"signature_name": "regress", "examples": ["x"]}, "examples[0] must be a JSON object"),
        ({"signature_name": "nope", "examples": [{"x": 1.0}]}, "not found in signature def"),
    ],
)
def test_rest_refuses_what_tf_serving_refuses_with_a_reason(rest: httpx.Client, body: dict, reason: str) -> None:
    answered = rest.post(f"/v1/models/{MODEL}:regress", json=body)
    assert answered.status_code == 400, answered.text
    assert reason in answered.json()["error"]


def test_a_feature_the_model_cannot_parse_is_the_models_own_error_without_a_stack(rest: httpx.Client) -> None:
    # JSON 2 (no decimal point) is an int64 feature, as in TF Serving; this model parses x as float.
    answered = rest.post(f"/v1/models/{MODEL}:regress", json={"signature_name": "regress", "examples": [{"x": 2}]})
    assert answered.status_code == 400, answered.text
    assert "Data types don't match" in answered.json()["error"]
    assert 'File "' not in answered.json()["error"]
    missing = rest.post(f"/v1/models/{MODEL}:regress", json={"signature_name": "regress", "examples": [{"y": 1.0}]})
    assert missing.status_code == 400, missing.text


def test_grpc_classify_and_regress_with_the_official_stubs(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "regress"
    request.input.example_list.examples.extend([example(0.5), example(3.0)])
    response = stub.Regress(request, 10.0)
    assert [entry.value for entry in response.result.regressions] == pytest.approx([2.0, 7.0])
    assert response.model_spec.version.value == 1

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "classify"
    with_context = request.input.example_list_with_context
    with_context.context.CopyFrom(example(100.0))
    with_context.examples.add()  # takes x from the context
    response = stub.Classify(request, 10.0)
    (row,) = response.result.classifications
    assert [(entry.label, round(entry.score, 4)) for entry in row.classes] == [("hot", 1.0), ("cold", 0.0)]


def test_grpc_classify_on_a_predict_signature_is_invalid_argument(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = MODEL
    request.input.example_list.examples.append(example(1.0))
    with pytest.raises(grpc.RpcError) as refused:
        stub.Classify(request, 10.0)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expected classification signature method_name" in refused.value.details()


def _reload(channel: grpc.Channel, config_text: str) -> model_management_pb2.ReloadConfigResponse:
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(config_text, request.config)
    return model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, 30.0)


def _available(channel: grpc.Channel, name: str) -> bool:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    try:
        statuses = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, 10.0)
    except grpc.RpcError:
        return False
    return any(
        status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE for status in statuses.model_version_status
    )


def test_reload_config_swaps_the_served_models_and_refuses_a_bad_config(
    model_base: Path, start_model_server: ServerFactory
) -> None:
    with start_model_server(model_base, MODEL) as running, grpc.insecure_channel(running.grpc_target) as channel:
        wait_for(lambda: _available(channel, MODEL), what="the first model")

        refused = _reload(channel, 'model_config_list { config { name: "spare" } }')  # no base_path
        assert refused.status.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "base_path" in refused.status.error_message
        assert _available(channel, MODEL), "a refused config changes nothing"

        answered = _reload(
            channel,
            f'model_config_list {{ config {{ name: "spare" base_path: "{model_base / "spare"}" }} }}',
        )
        assert answered.status.error_code == 0, answered.status.error_message
        assert _available(channel, "spare")
        assert not _available(channel, MODEL), "a model left out of the new config is no longer served"
        with httpx.Client(base_url=running.rest_url, timeout=30) as client:
            ready = client.get("/readyz").json()
            assert "model spare" in str(ready) and f"model {MODEL}" not in str(ready), ready
            regressed = client.post(
                "/v1/models/spare:regress", json={"signature_name": "regress", "examples": [{"x": 1.0}]}
            )
            assert regressed.json()["result"] == pytest.approx([4.0])
            assert (
                client.post(
                    f"/v1/models/{MODEL}:regress", json={"signature_name": "regress", "examples": [{"x": 1.0}]}
                ).status_code
                == 404
            )
