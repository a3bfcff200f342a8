"""The arrivals of uplink records, in SQL (``ingest_uplink_records``, beside the samples in ingest's database).

One row per record an edge agent forwarded and ingest took, written last (once the record's events are durable):
its id answers a resend ``duplicate``, and it keeps each device's ``sequence``. The schema is owned by the Alembic
migrations (revision 0003); the table below mirrors them for queries, in the same metadata as the samples table.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Engine, Index, String, Table, func, select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from edgeloop_ingest.adapters.samples import insert_if_absent, metadata
from edgeloop_ingest.labeling import as_utc
from edgeloop_ingest.uplink import RecordedArrival, UplinkArrival

uplink_records = Table(
    "ingest_uplink_records",
    metadata,
    Column("record_id", String(36), primary_key=True),
    Column("site_id", String(64), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),  # when the edge agent received the picture
    Column("image_included", Boolean, nullable=False),
    Column("stored_at", DateTime(timezone=True), nullable=False),  # when ingest recorded the arrival
    Index("ix_ingest_uplink_records_device_sequence", "site_id", "device_id", "sequence"),
)

# What the sample store raises when it cannot store now (disk, database away or locked): the uplink answers 503
# and the agent retries. Anything else is a bug, not a reason to retry.
STORE_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (OSError, OperationalError, InterfaceError, PoolTimeoutError)


class SqlUplinkArrivalRepository:
    """Blocking calls: async callers run them in a thread. The schema is brought up to date by the samples
    repository (one set of migrations for ingest's tables)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, record_id: str) -> UplinkArrival | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(uplink_records).where(uplink_records.c.record_id == record_id)).first()
        if row is None:
            return None
        return UplinkArrival(
            record_id=row.record_id,
            site_id=row.site_id,
            device_id=row.device_id,
            sequence=row.sequence,
            received_at=as_utc(row.received_at),
            image_included=bool(row.image_included),
            stored_at=as_utc(row.stored_at),
        )

    def add_if_absent(self, arrival: UplinkArrival) -> RecordedArrival:
        c = uplink_records.c
        highest = select(func.max(c.sequence)).where(c.site_id == arrival.site_id, c.device_id == arrival.device_id)
        row = {
            "record_id": arrival.record_id,
            "site_id": arrival.site_id,
            "device_id": arrival.device_id,
            "sequence": arrival.sequence,
            "received_at": as_utc(arrival.received_at),
            "image_included": arrival.image_included,
            "stored_at": as_utc(arrival.stored_at),
        }
        with self.engine.begin() as connection:
            before = connection.execute(highest).scalar()
            inserted = insert_if_absent(connection, uplink_records, row)
        return RecordedArrival(inserted=inserted, highest_sequence_before=before)
