"""The ingest schema's Alembic migrations on SQLite: a database of the previous schema is upgraded with its data
kept, the migrated schema is the one the code queries, and a downgrade goes back. (PostgreSQL:
test_ingest_labeling_postgres.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from edgeloop_common.settings import CommonSettings
from edgeloop_ingest.adapters.dead_letters import dead_letters
from edgeloop_ingest.adapters.samples import SqlSampleRepository, create_sql_engine, metadata
from edgeloop_ingest.adapters.schema import MIGRATIONS
from edgeloop_ingest.adapters.uplink_records import uplink_records
from edgeloop_ingest.app import create_app
from edgeloop_ingest.settings import Settings
from fastapi.testclient import TestClient
from ingest_testing import OLD_ROW, create_previous_schema
from sqlalchemy import Engine, inspect

from tests.helpers import assert_at_head

HEAD = "0005"
TABLES = {"ingest_samples", "ingest_uplink_records", "ingest_dead_letters"}
NEW_COLUMNS = {
    "predicted_label",
    "confidence",
    "scores",
    "model_name",
    "model_version",
    "hard_example",
    "hard_example_reason",
    "predicted_at",
    "label",
    "labeled_by",
    "labeled_at",
    "served_by",
}


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "ingest.sqlite3"


@pytest.fixture
def engine(database: Path) -> Iterator[Engine]:
    engine = create_sql_engine(f"sqlite:///{database}")
    yield engine
    engine.dispose()


def columns(engine: Engine) -> set[str]:
    return {column["name"] for column in inspect(engine).get_columns("ingest_samples")}


def test_a_database_of_the_previous_schema_is_upgraded_at_start_with_its_data(
    tmp_path: Path, database: Path, engine: Engine
) -> None:
    create_previous_schema(engine)
    assert MIGRATIONS.current_revision(engine) is None and not NEW_COLUMNS & columns(engine)

    settings = Settings(
        mqtt_enabled=False,
        common=CommonSettings(mode="standalone", data_dir=tmp_path, database_url=f"sqlite:///{database}"),
    )
    with TestClient(create_app(settings)) as client:
        old = client.get(f"/v1/samples/{OLD_ROW['sample_id']}")
        assert old.status_code == 200, old.text
        body = old.json()
        assert (body["device_id"], body["sha256"], body["width"]) == ("cam-old", "c" * 64, 320)
        assert datetime.fromisoformat(body["received_at"]) == OLD_ROW["received_at"]
        assert (body["label"], body["predicted_label"], body["hard_example"]) == (None, None, False)
        labeled = client.put(f"/v1/samples/{OLD_ROW['sample_id']}/label", json={"label": "cat", "labeled_by": "ops"})
        assert labeled.status_code == 200, labeled.text
        assert [s["sample_id"] for s in client.get("/v1/samples", params={"label": "cat"}).json()["samples"]] == [
            OLD_ROW["sample_id"]
        ]

    assert MIGRATIONS.current_revision(engine) == HEAD
    assert columns(engine) >= NEW_COLUMNS
    indexes = {index["name"] for index in inspect(engine).get_indexes("ingest_samples")}
    assert {"ix_ingest_samples_labeling_queue", "ix_ingest_samples_site_received"} <= indexes


def schema_differences(engine: Engine) -> list[object]:
    """What Alembic's autogenerate would change to make the database's ingest tables match the code's tables."""
    assert uplink_records.metadata is dead_letters.metadata is metadata  # one metadata holds every ingest table
    return MIGRATIONS.schema_differences(engine, metadata, tables=TABLES)


def test_the_migrated_schema_is_the_one_the_code_queries(engine: Engine) -> None:
    MIGRATIONS.upgrade(engine)
    assert schema_differences(engine) == []


def test_the_upgraded_previous_schema_is_the_one_the_code_queries(engine: Engine) -> None:
    create_previous_schema(engine)
    MIGRATIONS.upgrade(engine)
    assert schema_differences(engine) == []


def test_upgrading_twice_and_a_fresh_database(engine: Engine) -> None:
    SqlSampleRepository(engine)
    SqlSampleRepository(engine)  # a restart: nothing to do
    assert_at_head(engine, MIGRATIONS, TABLES)
    assert MIGRATIONS.current_revision(engine) == HEAD
    assert columns(engine) >= NEW_COLUMNS


def test_downgrade_to_the_first_revision_keeps_the_records(engine: Engine) -> None:
    create_previous_schema(engine)
    MIGRATIONS.upgrade(engine)
    MIGRATIONS.downgrade(engine, "0001")
    assert MIGRATIONS.current_revision(engine) == "0001"
    assert not NEW_COLUMNS & columns(engine)
    assert not {"ingest_uplink_records", "ingest_dead_letters"} & set(inspect(engine).get_table_names())
    repository = SqlSampleRepository(engine, upgrade=False)
    record = repository.get(str(OLD_ROW["sample_id"]))
    assert record is not None and record.device_id == "cam-old"
    MIGRATIONS.upgrade(engine)
    assert MIGRATIONS.current_revision(engine) == HEAD and columns(engine) >= NEW_COLUMNS


def test_the_labeling_queue_query_can_use_the_partial_index(engine: Engine) -> None:
    """SQLite uses a partial index only where the query's WHERE implies the index's; INDEXED BY fails otherwise."""
    from edgeloop_ingest.adapters.samples import _conditions, samples
    from edgeloop_ingest.labeling import SampleQuery
    from sqlalchemy import select

    MIGRATIONS.upgrade(engine)
    query = SampleQuery(hard_example=True, labeled=False)
    statement = select(samples).where(*_conditions(query)).order_by(samples.c.received_at, samples.c.sample_id)
    sql = str(statement.compile(engine, compile_kwargs={"literal_binds": True}))
    forced = sql.replace("FROM ingest_samples", "FROM ingest_samples INDEXED BY ix_ingest_samples_labeling_queue", 1)
    assert forced != sql
    with engine.connect() as connection:
        plan = " ".join(str(row[-1]) for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {forced}"))
    assert "ix_ingest_samples_labeling_queue" in plan
