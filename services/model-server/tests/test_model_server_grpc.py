"""TF Serving's gRPC API through the official ``tensorflow-serving-api`` client stubs."""

from __future__ import annotations

import base64
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

pytestmark = pytest.mark.tf


def predict_request(model_name: str, images: list[bytes]) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "serving_default"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return request


def test_predict_returns_scores_class_names_and_the_version(
    grpc_channel: grpc.Channel, trained_model_name: str, capture_images: list[Path]
) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc_channel)

    response = stub.Predict(predict_request(trained_model_name, [capture_images[0].read_bytes()]), 10.0)

    assert response.model_spec.name == trained_model_name
    assert response.model_spec.version.value == 1
    scores = tf.make_ndarray(response.outputs["scores"])
    classes = tf.make_ndarray(response.outputs["classes"])
    assert scores.shape == (1, 2) and scores.dtype == np.float32
    assert float(scores.sum()) == pytest.approx(1.0, abs=1e-5)
    assert [name.decode() for name in classes[0]] == ["cat", "dog"]


def test_grpc_and_rest_give_the_same_scores_for_the_same_image(
    grpc_channel: grpc.Channel, rest: httpx.Client, trained_model_name: str, capture_images: list[Path]
) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc_channel)
    for image in capture_images:
        data = image.read_bytes()
        over_grpc = tf.make_ndarray(stub.Predict(predict_request(trained_model_name, [data]), 10.0).outputs["scores"])
        over_rest = rest.post(
            f"/v1/models/{trained_model_name}:predict",
            json={"instances": [{"b64": base64.b64encode(data).decode("ascii")}]},
        ).json()["predictions"][0]["scores"]

        assert np.allclose(over_grpc[0], over_rest, atol=1e-5, rtol=0), image.name
        assert float(over_grpc.sum()) == pytest.approx(1.0, abs=1e-5)


def test_get_model_metadata_returns_the_signature_def_map(grpc_channel: grpc.Channel, trained_model_name: str) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc_channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = trained_model_name
    request.metadata_field.append("signature_def")

    response = stub.GetModelMetadata(request, 10.0)

    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    serving = signatures.signature_def["serving_default"]
    assert response.model_spec.version.value == 1
    assert serving.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    assert set(serving.outputs) == {"scores", "classes"}


def test_get_model_status(grpc_channel: grpc.Channel, trained_model_name: str) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(grpc_channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = trained_model_name

    response = stub.GetModelStatus(request, 10.0)

    assert [(s.version, s.state) for s in response.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    ]
    assert response.model_version_status[0].status.error_code == 0


def test_errors_carry_tf_servings_status_codes(grpc_channel: grpc.Channel, trained_model_name: str) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc_channel)

    with pytest.raises(grpc.RpcError) as unknown_model:
        stub.Predict(predict_request("no-such-model", [b"x"]), 10.0)
    with pytest.raises(grpc.RpcError) as not_an_image:
        stub.Predict(predict_request(trained_model_name, [b"not an image"]), 10.0)
    unknown_version = predict_request(trained_model_name, [b"x"])
    unknown_version.model_spec.version.value = 99
    with pytest.raises(grpc.RpcError) as missing_version:
        stub.Predict(unknown_version, 10.0)

    assert unknown_model.value.code() == grpc.StatusCode.NOT_FOUND
    assert missing_version.value.code() == grpc.StatusCode.NOT_FOUND
    assert not_an_image.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not_an_image.value.details()
