"""What a model client raises, and which of its errors no retry can fix.

An :class:`UnclassifiableError` is permanent: a caller gives the picture up at once (the gateway dead-letters
its event and answers HTTP 4xx). The other model-server errors are transient: the client has already retried
them (its ``retries``); a caller may try again later.
"""

from __future__ import annotations


class UnclassifiableError(Exception):
    """No retry can classify this image (bad input, or a model that does not classify): give it up at once.

    A service's own permanent errors (a picture that is not a JPEG, a blob whose hash is wrong) subclass it too.
    """


class ModelServingError(Exception):
    """Base of the errors a :class:`~edgeloop_common.serving.ModelClient` raises."""


class ModelInputError(ModelServingError, UnclassifiableError):
    """The model server rejected the input (TF Serving INVALID_ARGUMENT / HTTP 400)."""


class ModelResponseError(ModelServingError, UnclassifiableError):
    """The model's signature or response is not one the client understands (wrong model for classification)."""


class ModelServerUnavailableError(ModelServingError):
    """The model server could not be reached or answered with a transient error (after the client's retries)."""


class ModelNotFoundError(ModelServingError):
    """The model server does not serve this model or version (yet): transient, it may be loading."""
