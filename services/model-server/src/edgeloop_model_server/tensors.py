"""TF Serving's REST tensor encoding: JSON ``instances`` / ``inputs`` to numpy arrays, and outputs back.

Follows TF Serving's ``util/json_tensor.cc`` (the documented REST API):

* row format ``{"instances": [...]}``: one element per example; a plain value
  when the signature has one input, else an object keyed by input name;
  answered as ``{"predictions": [...]}`` (one object per example when the
  signature has several outputs);
* columnar format ``{"inputs": ...}``: a value (one input) or an object of
  named values; answered as ``{"outputs": ...}``;
* binary values travel as ``{"b64": "..."}``; string outputs come back as
  strings, or as ``{"b64": ...}`` when the output name ends in ``_bytes``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from edgeloop_model_server.errors import invalid_argument

B64_KEY = "b64"
BYTES_SUFFIX = "_bytes"


class RequestFormat(enum.Enum):
    ROW = "instances"
    COLUMNAR = "inputs"


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 200 else text[:200] + "..."


def _json_type(value: Any) -> str:
    for kind, name in ((bool, "Bool"), (dict, "Object"), (list, "Array"), (str, "String"), (int, "Number")):
        if isinstance(value, kind):
            return name
    return "Number" if isinstance(value, float) else "Null"


def is_b64_object(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(B64_KEY), str)


def _is_named_object(value: Any) -> bool:
    return isinstance(value, dict) and not is_b64_object(value)


def parse_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid_argument(f"JSON Parse error: {exc}") from exc
    if not isinstance(document, dict):
        raise invalid_argument(f"JSON Value: {_short(document)} Is not object")
    return document


def signature_name(document: Mapping[str, Any]) -> str:
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(
            f"JSON Value: {_short(document.get('signature_name'))} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name


# ---- JSON -> numpy ----------------------------------------------------------------------------------


def _dense_shape(value: Any) -> list[int]:
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _string_leaf(value: Any, dtype: tf.DType) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if is_b64_object(value):
        try:
            return base64.b64decode(value[B64_KEY], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise invalid_argument("Unable to base64 decode") from exc
    if isinstance(value, dict):
        raise invalid_argument(f"JSON Value: {_short(value)} not formatted correctly for base64 data")
    raise invalid_argument(
        f"JSON Value: {_short(value)} Type: {_json_type(value)} is not of expected type: {dtype.name}"
    )


def _flatten_strings(value: Any, shape: list[int], level: int, dtype: tf.DType, out: list[bytes]) -> None:
    if not isinstance(value, list):
        if level != len(shape):
            raise invalid_argument(
                f"JSON Value: {_short(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {len(shape)}"
            )
        out.append(_string_leaf(value, dtype))
        return
    if level >= len(shape):
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _flatten_strings(item, shape, level + 1, dtype, out)


def _to_array(value: Any, info: meta_graph_pb2.TensorInfo) -> np.ndarray:
    dtype = tf.dtypes.as_dtype(info.dtype)
    if dtype == tf.string:
        shape = _dense_shape(value)
        flat: list[bytes] = []
        _flatten_strings(value, shape, 0, dtype, flat)
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged lists
        raise invalid_argument(f"JSON Value: {_short(value)} is not a dense tensor: {exc}") from exc
    kind = array.dtype.kind
    acceptable = "b" if dtype.is_bool else ("iu" if dtype.is_integer else "iuf")
    if kind not in acceptable and array.size:
        raise invalid_argument(
            f"JSON Value: {_short(value)} Type: {_json_type(value)} is not of expected type: {dtype.name}"
        )
    return array.astype(dtype.as_numpy_dtype)


def request_inputs(
    document: Mapping[str, Any], signature: meta_graph_pb2.SignatureDef
) -> tuple[dict[str, np.ndarray], RequestFormat]:
    """The named input arrays of a predict request body, and which format it used."""
    specs = signature.inputs
    if not specs:
        raise invalid_argument("Failed to get input map for signature")
    if "instances" in document and "inputs" in document:
        raise invalid_argument("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if "instances" in document:
        return _row_inputs(document["instances"], specs), RequestFormat.ROW
    if "inputs" in document:
        return _columnar_inputs(document["inputs"], specs), RequestFormat.COLUMNAR
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _row_inputs(instances: Any, specs: Mapping[str, meta_graph_pb2.TensorInfo]) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise invalid_argument("Excepting 'instances' to be an list/array")
    if not instances:
        raise invalid_argument("No values in 'instances' array")
    named = _is_named_object(instances[0])
    if not named and len(specs) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
            "tensorinfo_map"
        )
    if not named:
        (name,) = specs
        if any(_is_named_object(item) for item in instances):
            raise invalid_argument("Expecting value/list but got object in 'instances' list")
        return {name: _to_array(list(instances), specs[name])}
    columns: dict[str, list[Any]] = {name: [] for name in specs}
    for index, item in enumerate(instances):
        if not _is_named_object(item):
            raise invalid_argument(f"Expecting object but got list at item {index} of input list")
        if set(item) != set(specs):
            raise invalid_argument(
                f"Failed to process element: {index} of 'instances' list. JSON object: {_short(item)} keys must be "
                f"equal to: {','.join(sorted(specs))}"
            )
        for name in specs:
            columns[name].append(item[name])
    return {name: _to_array(values, specs[name]) for name, values in columns.items()}


def _columnar_inputs(inputs: Any, specs: Mapping[str, meta_graph_pb2.TensorInfo]) -> dict[str, np.ndarray]:
    if not _is_named_object(inputs):
        if len(specs) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
                "tensorinfo_map"
            )
        (name,) = specs
        return {name: _to_array(inputs, specs[name])}
    arrays: dict[str, np.ndarray] = {}
    for name, info in specs.items():
        if name not in inputs:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = _to_array(inputs[name], info)
    return arrays


# ---- numpy -> JSON ----------------------------------------------------------------------------------


def _decode_strings(value: Any, as_b64: bool) -> Any:
    if isinstance(value, list):
        return [_decode_strings(item, as_b64) for item in value]
    if isinstance(value, bytes | np.bytes_):
        data = bytes(value)
        if as_b64:
            return {B64_KEY: base64.b64encode(data).decode("ascii")}
        return data.decode("utf-8", errors="replace")
    return value


def to_json_value(name: str, array: np.ndarray) -> Any:
    if array.dtype == object or array.dtype.kind == "S":
        return _decode_strings(array.tolist(), as_b64=name.endswith(BYTES_SUFFIX))
    return array.tolist()  # float32 -> the exact same value as a Python float


def response_body(outputs: Mapping[str, np.ndarray], request_format: RequestFormat) -> dict[str, Any]:
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    if request_format is RequestFormat.COLUMNAR:
        if len(outputs) == 1:
            ((name, array),) = outputs.items()
            return {"outputs": to_json_value(name, array)}
        return {"outputs": {name: to_json_value(name, array) for name, array in outputs.items()}}
    batch_size = -1
    for name, array in outputs.items():
        if array.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch_size >= 0 and array.shape[0] != batch_size:
            raise invalid_argument(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch_size}"
            )
        batch_size = array.shape[0]
    columns = {name: to_json_value(name, array) for name, array in outputs.items()}
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    return {"predictions": [{name: column[i] for name, column in columns.items()} for i in range(batch_size)]}
