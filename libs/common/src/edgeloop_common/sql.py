"""SQLAlchemy engines for a service's own tables: PostgreSQL in distributed mode, SQLite in standalone mode.

SQLite is opened for use from several threads (blocking calls run in a thread pool), waits up to 30 s for a
lock held by another writer, and runs the given PRAGMAs on every new connection. Also what every service's SQL
adapter needs beside: a readiness check and aware times read back from SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, create_engine, event

# WAL: readers never block the writer; synchronous=FULL: a committed row survives power loss.
DURABLE_SQLITE_PRAGMAS = ("journal_mode=WAL", "synchronous=FULL")


def create_sql_engine(
    url: str,
    *,
    sqlite_pragmas: Sequence[str] = DURABLE_SQLITE_PRAGMAS,
    sqlite_begin_immediate: bool = False,
    pool_size: int = 5,
    max_overflow: int = 5,
) -> Engine:
    """An engine for ``url``; pool_size and max_overflow size a server database's pool.

    With ``sqlite_begin_immediate`` every SQLite transaction is ``BEGIN IMMEDIATE`` (it takes the write lock at
    once), the stand-in for PostgreSQL's ``SELECT ... FOR UPDATE``: concurrent writers queue instead of failing.
    """
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        if sqlite_begin_immediate:
            dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below), not the driver
        cursor = dbapi_connection.cursor()
        for pragma in sqlite_pragmas:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    event.listen(engine, "connect", on_connect)
    if sqlite_begin_immediate:
        event.listen(engine, "begin", _begin_immediate)
    return engine


def _begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def database_reachable(engine: Engine) -> bool:
    """True after a round trip to the database (a readiness check); raises what the driver raises where it cannot
    be reached."""
    with engine.connect() as connection:
        return connection.exec_driver_sql("SELECT 1").scalar() == 1


def aware_utc(moment: datetime | None) -> datetime | None:
    """A time read back from a ``DateTime(timezone=True)`` column, aware: SQLite gives naive datetimes back, they
    were stored in UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
