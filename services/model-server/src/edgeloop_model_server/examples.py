"""TF Serving's Classify and Regress on the serving core: tf.Example inputs, classification/regression outputs.

Both transports end here: the REST ``:classify`` / ``:regress`` bodies (``{"examples": [{feature: value}],
"context": {...}}``) and the gRPC ``Input`` proto (``example_list`` or ``example_list_with_context``) become a
batch of serialized ``tf.Example``s fed to the signature's single string input ``inputs``, as TF Serving does.
The signature must say what it is: ``method_name`` ``tensorflow/serving/classify`` (outputs ``classes`` and/or
``scores``) or ``tensorflow/serving/regress`` (output ``outputs``); a predict signature is refused with TF
Serving's message.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from edgeloop_model_server.errors import invalid_argument
from edgeloop_model_server.savedmodel import DEFAULT_SIGNATURE
from edgeloop_model_server.service import ModelService

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
INPUTS = "inputs"
CLASSES = "classes"
SCORES = "scores"
OUTPUTS = "outputs"


# ---- inputs: JSON examples and Input protos -> serialized tf.Examples ------------------------------------------


def _feature(name: str, value: Any) -> feature_pb2.Feature:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise invalid_argument(f"feature {name}: an empty list has no type")
    if any(
        isinstance(item, bool) or item is None or (isinstance(item, list | dict) and not _is_b64(item))
        for item in values
    ):
        raise invalid_argument(f'feature {name}: values must be numbers, strings or {{"b64": ...}}, got {values!r:.80}')
    if all(isinstance(item, int) for item in values):
        return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=values))
    if all(isinstance(item, int | float) for item in values):
        return feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[float(item) for item in values]))
    if all(isinstance(item, str) or _is_b64(item) for item in values):
        return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[_bytes(name, item) for item in values]))
    raise invalid_argument(f"feature {name}: a list mixes numbers and strings")


def _unsupported(item: Any) -> bool:
    return isinstance(item, bool) or item is None or (isinstance(item, list | dict) and not _is_b64(item))


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)


def _bytes(name: str, value: str | dict[str, str]) -> bytes:
    if isinstance(value, str):
        return value.encode()
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid_argument(f"feature {name}: 'b64' is not valid base64") from exc


def _example(document: Any, where: str) -> example_pb2.Example:
    if not isinstance(document, dict):
        raise invalid_argument(f"{where} must be a JSON object of feature name: value")
    example = example_pb2.Example()
    for name, value in document.items():
        example.features.feature[name].CopyFrom(_feature(name, value))
    return example


def examples_from_json(document: Mapping[str, Any]) -> list[bytes]:
    """The REST body's ``examples`` (each merged with ``context``, when given) as serialized tf.Examples."""
    examples = document.get("examples")
    if not isinstance(examples, list) or not examples:
        raise invalid_argument("'examples' must be a non-empty JSON array of objects")
    context = _example(document["context"], "'context'").SerializeToString() if "context" in document else b""
    # A serialized context followed by a serialized example parses as their merge (the example wins on a name
    # both carry): what TF Serving feeds the model for an input with context.
    return [context + _example(item, f"examples[{index}]").SerializeToString() for index, item in enumerate(examples)]


def examples_from_proto(model_input: input_pb2.Input) -> list[bytes]:
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        serialized = [example.SerializeToString() for example in model_input.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = model_input.example_list_with_context
        context = with_context.context.SerializeToString()
        serialized = [context + example.SerializeToString() for example in with_context.examples]
    else:
        raise invalid_argument("Input is empty")
    if not serialized:
        raise invalid_argument("Input is empty")
    return serialized


# ---- signatures --------------------------------------------------------------------------------------------


def check_signature(signature: meta_graph_pb2.SignatureDef, method: str, signature_name: str) -> None:
    kind = "classification" if method == CLASSIFY_METHOD else "regression"
    if signature.method_name != method:
        raise invalid_argument(
            f"Expected {kind} signature method_name to be {method}. Was: {signature.method_name} "
            f"(signature {signature_name!r})"
        )
    if set(signature.inputs) != {INPUTS} or signature.inputs[INPUTS].dtype != types_pb2.DT_STRING:
        raise invalid_argument(f"Expected one string input tensor '{INPUTS}' for the {kind} signature")
    wanted = {CLASSES, SCORES} if method == CLASSIFY_METHOD else {OUTPUTS}
    if not wanted & set(signature.outputs):
        raise invalid_argument(f"Expected output tensor(s) {sorted(wanted)} in the {kind} signature")


def inputs_of(serialized: Sequence[bytes]) -> dict[str, np.ndarray]:
    return {INPUTS: np.array(list(serialized), dtype=object)}


# ---- outputs -> results ------------------------------------------------------------------------------------


def _batch(name: str, array: np.ndarray, batch: int) -> np.ndarray:
    if array.ndim == 0 or array.shape[0] != batch:
        raise invalid_argument(f"Expected {name} output batch size of {batch}, got {array.shape}")
    return array.reshape(batch, -1)


def classification_result(outputs: Mapping[str, np.ndarray], batch: int) -> classification_pb2.ClassificationResult:
    scores = _batch(SCORES, outputs[SCORES], batch).astype(float) if SCORES in outputs else None
    classes = _batch(CLASSES, outputs[CLASSES], batch) if CLASSES in outputs else None
    if scores is not None and classes is not None and scores.shape != classes.shape:
        raise invalid_argument(f"classes {classes.shape} and scores {scores.shape} differ in shape")
    result = classification_pb2.ClassificationResult()
    width = (scores if scores is not None else classes).shape[1]  # type: ignore[union-attr]
    for row in range(batch):
        classifications = result.classifications.add()
        for column in range(width):
            entry = classifications.classes.add()
            if classes is not None:
                label = classes[row, column]
                entry.label = label.decode(errors="replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                entry.score = float(scores[row, column])
    return result


def regression_result(outputs: Mapping[str, np.ndarray], batch: int) -> regression_pb2.RegressionResult:
    values = _batch(OUTPUTS, outputs[OUTPUTS], batch)
    if values.shape[1] != 1:
        raise invalid_argument(f"Expected one regression output per example, got {values.shape[1]}")
    result = regression_pb2.RegressionResult()
    for value in values[:, 0]:
        result.regressions.add().value = float(value)
    return result


def classification_json(result: classification_pb2.ClassificationResult) -> dict[str, Any]:
    """TF Serving's REST form: ``{"result": [[[label, score], ...], ...]}``."""
    return {"result": [[[entry.label, entry.score] for entry in row.classes] for row in result.classifications]}


def regression_json(result: regression_pb2.RegressionResult) -> dict[str, Any]:
    return {"result": [entry.value for entry in result.regressions]}


# ---- the calls, for both transports ------------------------------------------------------------------------


async def classify(
    service: ModelService,
    name: str,
    version: int | None,
    label: str | None,
    signature_name: str,
    serialized: list[bytes],
) -> tuple[int, classification_pb2.ClassificationResult]:
    """Run a classification signature on serialized tf.Examples: the version that answered, and the result."""
    answered, outputs = await _run(service, name, version, label, signature_name, serialized, CLASSIFY_METHOD)
    return answered, classification_result(outputs, len(serialized))


async def regress(
    service: ModelService,
    name: str,
    version: int | None,
    label: str | None,
    signature_name: str,
    serialized: list[bytes],
) -> tuple[int, regression_pb2.RegressionResult]:
    answered, outputs = await _run(service, name, version, label, signature_name, serialized, REGRESS_METHOD)
    return answered, regression_result(outputs, len(serialized))


async def _run(
    service: ModelService,
    name: str,
    version: int | None,
    label: str | None,
    signature_name: str,
    serialized: list[bytes],
    method: str,
) -> tuple[int, dict[str, np.ndarray]]:
    async with service.lease(name, version, label) as lease:
        check_signature(lease.servable.signature(signature_name), method, signature_name or DEFAULT_SIGNATURE)
        outputs = await service.run(lease, signature_name, inputs_of(serialized))
    return lease.version, outputs
