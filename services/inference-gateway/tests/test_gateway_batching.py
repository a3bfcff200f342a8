"""Dynamic batching: grouping, size and wait bounds, per-item failures."""

from __future__ import annotations

import asyncio
import time

import pytest
from edgeloop_inference_gateway.batching import DynamicBatcher


class RecordingModel:
    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s
        self.batches: list[tuple[str, list[int]]] = []

    async def __call__(self, key: str, items: list[int]) -> list[int | BaseException]:
        self.batches.append((key, list(items)))
        await asyncio.sleep(self.delay_s)
        return [ValueError(f"bad item {item}") if item < 0 else item * 10 for item in items]


async def test_concurrent_requests_become_one_call() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=8, max_wait_s=0.05, max_concurrent_batches=1)
    results = await asyncio.gather(*(batcher.submit("m", i) for i in range(8)))
    await batcher.close()
    assert results == [i * 10 for i in range(8)]
    assert [len(items) for _, items in model.batches] == [8]


async def test_batches_never_exceed_max_size() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=4, max_wait_s=0.05, max_concurrent_batches=1)
    results = await asyncio.gather(*(batcher.submit("m", i) for i in range(10)))
    await batcher.close()
    assert results == [i * 10 for i in range(10)]
    sizes = [len(items) for _, items in model.batches]
    assert sum(sizes) == 10
    assert max(sizes) == 4
    assert sizes == [4, 4, 2]


async def test_a_lone_request_on_an_idle_model_goes_at_once() -> None:
    model = RecordingModel(delay_s=0.0)
    batcher = DynamicBatcher(model, max_batch_size=32, max_wait_s=0.5, max_concurrent_batches=1)
    started = time.perf_counter()
    assert await batcher.submit("m", 3) == 30
    waited = time.perf_counter() - started
    await batcher.close()
    assert waited < 0.1
    assert [len(items) for _, items in model.batches] == [1]


async def test_while_a_batch_is_in_flight_a_request_waits_at_most_max_wait() -> None:
    model = RecordingModel(delay_s=1.0)
    batcher = DynamicBatcher(model, max_batch_size=32, max_wait_s=0.05, max_concurrent_batches=2)
    slow = asyncio.create_task(batcher.submit("m", 0))
    await asyncio.sleep(0.01)  # the first call is in flight, one slot is free
    model.delay_s = 0.0
    started = time.perf_counter()
    assert await batcher.submit("m", 1) == 10
    waited = time.perf_counter() - started
    assert 0.04 <= waited < 0.5  # it waited for company, but not for the slow call
    await batcher.close()
    slow.cancel()
    assert [items for _, items in model.batches] == [[0], [1]]


async def test_batch_size_one_sends_every_request_alone() -> None:
    model = RecordingModel(delay_s=0.005)
    batcher = DynamicBatcher(model, max_batch_size=1, max_wait_s=0.05, max_concurrent_batches=2)
    started = time.perf_counter()
    results = await asyncio.gather(*(batcher.submit("m", i) for i in range(6)))
    elapsed = time.perf_counter() - started
    await batcher.close()
    assert results == [i * 10 for i in range(6)]
    assert [len(items) for _, items in model.batches] == [1] * 6
    assert elapsed < 0.2  # batch size 1 does not wait for company


async def test_different_models_are_never_mixed() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=8, max_wait_s=0.02, max_concurrent_batches=1)
    await asyncio.gather(*(batcher.submit("a" if i % 2 else "b", i) for i in range(8)))
    await batcher.close()
    assert sorted((key, sorted(items)) for key, items in model.batches) == [("a", [1, 3, 5, 7]), ("b", [0, 2, 4, 6])]


async def test_requests_queue_while_the_model_is_busy_and_then_go_together() -> None:
    model = RecordingModel(delay_s=0.05)
    batcher = DynamicBatcher(model, max_batch_size=16, max_wait_s=0.0, max_concurrent_batches=1)
    first = asyncio.create_task(batcher.submit("m", 0))
    await asyncio.sleep(0.01)  # the first call is in flight now
    rest = [asyncio.create_task(batcher.submit("m", i)) for i in range(1, 6)]
    await asyncio.gather(first, *rest)
    await batcher.close()
    assert [len(items) for _, items in model.batches] == [1, 5]


async def test_one_failing_item_fails_only_its_caller() -> None:
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=4, max_wait_s=0.02)
    results = await asyncio.gather(*(batcher.submit("m", i) for i in (1, -2, 3)), return_exceptions=True)
    await batcher.close()
    assert results[0] == 10 and results[2] == 30
    assert isinstance(results[1], ValueError) and "bad item -2" in str(results[1])


async def test_a_failing_model_call_fails_every_caller_in_the_batch() -> None:
    async def broken(key: str, items: list[int]) -> list[int]:
        raise ConnectionError("model server down")

    batcher = DynamicBatcher(broken, max_batch_size=4, max_wait_s=0.02)
    results = await asyncio.gather(*(batcher.submit("m", i) for i in range(3)), return_exceptions=True)
    await batcher.close()
    assert all(isinstance(result, ConnectionError) for result in results)
    # and the lane still works afterwards
    model = RecordingModel()
    batcher = DynamicBatcher(model, max_batch_size=4, max_wait_s=0.0)
    assert await batcher.submit("m", 2) == 20
    await batcher.close()


async def test_a_caller_that_gave_up_is_not_sent_to_the_model() -> None:
    gate = asyncio.Event()
    batches: list[list[int]] = []

    async def gated_model(key: str, items: list[int]) -> list[int]:
        batches.append(items)
        await gate.wait()  # the first call stays in flight until the test opens the gate
        return [item * 10 for item in items]

    batcher = DynamicBatcher(gated_model, max_batch_size=8, max_wait_s=0.0, max_concurrent_batches=1)
    busy = asyncio.create_task(batcher.submit("m", 0))
    await asyncio.sleep(0.01)
    quitter = asyncio.create_task(batcher.submit("m", 1))
    stayer = asyncio.create_task(batcher.submit("m", 2))
    await asyncio.sleep(0.01)
    quitter.cancel()
    await asyncio.sleep(0)
    gate.set()
    assert await stayer == 20
    assert await busy == 0
    await batcher.close()
    assert batches == [[0], [2]]


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(RecordingModel(), max_batch_size=0, max_wait_s=0.01)
