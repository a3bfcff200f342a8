"""Dynamic batching: concurrent requests for the same model and version become one model call.

Each key (model route) has a lane: a queue of pending requests and a collector
task. When no batch of the lane is in flight, the collector sends what is
pending at once (requests that arrived together still go together), so light
load pays no batching delay. While a batch is in flight, it starts the next
one when ``max_batch_size`` requests wait or the oldest has waited
``max_wait``, and it needs one of ``max_concurrent_batches`` slots; while
every slot is busy requests keep queueing, so under load batches fill up by
themselves. ``max_batch_size=1`` means no batching.

A batch function returns one result per item, in order; an item's result may
be an exception, which only that item's caller sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")

BatchFunction = Callable[[K, list[T]], Awaitable[Sequence[R | BaseException]]]


class BatcherClosedError(Exception):
    """The batcher was closed while the request waited."""


@dataclass
class _Pending(Generic[T, R]):
    item: T
    result: asyncio.Future[R]
    enqueued_at: float


@dataclass
class _Lane(Generic[T, R]):
    slots: asyncio.Semaphore
    pending: deque[_Pending[T, R]] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    collector: asyncio.Task[None] | None = None
    running: set[asyncio.Task[None]] = field(default_factory=set)


class DynamicBatcher(Generic[K, T, R]):
    def __init__(
        self,
        run_batch: BatchFunction[K, T, R],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_concurrent_batches: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_concurrent_batches < 1:
            raise ValueError("max_concurrent_batches must be at least 1")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max(0.0, max_wait_s)
        self.max_concurrent_batches = max_concurrent_batches
        self.on_batch = on_batch
        self._lanes: dict[K, _Lane[T, R]] = {}
        self._closed = False

    async def submit(self, key: K, item: T) -> R:
        """Queue ``item`` for the model ``key`` and wait for its own result."""
        if self._closed:
            raise BatcherClosedError("the batcher is closed")
        loop = asyncio.get_running_loop()
        lane = self._lane(key)
        pending: _Pending[T, R] = _Pending(item, loop.create_future(), loop.time())
        lane.pending.append(pending)
        lane.arrived.set()
        return await pending.result

    async def close(self) -> None:
        """Stop collecting; requests still queued or in flight fail with :class:`BatcherClosedError`."""
        self._closed = True
        for lane in self._lanes.values():
            tasks = [task for task in (lane.collector, *lane.running) if task is not None]
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            while lane.pending:
                self._fail(lane.pending.popleft(), BatcherClosedError("the batcher was closed"))
        self._lanes.clear()

    def _lane(self, key: K) -> _Lane[T, R]:
        lane = self._lanes.get(key)
        if lane is None:
            lane = _Lane(slots=asyncio.Semaphore(self.max_concurrent_batches))
            lane.collector = asyncio.create_task(self._collect(key, lane), name=f"batcher:{key}")
            self._lanes[key] = lane
        return lane

    async def _collect(self, key: K, lane: _Lane[T, R]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not lane.pending:
                lane.arrived.clear()
                await lane.arrived.wait()
            # An idle lane sends what is there at once (no wait at light load); a busy one lets a batch fill.
            deadline = lane.pending[0].enqueued_at + (self.max_wait_s if lane.running else 0.0)
            while len(lane.pending) < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
                lane.arrived.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await lane.arrived.wait()
                except TimeoutError:
                    break
            await lane.slots.acquire()
            batch = self._take_batch(lane)
            if not batch:
                lane.slots.release()
                continue
            task = asyncio.create_task(self._run(key, batch, lane))
            lane.running.add(task)
            task.add_done_callback(lane.running.discard)

    def _take_batch(self, lane: _Lane[T, R]) -> list[_Pending[T, R]]:
        batch: list[_Pending[T, R]] = []
        while lane.pending and len(batch) < self.max_batch_size:
            pending = lane.pending.popleft()
            if not pending.result.done():  # a caller that gave up is not sent to the model
                batch.append(pending)
        return batch

    async def _run(self, key: K, batch: list[_Pending[T, R]], lane: _Lane[T, R]) -> None:
        try:
            if self.on_batch is not None:
                self.on_batch(len(batch))
            results = await self.run_batch(key, [pending.item for pending in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            for pending, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    self._fail(pending, result)
                elif not pending.result.done():
                    pending.result.set_result(result)
        except asyncio.CancelledError:
            for pending in batch:
                self._fail(pending, BatcherClosedError("the batcher was closed"))
            raise
        except Exception as exc:  # noqa: BLE001 - the failure goes to every caller in the batch
            for pending in batch:
                self._fail(pending, exc)
        finally:
            lane.slots.release()

    @staticmethod
    def _fail(pending: _Pending[T, R], error: BaseException) -> None:
        if not pending.result.done():
            pending.result.set_exception(error)
