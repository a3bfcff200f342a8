"""TF Serving's response messages (the ``tensorflow-serving-api`` protos), and their REST JSON forms.

REST and gRPC answers are built from the same protos, so both say the same
thing; the JSON follows TF Serving's printing options (status: JSON names and
every field; metadata: proto field names and every field).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from edgeloop_model_server.service import Servable, VersionStatus

SIGNATURE_DEF_FIELD = "signature_def"


def model_spec(name: str, version: int, signature_name: str = "") -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name, signature_name=signature_name)
    spec.version.value = version
    return spec


def status_response(statuses: Iterable[VersionStatus]) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in statuses:
        entry = response.model_version_status.add()
        entry.version = status.version
        entry.state = status.state.value
        entry.status.SetInParent()  # TF Serving always sends the status, OK included
        entry.status.error_code = status.error_code.value
        entry.status.error_message = status.error_message
    return response


def metadata_response(name: str, servable: Servable) -> get_model_metadata_pb2.GetModelMetadataResponse:
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for key, signature_def in servable.signature_defs.items():
        signatures.signature_def[key].CopyFrom(signature_def)
    response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=model_spec(name, servable.version))
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signatures)
    return response


def status_json(response: get_model_status_pb2.GetModelStatusResponse) -> dict[str, Any]:
    status: dict[str, Any] = json_format.MessageToDict(response, always_print_fields_with_no_presence=True)
    return status


def metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> dict[str, Any]:
    """``{"model_spec": ..., "metadata": {"signature_def": <SignatureDefMap>}}`` as TF Serving writes it."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF_FIELD].Unpack(signatures)
    options: dict[str, Any] = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
    return {
        "model_spec": json_format.MessageToDict(response.model_spec, **options),
        "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(signatures, **options)},
    }
