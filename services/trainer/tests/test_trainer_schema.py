"""The trainer schema's Alembic migrations, on SQLite and on the real PostgreSQL (a fresh schema per test):
upgrade -> downgrade -> upgrade, a database the trainer made before it used Alembic adopted with its rows, the
queue's rules (partial unique indexes) held by the migrated schema, replicas starting together, and the tables the
code queries agree with what the migrations create."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import pytest
from edgeloop_trainer.adapters.runs import SqlRunStore, create_sql_engine, metadata
from edgeloop_trainer.adapters.schema import MIGRATIONS
from edgeloop_trainer.ports import TrainingRequest
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    text,
)
from sqlalchemy.exc import IntegrityError

from tests.helpers import (
    assert_at_base,
    assert_at_head,
    fresh_postgres_schema,
    recorded_revisions,
    start_replicas_together,
    table_names,
)

HEAD = "0002"
TRAINER_TABLES = {
    "trainings",
    "training_requests",
    "training_label_counts",
    "training_counted_labels",
    "training_label_requests",
}
CREATED = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
FINISHED = datetime(2026, 3, 1, 9, 41, 12, tzinfo=UTC)


def create_pre_alembic_schema(engine: Engine) -> None:
    """The tables as the trainer created them with ``metadata.create_all`` before it used Alembic (a frozen copy),
    with a finished run, its request and a label count in them."""
    old = MetaData()
    trainings = Table(
        "trainings",
        old,
        Column("run_id", String(64), primary_key=True),
        Column("model_name", String(200), nullable=False),
        Column("state", String(16), nullable=False),
        Column("attempt", Integer, nullable=False, default=1),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("started_at", DateTime(timezone=True)),
        Column("finished_at", DateTime(timezone=True)),
        Column("progress", JSON, nullable=False, default=dict),
        Column("snapshot_id", String(64)),
        Column("candidate_version", Integer),
        Column("result", JSON),
        Column("error", Text),
    )
    for state in ("queued", "running"):
        Index(
            f"trainings_one_{state}_per_model",
            trainings.c.model_name,
            unique=True,
            sqlite_where=trainings.c.state == state,
            postgresql_where=trainings.c.state == state,
        )
    Index("trainings_by_model_created", trainings.c.model_name, trainings.c.created_at)
    requests = Table(
        "training_requests",
        old,
        Column("request_id", String(200), primary_key=True),
        Column("run_id", String(64), ForeignKey("trainings.run_id"), nullable=False, index=True),
        Column("model_name", String(200), nullable=False),
        Column("reason", String(32), nullable=False),
        Column("requested_by", String(200), nullable=False),
        Column("detail", Text, nullable=False, default=""),
        Column("requested_at", DateTime(timezone=True), nullable=False),
    )
    label_counts = Table(
        "training_label_counts",
        old,
        Column("model_name", String(200), primary_key=True),
        Column("labels_since_request", Integer, nullable=False),
    )
    old.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            insert(trainings).values(
                run_id="run-old",
                model_name="catdog",
                state="succeeded",
                attempt=1,
                created_at=CREATED,
                started_at=CREATED,
                finished_at=FINISHED,
                progress={"stage": "done", "fraction": 1.0, "epoch": 3, "epochs": 3, "message": ""},
                snapshot_id="snap-old",
                candidate_version=4,
                result={"accuracy": 0.91},
            )
        )
        connection.execute(
            insert(requests).values(
                request_id="event-old",
                run_id="run-old",
                model_name="catdog",
                reason="drift",
                requested_by="drift",
                detail="brightness moved",
                requested_at=CREATED,
            )
        )
        connection.execute(insert(label_counts).values(model_name="catdog", labels_since_request=7))


@pytest.fixture
def engine(sqlite_or_postgres_url: str) -> Iterator[Engine]:
    engine = create_sql_engine(sqlite_or_postgres_url)
    yield engine
    engine.dispose()


def schema_differences(engine: Engine) -> list[object]:
    """What Alembic's autogenerate would change to make the database's trainer tables match the code's."""
    return MIGRATIONS.schema_differences(engine, metadata, tables=TRAINER_TABLES)


def index_definitions(engine: Engine) -> dict[str, str]:
    """The trainer's indexes as the database itself writes them (the partial indexes' WHERE included), without the
    PostgreSQL schema's name."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            schema = ""
            rows = connection.execute(
                text("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
            ).all()
        else:
            schema = str(connection.execute(text("SELECT current_schema()")).scalar_one())
            rows = connection.execute(
                text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()")
            ).all()
    return {
        name: " ".join(definition.replace(f"{schema}.", "").split())
        for name, definition in rows
        if "alembic" not in name
    }


def request(request_id: str, model: str = "catdog") -> TrainingRequest:
    return TrainingRequest(request_id, model, "manual", "test", "", CREATED)


def count_label(store: SqlRunStore, label_event_id: str, *, every: int = 1000, model: str = "catdog") -> bool:
    return store.count_label(
        model, label_event_id, every=every, request_id=f"request-{label_event_id}", now=CREATED, forget_before=CREATED
    )


def test_upgrade_downgrade_upgrade(engine: Engine) -> None:
    assert_at_base(engine, MIGRATIONS, TRAINER_TABLES)

    store = SqlRunStore(engine)  # the store upgrades at start
    assert_at_head(engine, MIGRATIONS, TRAINER_TABLES)
    assert MIGRATIONS.current_revision(engine) == HEAD
    first = store.enqueue(request("event-1"))
    assert all(count_label(store, f"label-{n}") for n in range(3))
    assert store.labels_since_request("catdog") == 3

    MIGRATIONS.downgrade(engine, "base")
    assert_at_base(engine, MIGRATIONS, TRAINER_TABLES)

    MIGRATIONS.upgrade(engine)
    assert MIGRATIONS.current_revision(engine) == HEAD
    assert store.get(first.run_id) is None and store.find() == []  # a fresh schema: the rows really went
    assert all(count_label(store, f"label-{n}") for n in range(2))  # the counted ids went with the tables
    assert store.labels_since_request("catdog") == 2
    SqlRunStore(engine)  # a restart at head: nothing to do, nothing fails
    again = store.enqueue(request("event-1"))
    assert not again.duplicate and store.get(again.run_id) is not None


def test_a_database_made_before_alembic_is_adopted_with_its_rows(engine: Engine) -> None:
    create_pre_alembic_schema(engine)
    before = index_definitions(engine)
    assert MIGRATIONS.current_revision(engine) is None

    store = SqlRunStore(engine)

    assert MIGRATIONS.current_revision(engine) == HEAD
    assert index_definitions(engine).items() >= before.items()  # kept as they were (0002 adds its own)
    run = store.get("run-old")
    assert run is not None
    assert (run.state, run.created_at, run.finished_at, run.candidate_version, run.result) == (
        "succeeded",
        CREATED,
        FINISHED,
        4,
        {"accuracy": 0.91},
    )
    assert [(r.request_id, r.reason, r.detail) for r in run.requests] == [("event-old", "drift", "brightness moved")]
    assert count_label(store, "label-new") and not count_label(store, "label-new")
    assert store.labels_since_request("catdog") == 8
    assert schema_differences(engine) == []
    queued = store.enqueue(request("event-new"))  # and it goes on being written
    assert not queued.duplicate and store.enqueue(request("event-old")).duplicate


def test_a_database_at_0001_upgrades_to_exact_label_counting_with_its_rows(engine: Engine) -> None:
    MIGRATIONS.upgrade(engine, "0001")  # the schema before the counted labels, with a count in it
    with engine.begin() as connection:
        connection.execute(
            insert(metadata.tables["training_label_counts"]).values(model_name="catdog", labels_since_request=7)
        )

    store = SqlRunStore(engine)

    assert MIGRATIONS.current_revision(engine) == HEAD
    assert schema_differences(engine) == []
    assert store.labels_since_request("catdog") == 7
    assert count_label(store, "label-8", every=8)
    assert not count_label(store, "label-8", every=8)  # redelivered: not counted again, nothing asked again
    assert [(r.event_id, r.model_name, r.labels) for r in store.label_requests()] == [("request-label-8", "catdog", 8)]
    assert store.labels_since_request("catdog") == 0

    MIGRATIONS.downgrade(engine, "0001")  # and back: the new tables go, the count stays
    assert MIGRATIONS.current_revision(engine) == "0001"
    assert not table_names(engine) & {"training_counted_labels", "training_label_requests"}
    assert store.labels_since_request("catdog") == 0


def test_the_migrated_schema_is_the_one_the_code_queries(
    engine: Engine, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    MIGRATIONS.upgrade(engine)
    assert schema_differences(engine) == []

    # The same indexes, partial indexes' WHERE included, as the code's table definitions create on the same dialect
    # (autogenerate does not compare an index's WHERE).
    with ExitStack() as stack:
        if engine.dialect.name == "sqlite":
            url = f"sqlite:///{tmp_path / 'created.sqlite3'}"
        else:
            url = stack.enter_context(fresh_postgres_schema(request.getfixturevalue("postgres_url"), "trainer_created"))
        created = create_sql_engine(url)
        stack.callback(created.dispose)
        metadata.create_all(created)
        assert index_definitions(engine) == index_definitions(created)
    assert {"trainings_one_queued_per_model", "trainings_one_running_per_model"} <= set(index_definitions(engine))


def test_the_migrated_schema_holds_the_queue_rules(engine: Engine) -> None:
    MIGRATIONS.upgrade(engine)
    row = {"model_name": "catdog", "attempt": 1, "created_at": CREATED, "progress": {}}
    trainings = metadata.tables["trainings"]
    with engine.begin() as connection:
        connection.execute(insert(trainings).values(run_id="run-1", state="queued", **row))
        connection.execute(insert(trainings).values(run_id="run-2", state="running", **row))
        connection.execute(insert(trainings).values(run_id="run-3", state="succeeded", **row))
        connection.execute(insert(trainings).values(run_id="run-4", state="succeeded", **row))
    for state in ("queued", "running"):
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(insert(trainings).values(run_id=f"run-second-{state}", state=state, **row))
    with engine.begin() as connection:  # another model has a queue of its own
        connection.execute(insert(trainings).values(run_id="run-5", state="queued", **{**row, "model_name": "other"}))


@pytest.mark.postgres
def test_replicas_starting_together_adopt_a_pre_alembic_database_once(fresh_postgres_url: str) -> None:
    engine = create_sql_engine(fresh_postgres_url)
    try:
        create_pre_alembic_schema(engine)
        start_replicas_together(fresh_postgres_url, SqlRunStore, create_sql_engine=create_sql_engine)
        assert recorded_revisions(engine, MIGRATIONS) == [HEAD]
        assert schema_differences(engine) == []
        assert SqlRunStore(engine, upgrade=False).get("run-old") is not None
    finally:
        engine.dispose()
