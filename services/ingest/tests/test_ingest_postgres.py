"""The sample store on the real PostgreSQL (distributed mode)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from edgeloop_common.events import ImageReceived
from edgeloop_ingest.adapters.blobstore import LocalBlobStore
from edgeloop_ingest.adapters.disk_buffer import DiskBuffer
from edgeloop_ingest.adapters.samples import SqlSampleRepository, create_sql_engine, samples
from edgeloop_ingest.bridge import Bridge
from edgeloop_ingest.handlers import device_message_from_mqtt
from edgeloop_ingest.service import IngestService, SampleRecord
from edgeloop_ingest.validation import ImageLimits
from ingest_testing import SwitchableBus, catdog_photos, wait_for
from sqlalchemy import Engine, delete

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    engine = create_sql_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture
def device() -> Iterator[str]:
    """A device id of this test only; its rows are removed afterwards."""
    yield f"pg-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
def _cleanup(engine: Engine, device: str) -> Iterator[None]:
    yield
    with engine.begin() as connection:
        connection.execute(delete(samples).where(samples.c.device_id == device))


def record(device: str, *, sha256: str = "a" * 64, received_at: datetime | None = None) -> SampleRecord:
    return SampleRecord(
        sample_id=str(uuid.uuid4()),
        device_id=device,
        site_id="site-a",
        received_at=received_at or datetime.now(UTC),
        sha256=sha256,
        size_bytes=1234,
        format="jpeg",
        width=352,
        height=288,
        ingress="mqtt",
        mqtt_topic=f"dt/edgeloop/site-a/{device}/image",
        blob_uri=f"file:///blobs/{sha256}",
    )


def test_records_round_trip(engine: Engine, device: str) -> None:
    repository = SqlSampleRepository(engine)
    first, second = record(device), record(device, sha256="b" * 64)
    repository.add_many([first, second])
    assert repository.get(first.sample_id) == first
    assert repository.get(second.sample_id) == second
    assert repository.get(str(uuid.uuid4())) is None


def test_find_recent_looks_only_inside_the_window(engine: Engine, device: str) -> None:
    repository = SqlSampleRepository(engine)
    now = datetime.now(UTC)
    old = record(device, received_at=now - timedelta(hours=2))
    repository.add_many([old])
    assert repository.find_recent(device_id=device, sha256=old.sha256, since=now - timedelta(hours=3)) == old
    assert repository.find_recent(device_id=device, sha256=old.sha256, since=now - timedelta(hours=1)) is None
    assert repository.find_recent(device_id="someone-else", sha256=old.sha256, since=now - timedelta(hours=3)) is None


async def test_the_bridge_records_samples_in_postgres(
    engine: Engine, device: str, tmp_path: Path, catdog_train_dir: Path
) -> None:
    photo = catdog_photos(catdog_train_dir)[0].read_bytes()
    bus = SwitchableBus()
    service = IngestService(
        blobs=LocalBlobStore(tmp_path / "blobs"),
        samples=SqlSampleRepository(engine),
        limits=ImageLimits(max_bytes=10 * 1024 * 1024, max_pixels=40_000_000),
    )
    bridge = Bridge(service, bus, DiskBuffer(tmp_path / "buffer.sqlite3"))
    await bridge.start()
    acked: list[bool] = []
    try:
        message = device_message_from_mqtt(
            f"dt/edgeloop/site-a/{device}/image", photo, dup=False, received_at=datetime.now(UTC)
        )
        bridge.submit(message, lambda _outcome: acked.append(True))
        await wait_for(lambda: acked == [True], what="the acknowledgement")
    finally:
        await bridge.stop()
    [event] = bus.events_of(ImageReceived)
    assert isinstance(event, ImageReceived)
    stored = SqlSampleRepository(engine).get(event.sample_id)
    assert stored is not None and stored.device_id == device and stored.sha256 == event.image.sha256
