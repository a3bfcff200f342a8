"""TfServingRestClient against a fake TF Serving REST API (httpx.MockTransport): versions, labels, errors, retries.

The same client against the real lite model server and a really trained model: test_serving_model_server.py.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from edgeloop_common.serving import (
    ModelInputError,
    ModelNotFoundError,
    ModelResponseError,
    ModelRoute,
    ModelServerUnavailableError,
    SignatureFallback,
    TfServingRestClient,
)


def signature(inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, Any]:
    return {
        "inputs": {name: {"dtype": dtype, "name": f"{name}:0"} for name, dtype in inputs.items()},
        "outputs": {name: {"dtype": dtype, "name": f"{name}:0"} for name, dtype in outputs.items()},
    }


CLASSIFIER = signature({"images": "DT_STRING"}, {"probabilities": "DT_FLOAT", "labels": "DT_STRING"})


@dataclass
class FakeTfServing:
    """One model (``catdog``) with versions, a ``stable`` label and a classifier signature, over TF Serving REST."""

    versions: list[int] = field(default_factory=lambda: [1, 2])
    labels: dict[str, int] = field(default_factory=lambda: {"stable": 1})
    signature_def: dict[str, Any] = field(default_factory=lambda: CLASSIFIER)
    fail_next: list[int] = field(default_factory=list)  # HTTP statuses to answer first, whatever is asked
    reachable: bool = True
    requests: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        path = request.url.path
        self.requests.append((request.method, path, body))
        if not self.reachable:
            raise httpx.ConnectError("connection refused", request=request)
        if self.fail_next:
            status = self.fail_next.pop(0)
            return httpx.Response(status, json={"error": f"failing with {status}"})
        model_path, _, verb = path.partition(":")
        parts = model_path.strip("/").split("/")  # v1 models catdog [versions N | labels L] [metadata]
        if parts[:3] != ["v1", "models", "catdog"]:
            return httpx.Response(404, json={"error": f"Servable not found for request: Latest({parts[2]})"})
        rest = parts[3:]
        version = max(self.versions)
        if rest[:1] == ["versions"]:
            version = int(rest[1])
            rest = rest[2:]
        elif rest[:1] == ["labels"]:
            if rest[1] not in self.labels:
                return httpx.Response(404, json={"error": f"Unknown version label {rest[1]}"})
            version = self.labels[rest[1]]
            rest = rest[2:]
        if version not in self.versions:
            return httpx.Response(404, json={"error": f"Servable not found for request: Specific(catdog, {version})"})
        if verb == "predict":
            return self.predict(version, body or {})
        if rest == ["metadata"]:
            return httpx.Response(
                200,
                json={
                    "model_spec": {"name": "catdog", "signature_name": "", "version": str(version)},
                    "metadata": {"signature_def": {"signature_def": {"serving_default": self.signature_def}}},
                },
            )
        statuses = [{"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK"}} for v in self.versions]
        return httpx.Response(200, json={"model_version_status": statuses})

    def predict(self, version: int, body: dict[str, Any]) -> httpx.Response:
        images = [base64.b64decode(item["b64"]) for item in body["inputs"]["images"]]
        if any(not image.startswith(b"\xff\xd8") for image in images):
            return httpx.Response(400, json={"error": "INVALID_ARGUMENT: Invalid JPEG data"})
        cat = {1: 0.75, 2: 0.25}.get(version, 0.5)
        return httpx.Response(
            200,
            json={
                "outputs": {
                    "probabilities": [[cat, 1.0 - cat] for _ in images],
                    "labels": [["cat", "dog"] for _ in images],
                }
            },
        )


JPEG = b"\xff\xd8\xff\xe0 a JPEG, as far as the fake can tell"


@pytest.fixture
def server() -> FakeTfServing:
    return FakeTfServing()


@pytest.fixture
async def client(server: FakeTfServing) -> AsyncIterator[TfServingRestClient]:
    client = TfServingRestClient(
        "http://tf-serving:8501/", retries=2, backoff_s=0.001, transport=httpx.MockTransport(server)
    )
    yield client
    await client.close()


async def test_the_latest_version_answers_and_says_so(client: TfServingRestClient, server: FakeTfServing) -> None:
    prediction = await client.classify(ModelRoute("catdog"), [JPEG, JPEG])
    assert (prediction.model_name, prediction.model_version) == ("catdog", 2)
    assert prediction.scores == [{"cat": 0.25, "dog": 0.75}] * 2
    # the metadata named the version; the predict call named it explicitly, with the signature's input
    [(_, predict_path, body)] = [request for request in server.requests if request[1].endswith(":predict")]
    assert predict_path == "/v1/models/catdog/versions/2:predict"
    assert body is not None and body["signature_name"] == "serving_default"
    assert [base64.b64decode(item["b64"]) for item in body["inputs"]["images"]] == [JPEG, JPEG]


async def test_a_label_and_a_pinned_version_are_served_by_their_version(client: TfServingRestClient) -> None:
    assert (await client.classify(ModelRoute.parse("catdog:stable"), [JPEG])).model_version == 1
    assert (await client.classify(ModelRoute.parse("catdog:2"), [JPEG])).model_version == 2


async def test_the_resolved_version_is_cached_and_resolved_again_when_it_is_unloaded(
    client: TfServingRestClient, server: FakeTfServing
) -> None:
    route = ModelRoute("catdog")
    await client.classify(route, [JPEG])
    await client.classify(route, [JPEG])
    assert sum(path.endswith("/metadata") for _, path, _ in server.requests) == 1  # within metadata_ttl_s
    server.versions = [3]  # version 2 unloaded, 3 loaded
    assert (await client.classify(route, [JPEG])).model_version == 3  # a 404 on version 2, then resolved again


async def test_transient_failures_are_retried_then_reported_with_the_count(
    client: TfServingRestClient, server: FakeTfServing
) -> None:
    server.fail_next = [503, 502]
    assert (await client.classify(ModelRoute("catdog"), [JPEG])).model_version == 2  # the third attempt worked
    server.fail_next = [503, 503, 503]
    with pytest.raises(ModelServerUnavailableError, match=r"HTTP 503 .*after 3 attempts"):
        await client.classify(ModelRoute("catdog", version=1), [JPEG])
    server.reachable = False
    with pytest.raises(ModelServerUnavailableError, match="unreachable"):
        await client.classify(ModelRoute("catdog", version=1), [JPEG])


async def test_errors_say_what_went_wrong(client: TfServingRestClient, server: FakeTfServing) -> None:
    with pytest.raises(ModelInputError, match="Invalid JPEG"):
        await client.classify(ModelRoute("catdog"), [b"GIF89a"])
    with pytest.raises(ModelNotFoundError, match="Servable not found"):
        await client.classify(ModelRoute("no-such-model"), [JPEG])
    with pytest.raises(ModelNotFoundError):
        await client.classify(ModelRoute("catdog", version=9), [JPEG])
    server.signature_def = signature({"a": "DT_STRING"}, {"x": "DT_FLOAT", "y": "DT_FLOAT"})
    with pytest.raises(ModelResponseError, match="which output holds the class scores"):
        await client.classify(ModelRoute("catdog", label="stable"), [JPEG])


async def test_available_is_false_for_a_missing_model_or_an_unreachable_server(
    client: TfServingRestClient, server: FakeTfServing
) -> None:
    assert await client.available(ModelRoute("catdog"))
    assert not await client.available(ModelRoute("catdog", version=7))
    assert not await client.available(ModelRoute("no-such-model"))
    server.reachable = False
    assert not await client.available(ModelRoute("catdog"))


async def test_forward_passes_a_request_through_unchanged(client: TfServingRestClient, server: FakeTfServing) -> None:
    body = json.dumps({"inputs": {"images": [{"b64": base64.b64encode(JPEG).decode()}]}}).encode()
    answer = await client.forward("POST", "/v1/models/catdog/versions/1:predict", body)
    assert answer.status_code == 200 and answer.json()["outputs"]["labels"] == [["cat", "dog"]]
    missing = await client.forward("GET", "/v1/models/other", None)
    assert missing.status_code == 404 and "Servable not found" in missing.json()["error"]


async def test_a_model_with_one_unnamed_output_and_fallback_names() -> None:
    """A row-format (``predictions``) answer without class names: classes are the score indices."""

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            sig = signature({"x": "DT_STRING"}, {"out": "DT_FLOAT"})
            return httpx.Response(
                200,
                json={
                    "model_spec": {"name": "m", "version": "4"},
                    "metadata": {"signature_def": {"signature_def": {"custom": sig}}},
                },
            )
        assert json.loads(request.content)["signature_name"] == "custom"
        return httpx.Response(200, json={"predictions": [[0.1, 0.2, 0.7]]})

    client = TfServingRestClient(
        "http://tf", fallback=SignatureFallback(signature_name="custom"), transport=httpx.MockTransport(server)
    )
    try:
        prediction = await client.classify(ModelRoute("m"), [JPEG])
    finally:
        await client.close()
    assert (prediction.model_version, prediction.scores) == (4, [{"0": 0.1, "1": 0.2, "2": 0.7}])
