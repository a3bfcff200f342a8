"""``create_model_client``: the TF Serving client for a protocol, REST or gRPC."""

from __future__ import annotations

import httpx

from edgeloop_common.serving.client import ModelClient, ModelServerProtocol, SignatureFallback
from edgeloop_common.serving.rest import TfServingRestClient


def create_model_client(
    protocol: ModelServerProtocol,
    *,
    rest_url: str,
    grpc_target: str | None = None,
    timeout_s: float = 10.0,
    connect_timeout_s: float = 2.0,
    retries: int = 2,
    backoff_s: float = 0.2,
    metadata_ttl_s: float = 5.0,
    fallback: SignatureFallback | None = None,
    auth: httpx.Auth | None = None,
) -> ModelClient:
    """A :class:`TfServingRestClient` on ``rest_url``, or a ``TfServingGrpcClient`` on ``grpc_target``.

    The gRPC client is imported only here, when asked for: its protos import TensorFlow (seconds), and it needs
    the ``serving-grpc`` extra. ``connect_timeout_s`` applies to REST (gRPC connects within ``timeout_s``).
    """
    if protocol == "grpc":
        if not grpc_target:
            raise ValueError("the gRPC model client needs a grpc_target (host:port)")
        from edgeloop_common.serving.grpc import TfServingGrpcClient  # imports TensorFlow

        return TfServingGrpcClient(
            grpc_target,
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            metadata_ttl_s=metadata_ttl_s,
            fallback=fallback,
        )
    if protocol == "rest":
        return TfServingRestClient(
            rest_url,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            metadata_ttl_s=metadata_ttl_s,
            fallback=fallback,
            auth=auth,
        )
    raise ValueError(f"unknown model server protocol {protocol!r}; choose rest or grpc")
