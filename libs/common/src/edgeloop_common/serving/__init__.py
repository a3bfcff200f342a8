"""Classification through the TensorFlow Serving API, REST or gRPC: what the inference gateway and the edge agent
share.

* :class:`ModelRoute` (``route.py``): which model and version to ask; :class:`RouteConfigError` when a route
  cannot be understood.
* :class:`ModelClient` (``client.py``): ``classify(route, images) -> BatchPrediction``, ``available(route)``,
  ``close()``; :class:`ModelSignature` and :class:`SignatureFallback` say which tensors carry what.
* :class:`TfServingRestClient` (``rest.py``, also a ``:predict`` passthrough) and ``TfServingGrpcClient``
  (``grpc.py``); :func:`create_model_client` builds either, importing the gRPC one (and with it TensorFlow) only
  when asked for, so importing this package imports neither grpc nor TensorFlow.
* The errors (``errors.py``): :class:`UnclassifiableError` is permanent; :class:`ModelServerUnavailableError`
  and :class:`ModelNotFoundError` are transient.
"""

from edgeloop_common.serving.client import (
    BatchPrediction,
    ModelClient,
    ModelServerProtocol,
    ModelSignature,
    SignatureFallback,
)
from edgeloop_common.serving.errors import (
    ModelInputError,
    ModelNotFoundError,
    ModelResponseError,
    ModelServerUnavailableError,
    ModelServingError,
    UnclassifiableError,
)
from edgeloop_common.serving.factory import create_model_client
from edgeloop_common.serving.rest import TfServingRestClient
from edgeloop_common.serving.route import ModelRoute, RouteConfigError

__all__ = [
    "BatchPrediction",
    "ModelClient",
    "ModelInputError",
    "ModelNotFoundError",
    "ModelResponseError",
    "ModelRoute",
    "ModelServerProtocol",
    "ModelServerUnavailableError",
    "ModelServingError",
    "ModelSignature",
    "RouteConfigError",
    "SignatureFallback",
    "TfServingRestClient",
    "UnclassifiableError",
    "create_model_client",
]
