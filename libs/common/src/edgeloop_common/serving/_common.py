"""What the REST and gRPC TF Serving clients share: reading a signature, bounded retries, a TTL cache."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from edgeloop_common.serving.client import ModelSignature, SignatureFallback
from edgeloop_common.serving.errors import ModelResponseError, ModelServerUnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")
K = TypeVar("K")

STRING_DTYPES = {"DT_STRING"}
FLOAT_DTYPES = {"DT_FLOAT", "DT_DOUBLE", "DT_HALF", "DT_BFLOAT16"}


def choose_signature(
    inputs: Mapping[str, str], outputs: Mapping[str, str], fallback: SignatureFallback
) -> ModelSignature:
    """Pick the image input and the scores/classes outputs from ``{tensor name: dtype}`` of a signature.

    The metadata decides; the fallback names only break ties or fill gaps.
    """
    input_name = _pick(inputs, STRING_DTYPES, fallback.input_name)
    if input_name is None:
        input_name = fallback.input_name if not inputs else None
    if input_name is None:
        raise ModelResponseError(f"cannot tell which input takes encoded image bytes among {dict(inputs)}")
    scores_output = _pick(outputs, FLOAT_DTYPES, fallback.scores_output)
    if scores_output is None:
        if outputs:
            raise ModelResponseError(f"cannot tell which output holds the class scores among {dict(outputs)}")
        scores_output = fallback.scores_output
    classes_output = _pick(outputs, STRING_DTYPES, fallback.classes_output)
    if classes_output is None and not outputs:
        classes_output = fallback.classes_output
    return ModelSignature(input_name=input_name, scores_output=scores_output, classes_output=classes_output)


def _pick(tensors: Mapping[str, str], dtypes: set[str], preferred: str) -> str | None:
    candidates = [name for name, dtype in tensors.items() if dtype in dtypes]
    if preferred in candidates:
        return preferred
    if len(candidates) == 1:
        return candidates[0]
    return None


def scores_by_class(
    scores: Sequence[Sequence[float]], classes: Sequence[Sequence[str]] | None
) -> list[dict[str, float]]:
    """Rows of scores (and of class names, or indices where the model has none) -> one dict per image."""
    rows: list[dict[str, float]] = []
    for index, row in enumerate(scores):
        names = [str(name) for name in classes[index]] if classes is not None else [str(i) for i in range(len(row))]
        if len(names) != len(row):
            raise ModelResponseError(f"model returned {len(row)} scores but {len(names)} class names")
        rows.append({name: float(score) for name, score in zip(names, row, strict=True)})
    return rows


def as_text(value: str | bytes) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


async def with_retries(call: Callable[[], Awaitable[T]], *, retries: int, backoff_s: float, what: str) -> T:
    """Run ``call``; retry :class:`ModelServerUnavailableError` up to ``retries`` times with doubling backoff."""
    attempt = 0
    while True:
        try:
            return await call()
        except ModelServerUnavailableError as exc:
            if attempt >= retries:
                raise ModelServerUnavailableError(f"{exc} (after {attempt + 1} attempts)") from exc
            delay = backoff_s * (2**attempt)
            log.info("%s failed (%s); retry %d/%d in %.2fs", what, exc, attempt + 1, retries, delay)
            await asyncio.sleep(delay)
            attempt += 1


@dataclass
class _Entry(Generic[T]):
    value: T
    expires_at: float


class TtlCache(Generic[K, T]):
    """A small map whose entries expire, for resolved model versions and signatures."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[K, _Entry[T]] = {}

    def get(self, key: K) -> T | None:
        entry = self._entries.get(key)
        if entry is None or entry.expires_at < time.monotonic():
            return None
        return entry.value

    def put(self, key: K, value: T) -> None:
        self._entries[key] = _Entry(value, time.monotonic() + self.ttl_s)

    def drop(self, key: K) -> None:
        self._entries.pop(key, None)
