"""Helpers of the registry's tests: a fresh PostgreSQL schema, a bus that can be down, version bodies."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from edgeloop_common.bus.base import BusUnavailableError
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import Event

from tests.helpers import eventually, fresh_postgres_schema


@pytest.fixture(scope="module")
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A database URL whose tables land in a schema of their own, created for this test module and dropped after
    (the test user may not create databases; a schema isolates as well)."""
    with fresh_postgres_schema(postgres_url, prefix="registry_test") as url:
        yield url


class SwitchableBus(InProcessBus):
    """An in-process bus whose broker can be 'down': publish then raises BusUnavailableError, as Kafka's does."""

    def __init__(self) -> None:
        super().__init__(source="registry")
        self.down = False
        self.refused = 0

    async def publish(self, event: Event, **kwargs: Any) -> str:
        if self.down:
            self.refused += 1
            raise BusUnavailableError("broker down (test)")
        return await super().publish(event, **kwargs)

    async def ready(self) -> bool:
        return not self.down and await super().ready()


def version_body(
    accuracy: float | None,
    *,
    evaluation_set_id: str | None = "evalset-a",
    baseline: dict[str, Any] | None = None,
    version: int | None = None,
    model: str = "classifier",
) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "per_class": {"cat": {"precision": 0.7, "recall": 0.8, "f1": 0.75, "support": 41}},
        "train_counts": {"cat": 160, "dog": 170},
        "eval_counts": {"cat": 41, "dog": 41},
    }
    if accuracy is not None:
        metrics["accuracy"] = accuracy
    if evaluation_set_id is not None:
        metrics["evaluation_set_id"] = evaluation_set_id
    if baseline is not None:
        metrics["baseline"] = baseline
    return {
        "version": version,
        "artifact_uri": f"file:///models/{model}/{version or 'next'}",
        "signature": {"inputs": {"image_bytes": "DT_STRING"}, "outputs": {"scores": "DT_FLOAT"}},
        "metrics": metrics,
        "reference_stats": {"n": 2, "features": {"confidence": [0.9, 0.8]}, "class_frequencies": {"cat": 0.5}},
        "lineage": {
            "dataset_snapshot_id": "snap-0123456789abcdef",
            "parent_version": None,
            "parameters": {"epochs": 1},
        },
        "train_started_at": "2026-01-02T03:04:05Z",
        "train_duration_s": 31.5,
    }


wait_for = partial(eventually, timeout_s=10.0, interval_s=0.01)  # in-process conditions: poll often
