"""The TF Serving gRPC API (``PredictionService``, ``ModelService``) as a :class:`ModelClient`.

One ``grpc.aio`` channel for all calls. The signature comes from
``GetModelMetadata`` (cached for ``metadata_ttl_s``); the version that served
a request is read from ``PredictResponse.model_spec``.

The ``tensorflow_serving.apis`` protos import TensorFlow's tensor protos, and
with them TensorFlow itself (seconds), so this module is only imported where
gRPC is asked for (``create_model_client("grpc", ...)``), and needs the
``serving-grpc`` extra of ``edgeloop-common`` (grpcio, tensorflow-serving-api).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from edgeloop_common.serving._common import (
    TtlCache,
    as_text,
    choose_signature,
    scores_by_class,
    with_retries,
)
from edgeloop_common.serving.client import BatchPrediction, ModelSignature, SignatureFallback
from edgeloop_common.serving.errors import (
    ModelInputError,
    ModelNotFoundError,
    ModelResponseError,
    ModelServerUnavailableError,
)
from edgeloop_common.serving.route import ModelRoute

TRANSIENT_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


class TfServingGrpcClient:
    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 2,
        backoff_s: float = 0.2,
        metadata_ttl_s: float = 5.0,
        fallback: SignatureFallback | None = None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.fallback = fallback or SignatureFallback()
        self.channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self._signatures: TtlCache[ModelRoute, ModelSignature] = TtlCache(metadata_ttl_s)

    async def close(self) -> None:
        await self.channel.close()

    async def classify(self, route: ModelRoute, images: Sequence[bytes]) -> BatchPrediction:
        signature = await self.signature(route)
        request = predict_pb2.PredictRequest()
        _fill_spec(request.model_spec, route, self.fallback.signature_name)
        request.inputs[signature.input_name].CopyFrom(string_tensor(images))
        response = await self._call(self.predictions.Predict, request, what=f"Predict {route}")
        version = response.model_spec.version.value if response.model_spec.HasField("version") else route.version
        if not version:
            raise ModelResponseError(f"PredictResponse for {route} does not say which version served it")
        return BatchPrediction(
            model_name=route.model_name, model_version=int(version), scores=parse_outputs(response.outputs, signature)
        )

    async def predict_tensors(self, route: ModelRoute, inputs: dict[str, Any]) -> tuple[int, Any]:
        """``Predict`` with named float input tensors (a tabular model: ``{"features": array [n, 25]}``), sent
        packed (``tensor_content``: no per-number encoding, unlike REST's JSON); returns the version that served
        and the outputs by name, as arrays."""
        request = predict_pb2.PredictRequest()
        _fill_spec(request.model_spec, route, self.fallback.signature_name)
        for name, values in inputs.items():
            request.inputs[name].CopyFrom(float_tensor(values))
        response = await self._call(self.predictions.Predict, request, what=f"Predict {route}")
        version = response.model_spec.version.value if response.model_spec.HasField("version") else route.version
        if not version:
            raise ModelResponseError(f"PredictResponse for {route} does not say which version served it")
        return int(version), {name: tensor_array(tensor) for name, tensor in response.outputs.items()}

    async def signature(self, route: ModelRoute) -> ModelSignature:
        cached = self._signatures.get(route)
        if cached is not None:
            return cached
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        _fill_spec(request.model_spec, route, self.fallback.signature_name)
        response = await self._call(self.predictions.GetModelMetadata, request, what=f"GetModelMetadata {route}")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        if "signature_def" not in response.metadata or not response.metadata["signature_def"].Unpack(signature_map):
            raise ModelResponseError(f"GetModelMetadata for {route} returned no signature_def")
        definition = signature_map.signature_def.get(self.fallback.signature_name)
        if definition is None:
            raise ModelResponseError(
                f"model {route} has no signature {self.fallback.signature_name!r} "
                f"(has {sorted(signature_map.signature_def)})"
            )
        signature = choose_signature(_dtypes(definition.inputs), _dtypes(definition.outputs), self.fallback)
        self._signatures.put(route, signature)
        return signature

    async def available(self, route: ModelRoute) -> bool:
        request = get_model_status_pb2.GetModelStatusRequest()
        _fill_spec(request.model_spec, route, signature_name="")
        try:
            response = await self.models.GetModelStatus(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return any(status.state == AVAILABLE for status in response.model_version_status)

    async def _call(self, method: Any, request: Any, *, what: str) -> Any:
        async def once() -> Any:
            try:
                return await method(request, timeout=self.timeout_s)
            except grpc.aio.AioRpcError as exc:
                raise _domain_error(exc, what) from exc

        return await with_retries(once, retries=self.retries, backoff_s=self.backoff_s, what=what)


def _fill_spec(spec: model_pb2.ModelSpec, route: ModelRoute, signature_name: str) -> None:
    spec.name = route.model_name
    if signature_name:
        spec.signature_name = signature_name
    if route.version is not None:
        spec.version.value = route.version
    elif route.label is not None:
        spec.version_label = route.label


def _domain_error(error: grpc.aio.AioRpcError, what: str) -> Exception:
    reason = f"{what}: {error.code().name}: {error.details()}"
    if error.code() in TRANSIENT_CODES:
        return ModelServerUnavailableError(f"model server: {reason}")
    if error.code() == grpc.StatusCode.NOT_FOUND:
        return ModelNotFoundError(f"model server: {reason}")
    return ModelInputError(f"model server rejected {reason}")


def _dtypes(tensors: Any) -> dict[str, str]:
    return {name: types_pb2.DataType.Name(info.dtype) for name, info in tensors.items()}


def string_tensor(values: Sequence[bytes]) -> tensor_pb2.TensorProto:
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=list(values))
    tensor.tensor_shape.dim.add(size=len(values))
    return tensor


def float_tensor(values: Any) -> tensor_pb2.TensorProto:
    """A float32 TensorProto of an array (or nested lists), its numbers packed in ``tensor_content``."""
    array = np.ascontiguousarray(values, dtype=np.float32)
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=array.tobytes())
    for size in array.shape:
        tensor.tensor_shape.dim.add(size=size)
    return tensor


def parse_outputs(outputs: Any, signature: ModelSignature) -> list[dict[str, float]]:
    if signature.scores_output not in outputs:
        raise ModelResponseError(f"PredictResponse lacks output {signature.scores_output!r} ({sorted(outputs)})")
    scores = tensor_array(outputs[signature.scores_output])
    if scores.ndim != 2:
        raise ModelResponseError(f"scores output has shape {scores.shape}; expected [images, classes]")
    classes = None
    if signature.classes_output and signature.classes_output in outputs:
        names = tensor_array(outputs[signature.classes_output])
        classes = [[as_text(name) for name in row] for row in names.reshape(scores.shape)]
    return scores_by_class(scores.tolist(), classes)


def tensor_array(tensor: tensor_pb2.TensorProto) -> np.ndarray:
    """A TensorProto as a numpy array (float or string), from its typed fields or packed ``tensor_content``."""
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    if tensor.dtype == types_pb2.DT_STRING:
        return np.array(list(tensor.string_val), dtype=object).reshape(shape)
    numpy_dtype = {
        types_pb2.DT_FLOAT: np.float32,
        types_pb2.DT_DOUBLE: np.float64,
        types_pb2.DT_HALF: np.float16,
    }.get(tensor.dtype)
    if numpy_dtype is None:
        raise ModelResponseError(f"unexpected output dtype {types_pb2.DataType.Name(tensor.dtype)}")
    if tensor.tensor_content:
        values = np.frombuffer(tensor.tensor_content, dtype=numpy_dtype)
    elif tensor.dtype == types_pb2.DT_FLOAT:
        values = np.array(tensor.float_val, dtype=np.float32)
    elif tensor.dtype == types_pb2.DT_DOUBLE:
        values = np.array(tensor.double_val, dtype=np.float64)
    else:
        values = np.array(tensor.half_val, dtype=np.uint16).view(np.float16)
    if values.size == 1 and int(np.prod(shape)) > 1:  # TF's compact form: one value fills the tensor
        values = np.full(shape, values[0])
    return values.reshape(shape)
