"""The TF Serving clients (``edgeloop_common.serving``, REST and gRPC) against the real lite model server
(``edgeloop model-server``) serving a really trained model.

Everything here goes through TF Serving's REST and gRPC APIs, so it would hold
against the official ``tensorflow/serving`` as well.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from edgeloop_common.serving import (
    ModelInputError,
    ModelNotFoundError,
    ModelRoute,
    TfServingRestClient,
    create_model_client,
)
from edgeloop_common.serving.grpc import TfServingGrpcClient
from edgeloop_model_server.embedded import RunningServer, serve_in_thread

from tests.model_fixtures import lite_server_settings

pytestmark = [pytest.mark.tf, pytest.mark.slow]


@pytest.fixture(scope="module")
def model_server(trained_model_base: Path, trained_model_name: str) -> Iterator[RunningServer]:
    with serve_in_thread(lite_server_settings(trained_model_base, trained_model_name, poll_interval_s=0.3)) as server:
        yield server


@pytest.fixture(scope="module")
def captures(catdog_captures_dir: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted(catdog_captures_dir.glob("*.jpg"))]


@pytest.fixture
async def rest_client(model_server: RunningServer) -> AsyncIterator[TfServingRestClient]:
    client = TfServingRestClient(model_server.rest_url, timeout_s=30)
    yield client
    await client.close()


@pytest.fixture
async def grpc_client(model_server: RunningServer) -> AsyncIterator[TfServingGrpcClient]:
    client = TfServingGrpcClient(model_server.grpc_target, timeout_s=30)
    yield client
    await client.close()


async def test_rest_client_reads_signature_version_and_class_names(
    rest_client: TfServingRestClient, trained_model_name: str, captures: list[bytes]
) -> None:
    route = ModelRoute(trained_model_name)
    prediction = await rest_client.classify(route, captures)
    assert (prediction.model_name, prediction.model_version) == (trained_model_name, 1)
    assert len(prediction.scores) == len(captures) == 8
    for scores in prediction.scores:
        assert set(scores) == {"cat", "dog"}  # the class names come from the model itself
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
    resolved = await rest_client.resolve(route)
    assert (resolved.signature.input_name, resolved.signature.scores_output) == ("image_bytes", "scores")
    assert await rest_client.available(route)
    assert not await rest_client.available(ModelRoute("no-such-model"))


async def test_grpc_and_rest_give_the_same_scores(
    rest_client: TfServingRestClient, grpc_client: TfServingGrpcClient, trained_model_name: str, captures: list[bytes]
) -> None:
    route = ModelRoute(trained_model_name)
    over_rest = await rest_client.classify(route, captures)
    over_grpc = await grpc_client.classify(route, captures)
    assert over_grpc.model_version == over_rest.model_version == 1
    for a, b in zip(over_rest.scores, over_grpc.scores, strict=True):
        assert a.keys() == b.keys()
        for label in a:
            assert a[label] == pytest.approx(b[label], abs=1e-5)
    assert await grpc_client.available(route)
    assert not await grpc_client.available(ModelRoute("no-such-model"))


async def test_batched_scores_equal_one_by_one_scores(
    rest_client: TfServingRestClient, trained_model_name: str, captures: list[bytes]
) -> None:
    route = ModelRoute(trained_model_name)
    together = (await rest_client.classify(route, captures)).scores
    alone = [(await rest_client.classify(route, [image])).scores[0] for image in captures]
    for a, b in zip(together, alone, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


async def test_model_server_errors_are_told_apart(
    rest_client: TfServingRestClient, grpc_client: TfServingGrpcClient, trained_model_name: str
) -> None:
    truncated_jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 50
    with pytest.raises(ModelInputError):
        await rest_client.classify(ModelRoute(trained_model_name), [truncated_jpeg])
    with pytest.raises(ModelInputError):
        await grpc_client.classify(ModelRoute(trained_model_name), [truncated_jpeg])
    with pytest.raises(ModelNotFoundError):
        await rest_client.classify(ModelRoute("no-such-model"), [truncated_jpeg])
    with pytest.raises(ModelNotFoundError):
        await grpc_client.classify(ModelRoute(trained_model_name, version=99), [truncated_jpeg])


async def test_create_model_client_builds_either_client_on_the_server(
    model_server: RunningServer, trained_model_name: str, captures: list[bytes]
) -> None:
    route = ModelRoute(trained_model_name)
    answers = {}
    for protocol in ("rest", "grpc"):
        client = create_model_client(
            protocol, rest_url=model_server.rest_url, grpc_target=model_server.grpc_target, timeout_s=30
        )
        try:
            assert isinstance(client, TfServingRestClient if protocol == "rest" else TfServingGrpcClient)
            assert await client.available(route)
            answers[protocol] = await client.classify(route, captures[:2])
        finally:
            await client.close()
    assert answers["rest"].model_version == answers["grpc"].model_version == 1
    for a, b in zip(answers["rest"].scores, answers["grpc"].scores, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
