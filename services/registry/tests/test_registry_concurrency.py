"""Concurrent promotions serialize (the model row is locked: SELECT ... FOR UPDATE on PostgreSQL, BEGIN IMMEDIATE on
SQLite), so the alias history is one unbroken chain; concurrent registrations get distinct version numbers."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest
from edgeloop_registry.adapters.db import SqlUnitOfWork, create_sql_engine
from edgeloop_registry.adapters.migrations import MIGRATIONS
from edgeloop_registry.service import PRODUCTION, NewVersion, RegistryService
from registry_testing import fresh_postgres_url

__all__ = ["fresh_postgres_url"]  # a fixture, imported for pytest

WORKERS = 8
T = TypeVar("T")


@pytest.fixture
def service(sqlite_or_postgres_url: str) -> Iterator[RegistryService]:
    engine = create_sql_engine(sqlite_or_postgres_url)
    MIGRATIONS.upgrade(engine)
    yield RegistryService(SqlUnitOfWork(engine))
    if engine.dialect.name == "postgresql":
        MIGRATIONS.downgrade(engine)  # the schema is shared by this module's tests
    engine.dispose()


def all_at_once(calls: list[Callable[[], T]]) -> list[T]:
    """Run ``calls`` in threads released together, so their transactions overlap."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def test_concurrent_promotions_form_one_unbroken_chain(service: RegistryService) -> None:
    for number in range(1, WORKERS + 2):
        service.register_version("classifier", NewVersion(artifact_uri=f"file:///m/{number}", version=number))
    service.promote("classifier", 1, node_group=None, reason="first", actor="test", force=True)

    results = all_at_once(
        [
            lambda number=number: service.promote(  # type: ignore[misc]
                "classifier", number, node_group=None, reason=f"to {number}", actor=f"worker-{number}", force=True
            )
            for number in range(2, WORKERS + 2)
        ]
    )

    assert all(result.promoted for result in results)
    history = list(reversed(service.alias_history("classifier", PRODUCTION)))  # oldest first
    assert len(history) == WORKERS + 1
    for before, after in itertools.pairwise(history):
        assert after.from_version == before.to_version, f"move {after} did not see {before}"
    assert sorted(move.to_version for move in history) == list(range(1, WORKERS + 2))
    assert service.get_model("classifier").production_version == history[-1].to_version
    assert sorted(result.previous_version or 0 for result in results) == sorted(
        m.from_version or 0 for m in history[1:]
    )


def test_concurrent_registrations_get_distinct_numbers(service: RegistryService) -> None:
    service.register_version("classifier", NewVersion(artifact_uri="file:///m/first"))
    versions = all_at_once(
        [
            lambda i=i: service.register_version("classifier", NewVersion(artifact_uri=f"file:///m/{i}"))  # type: ignore[misc]
            for i in range(WORKERS)
        ]
    )
    assert sorted(version.version for version in versions) == list(range(2, WORKERS + 2))


def test_concurrent_first_registrations_create_the_model_once(service: RegistryService) -> None:
    versions = all_at_once(
        [
            lambda i=i: service.register_version("fresh-model", NewVersion(artifact_uri=f"file:///m/{i}"))  # type: ignore[misc]
            for i in range(WORKERS)
        ]
    )
    assert sorted(version.version for version in versions) == list(range(1, WORKERS + 1))
    assert [model.name for model in service.list_models()] == ["fresh-model"]
