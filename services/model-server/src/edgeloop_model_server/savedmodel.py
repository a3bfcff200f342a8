"""TensorFlow SavedModels as servables: load a version folder, describe its signatures, run them.

Everything here blocks (TensorFlow calls); the serving core runs it in thread pools.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from edgeloop_model_server.errors import Code, ServingError, invalid_argument

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


class LoadError(Exception):
    """A version folder that cannot be served; the message says why."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def read_signature_defs(version_dir: Path) -> Mapping[str, meta_graph_pb2.SignatureDef]:
    """The ``serve`` MetaGraph's SignatureDefs, read from ``saved_model.pb`` as TF Serving reads them."""
    saved_model = saved_model_pb2.SavedModel()
    binary, text = version_dir / "saved_model.pb", version_dir / "saved_model.pbtxt"
    try:
        if binary.exists():
            saved_model.ParseFromString(binary.read_bytes())
        else:
            from google.protobuf import text_format

            text_format.Parse(text.read_text(), saved_model)
    except (DecodeError, ValueError, OSError) as exc:
        raise LoadError(Code.DATA_LOSS, f"cannot parse the SavedModel in {version_dir}: {exc}") from exc
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise LoadError(Code.NOT_FOUND, f"the SavedModel in {version_dir} has no MetaGraph tagged 'serve'")


class SavedModelServable:
    """One loaded version: its SignatureDefs (for metadata and input checks) and its callable signatures."""

    def __init__(self, model_name: str, version: int, path: Path) -> None:
        self.model_name = model_name
        self.version = version
        self.path = path
        self.signature_defs = read_signature_defs(path)
        try:
            self._loaded = tf.saved_model.load(str(path), tags=["serve"])
        except (tf.errors.OpError, OSError, ValueError, KeyError, DecodeError) as exc:
            code = Code(exc.error_code) if isinstance(exc, tf.errors.OpError) else Code.DATA_LOSS
            raise LoadError(code, f"cannot load the SavedModel in {path}: {_first_line(exc)}") from exc
        self._functions = dict(self._loaded.signatures.items())

    def signature(self, name: str) -> meta_graph_pb2.SignatureDef:
        """The SignatureDef of ``name`` (empty means ``serving_default``), or INVALID_ARGUMENT."""
        key = name or DEFAULT_SIGNATURE
        if key not in self.signature_defs or key not in self._functions:
            raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
        return self.signature_defs[key]

    def run(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: Iterable[str] = ()
    ) -> dict[str, np.ndarray]:
        """Run one signature on numpy inputs keyed by the signature's input aliases."""
        key = signature_name or DEFAULT_SIGNATURE
        signature = self.signature(key)
        _check_input_names(signature, inputs)
        wanted = list(output_filter)
        unknown = [name for name in wanted if name not in signature.outputs]
        if unknown:
            raise invalid_argument(
                f"output tensor alias not found in signature: {unknown[0]} Outputs expected to be in the set "
                f"{{{','.join(sorted(signature.outputs))}}}."
            )
        tensors = {name: _to_tensor(name, value, signature.inputs[name]) for name, value in inputs.items()}
        try:
            outputs = self._functions[key](**tensors)
        except tf.errors.OpError as exc:
            raise ServingError(Code(exc.error_code), op_error_message(exc)) from exc
        except (TypeError, ValueError) as exc:  # the signature refused the inputs' shapes or types
            raise invalid_argument(_first_line(exc)) from exc
        return {name: tensor.numpy() for name, tensor in outputs.items() if not wanted or name in wanted}

    def warm_up(self) -> int:
        """Replay ``assets.extra/tf_serving_warmup_requests`` (TF Serving's format) or send one synthesized
        request; return the number of requests run. A failing recorded warm-up request fails the load."""
        records = self.path / WARMUP_FILE
        if records.exists():
            return self._replay_warmup_records(records)
        return self._synthesized_warmup()

    def _replay_warmup_records(self, records: Path) -> int:
        count = 0
        try:
            for raw in tf.data.TFRecordDataset(str(records)).take(MAX_WARMUP_RECORDS).as_numpy_iterator():
                prediction_log = prediction_log_pb2.PredictionLog.FromString(raw)
                if prediction_log.WhichOneof("log_type") != "predict_log":
                    continue  # classify/regress warm-up records: this server answers Predict only
                request = prediction_log.predict_log.request
                inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
                self.run(request.model_spec.signature_name, inputs, request.output_filter)
                count += 1
        except (ServingError, tf.errors.OpError, DecodeError) as exc:
            raise LoadError(Code.INVALID_ARGUMENT, f"warm-up request from {records} failed: {exc}") from exc
        return count

    def _synthesized_warmup(self) -> int:
        """Without recorded requests: one request of batch 1 (a tiny PNG for string inputs, zeros otherwise)."""
        if DEFAULT_SIGNATURE not in self.signature_defs:
            return 0
        signature = self.signature_defs[DEFAULT_SIGNATURE]
        inputs = {name: _synthesized_input(info) for name, info in signature.inputs.items()}
        try:
            self.run(DEFAULT_SIGNATURE, inputs)
        except ServingError as exc:  # the model wants other inputs than a guess can give; it still serves
            log.info("%s version %d: synthesized warm-up request not accepted (%s)", self.model_name, self.version, exc)
            return 0
        return 1

    def close(self) -> None:
        self._functions.clear()
        self._loaded = None


_EAGER_NOISE = ("Graph execution error", "Detected at node", "<stack traces unavailable>")


def op_error_message(exc: tf.errors.OpError) -> str:
    """The model's own error, without eager execution's preamble (what TF Serving would report)."""
    lines = [
        line
        for line in exc.message.splitlines()
        # A TF1 graph's op error carries the Python stack where the op was built: not the caller's business.
        if line.strip() and not line.startswith(_EAGER_NOISE) and not line.lstrip().startswith('File "')
    ]
    return re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", "\n".join(lines)) or exc.message


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _check_input_names(signature: meta_graph_pb2.SignatureDef, inputs: Mapping[str, Any]) -> None:
    sent, expected = set(inputs), set(signature.inputs)
    if sent == expected:
        return
    extra, missing = sorted(sent - expected), sorted(expected - sent)
    raise invalid_argument(
        f"input size does not match signature: {len(sent)}!={len(expected)} len({{{','.join(sorted(sent))}}}) != "
        f"len({{{','.join(sorted(expected))}}}). Sent extra: {{{','.join(extra)}}}. "
        f"Missing but required: {{{','.join(missing)}}}."
    )


def _to_tensor(name: str, value: np.ndarray, info: meta_graph_pb2.TensorInfo) -> tf.Tensor:
    dtype = tf.dtypes.as_dtype(info.dtype)
    try:
        return tf.convert_to_tensor(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise invalid_argument(f"input {name}: expects {dtype.name} values ({_first_line(exc)})") from exc


@functools.cache
def _tiny_png() -> bytes:
    return bytes(tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8)).numpy())


def _synthesized_input(info: meta_graph_pb2.TensorInfo) -> np.ndarray:
    dims = [1 if dim.size < 0 else dim.size for dim in info.tensor_shape.dim] or [1]
    dtype = tf.dtypes.as_dtype(info.dtype)
    if dtype == tf.string:
        return np.full(dims, _tiny_png(), dtype=object)
    return np.zeros(dims, dtype=dtype.as_numpy_dtype)
