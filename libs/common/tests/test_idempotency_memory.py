"""InMemoryProcessedEventStore: remembers what a redelivery could repeat, within a bound (it kept every id)."""

from __future__ import annotations

import pytest
from edgeloop_common.idempotency import InMemoryProcessedEventStore


async def test_the_latest_ids_of_each_group_are_remembered_and_the_oldest_forgotten_past_the_bound() -> None:
    store = InMemoryProcessedEventStore(max_ids_per_group=100)
    for index in range(250):
        await store.mark("gateway", f"event-{index}")
    await store.mark("drift", "event-0")
    assert [await store.seen("gateway", f"event-{index}") for index in (149, 150, 249)] == [False, True, True]
    assert await store.seen("drift", "event-0")  # each group its own
    assert not await store.seen("drift", "event-1")
    assert len(store._ids["gateway"]) == 100


async def test_marking_again_keeps_one_entry() -> None:
    store = InMemoryProcessedEventStore(max_ids_per_group=2)
    for event_id in ("a", "a", "b"):
        await store.mark("g", event_id)
    assert await store.seen("g", "a") and await store.seen("g", "b")


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        InMemoryProcessedEventStore(max_ids_per_group=0)
