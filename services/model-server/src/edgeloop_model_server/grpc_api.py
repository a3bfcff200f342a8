"""TF Serving's gRPC API (``tensorflow.serving.PredictionService`` and ``ModelService``) on the serving core.

Uses the service definitions of the ``tensorflow-serving-api`` package, so the
official client stubs talk to it unchanged: Predict, Classify, Regress and
GetModelMetadata; GetModelStatus and HandleReloadConfigRequest. MultiInference
answers UNIMPLEMENTED.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from edgeloop_model_server import examples, protocol
from edgeloop_model_server.config import ConfigError, configs_from_proto
from edgeloop_model_server.errors import Code, ServingError, invalid_argument
from edgeloop_model_server.metrics import ServerMetrics
from edgeloop_model_server.savedmodel import DEFAULT_SIGNATURE
from edgeloop_model_server.service import ModelService

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

Request = TypeVar("Request")
Reply = TypeVar("Reply")
Handler = Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Reply]]


def _version_choice(spec: model_pb2.ModelSpec) -> tuple[int | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


def _answered(method: str) -> Callable[[Handler[Request, Reply]], Handler[Request, Reply]]:
    """Turn a :class:`ServingError` into the gRPC status TF Serving would send, and time the call."""

    def decorate(handler: Handler[Request, Reply]) -> Handler[Request, Reply]:
        @functools.wraps(handler)
        async def wrapper(self: Any, request: Request, context: grpc.aio.ServicerContext) -> Reply:
            started, code = time.perf_counter(), Code.OK
            try:
                return await handler(self, request, context)
            except ServingError as exc:
                code = exc.code
                await context.abort(exc.grpc_status, exc.message)
                raise  # abort() raises; this line is never reached
            finally:
                self.metrics.request_duration.labels("grpc", method, code.name).observe(time.perf_counter() - started)

        return wrapper

    return decorate


def _input_arrays(request: predict_pb2.PredictRequest, signature: Any) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for name, proto in request.inputs.items():
        expected = signature.inputs.get(name)
        if expected is not None and proto.dtype != expected.dtype:
            raise invalid_argument(
                f"Expects arg[{name}] to be {tf.dtypes.as_dtype(expected.dtype).name} but "
                f"{tf.dtypes.as_dtype(proto.dtype).name} is provided"
            )
        try:
            arrays[name] = tf.make_ndarray(proto)
        except (TypeError, ValueError) as exc:
            raise invalid_argument(f"input {name}: malformed TensorProto ({exc})") from exc
    return arrays


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    def __init__(self, service: ModelService, metrics: ServerMetrics) -> None:
        self.service = service
        self.metrics = metrics

    @_answered("predict")
    async def Predict(  # the gRPC method name
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        spec = request.model_spec
        version, label = _version_choice(spec)
        async with self.service.lease(spec.name, version, label) as lease:
            signature = lease.servable.signature(spec.signature_name)
            inputs = _input_arrays(request, signature)
            outputs = await self.service.run(lease, spec.signature_name, inputs, request.output_filter)
        response = predict_pb2.PredictResponse(
            model_spec=protocol.model_spec(spec.name, lease.version, spec.signature_name or DEFAULT_SIGNATURE)
        )
        for name, array in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(array))
        return response

    @_answered("classify")
    async def Classify(  # the gRPC method name
        self, request: classification_pb2.ClassificationRequest, context: grpc.aio.ServicerContext
    ) -> classification_pb2.ClassificationResponse:
        spec = request.model_spec
        version, label = _version_choice(spec)
        serialized = examples.examples_from_proto(request.input)
        answered, result = await examples.classify(
            self.service, spec.name, version, label, spec.signature_name, serialized
        )
        return classification_pb2.ClassificationResponse(
            model_spec=protocol.model_spec(spec.name, answered, spec.signature_name or DEFAULT_SIGNATURE), result=result
        )

    @_answered("regress")
    async def Regress(  # the gRPC method name
        self, request: regression_pb2.RegressionRequest, context: grpc.aio.ServicerContext
    ) -> regression_pb2.RegressionResponse:
        spec = request.model_spec
        version, label = _version_choice(spec)
        serialized = examples.examples_from_proto(request.input)
        answered, result = await examples.regress(
            self.service, spec.name, version, label, spec.signature_name, serialized
        )
        return regression_pb2.RegressionResponse(
            model_spec=protocol.model_spec(spec.name, answered, spec.signature_name or DEFAULT_SIGNATURE), result=result
        )

    @_answered("metadata")
    async def GetModelMetadata(  # the gRPC method name
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != protocol.SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {field} is not supported")
        version, label = _version_choice(request.model_spec)
        servable = self.service.find(request.model_spec.name, version, label).servable
        return protocol.metadata_response(request.model_spec.name, servable)


class ModelStatusService(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(self, service: ModelService, metrics: ServerMetrics) -> None:
        self.service = service
        self.metrics = metrics

    @_answered("status")
    async def GetModelStatus(  # the gRPC method name
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        version, label = _version_choice(request.model_spec)
        return protocol.status_response(self.service.status(request.model_spec.name, version, label))

    @_answered("reload_config")
    async def HandleReloadConfigRequest(  # the gRPC method name
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        """Serve the request's model list from now on. Like TF Serving, the outcome is in the response's status
        (INVALID_ARGUMENT with the reason for a config it refuses), the call itself succeeds."""
        response = model_management_pb2.ReloadConfigResponse()
        try:
            configs = configs_from_proto(request.config, "the reload request's config")
            await self.service.reconfigure(configs)
        except (ConfigError, ServingError) as exc:
            response.status.error_code = Code.INVALID_ARGUMENT.value
            response.status.error_message = getattr(exc, "message", None) or str(exc)
            log.warning("reload config refused: %s", response.status.error_message)
            return response
        response.status.error_code = Code.OK.value
        log.info("reloaded config: serving %s", ", ".join(config.name for config in configs))
        return response


async def start_grpc_server(
    service: ModelService, metrics: ServerMetrics, host: str, port: int
) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server on the running event loop; return it and the port it listens on."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(service, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelStatusService(service, metrics), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    log.info("gRPC API (tensorflow.serving.PredictionService, ModelService) on %s:%d", host, bound)
    return server, bound
