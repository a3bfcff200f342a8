"""What the REST and gRPC clients share: reading a signature, scores by class, bounded retries, the TTL cache; and
the model-server errors' kinds."""

from __future__ import annotations

import time

import pytest
from edgeloop_common.serving import (
    ModelInputError,
    ModelNotFoundError,
    ModelResponseError,
    ModelServerUnavailableError,
    ModelServingError,
    ModelSignature,
    SignatureFallback,
    UnclassifiableError,
    create_model_client,
)
from edgeloop_common.serving._common import TtlCache, choose_signature, scores_by_class, with_retries

FALLBACK = SignatureFallback()


def test_the_signature_comes_from_the_dtypes_and_the_fallback_names_break_ties() -> None:
    exported = choose_signature({"jpeg": "DT_STRING"}, {"probs": "DT_FLOAT", "names": "DT_STRING"}, FALLBACK)
    assert exported == ModelSignature(input_name="jpeg", scores_output="probs", classes_output="names")
    tie = choose_signature(
        {"image_bytes": "DT_STRING", "key": "DT_STRING"},
        {"scores": "DT_FLOAT", "logits": "DT_FLOAT"},
        FALLBACK,
    )
    assert tie == ModelSignature(input_name="image_bytes", scores_output="scores", classes_output=None)
    unknown = choose_signature({}, {}, FALLBACK)  # metadata says nothing: the fallback names
    assert unknown == ModelSignature(input_name="image_bytes", scores_output="scores", classes_output="classes")


def test_a_signature_that_cannot_be_read_is_a_model_response_error() -> None:
    with pytest.raises(ModelResponseError, match="encoded image bytes"):
        choose_signature({"pixels": "DT_FLOAT"}, {"scores": "DT_FLOAT"}, FALLBACK)
    with pytest.raises(ModelResponseError, match="class scores"):
        choose_signature({"x": "DT_STRING"}, {"a": "DT_FLOAT", "b": "DT_FLOAT"}, FALLBACK)


def test_scores_by_class_names_each_score() -> None:
    assert scores_by_class([[0.2, 0.8]], [["cat", "dog"]]) == [{"cat": 0.2, "dog": 0.8}]
    assert scores_by_class([[0.2, 0.8]], None) == [{"0": 0.2, "1": 0.8}]
    with pytest.raises(ModelResponseError, match="2 scores but 3 class names"):
        scores_by_class([[0.2, 0.8]], [["cat", "dog", "fox"]])


async def test_with_retries_retries_only_what_is_transient() -> None:
    calls: list[str] = []

    async def flaky() -> str:
        calls.append("call")
        if len(calls) < 3:
            raise ModelServerUnavailableError("down")
        return "up"

    assert await with_retries(flaky, retries=2, backoff_s=0.001, what="flaky") == "up"
    calls.clear()
    with pytest.raises(ModelServerUnavailableError, match=r"down \(after 2 attempts\)"):
        await with_retries(flaky, retries=1, backoff_s=0.001, what="flaky")

    async def rejected() -> str:
        calls.append("rejected")
        raise ModelInputError("bad image")

    calls.clear()
    with pytest.raises(ModelInputError):
        await with_retries(rejected, retries=5, backoff_s=0.001, what="rejected")
    assert calls == ["rejected"]


def test_ttl_cache_entries_expire() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl_s=0.05)
    cache.put("a", 1)
    assert cache.get("a") == 1 and cache.get("b") is None
    time.sleep(0.06)
    assert cache.get("a") is None
    cache.put("a", 2)
    cache.drop("a")
    assert cache.get("a") is None


def test_which_errors_no_retry_can_fix() -> None:
    assert issubclass(ModelInputError, UnclassifiableError) and issubclass(ModelResponseError, UnclassifiableError)
    for transient in (ModelServerUnavailableError, ModelNotFoundError):
        assert not issubclass(transient, UnclassifiableError)
    for error in (ModelInputError, ModelResponseError, ModelServerUnavailableError, ModelNotFoundError):
        assert issubclass(error, ModelServingError)


def test_create_model_client_refuses_what_it_cannot_build() -> None:
    with pytest.raises(ValueError, match="needs a grpc_target"):
        create_model_client("grpc", rest_url="http://127.0.0.1:8501", grpc_target=None)
    with pytest.raises(ValueError, match="unknown model server protocol 'soap'"):
        create_model_client("soap", rest_url="http://127.0.0.1:8501")  # type: ignore[arg-type]
