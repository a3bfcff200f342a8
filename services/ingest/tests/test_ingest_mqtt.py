"""The bridge's MQTT side against the real Mosquitto, with the in-process bus: a lost connection loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from edgeloop_common.events import ImageReceived
from edgeloop_common.settings import CommonSettings
from edgeloop_ingest.adapters.samples import samples
from edgeloop_ingest.app import IngestRuntime, create_app
from edgeloop_ingest.settings import Settings
from ingest_testing import SwitchableBus, catdog_photos, publish_qos1, tagged_jpeg, wait_for
from sqlalchemy import func, select

pytestmark = pytest.mark.mqtt


class CuttableProxy:
    """A TCP proxy in front of the broker whose connections the test can cut (a network drop)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, upstream_writer]
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()


@pytest.fixture
async def proxy(mqtt_broker: tuple[str, int]) -> AsyncIterator[CuttableProxy]:
    async with CuttableProxy(mqtt_broker) as running:
        yield running


async def test_a_dropped_connection_redelivers_what_was_not_acknowledged_without_a_second_sample(
    tmp_path: Path, mqtt_broker: tuple[str, int], proxy: CuttableProxy, catdog_train_dir: Path
) -> None:
    site = f"site-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        mqtt_client_id=f"ingest-test-{uuid.uuid4().hex[:8]}",
        mqtt_session_expiry_s=120,
        common=CommonSettings(
            mode="distributed",
            mqtt_host="127.0.0.1",
            mqtt_port=proxy.port,
            data_dir=tmp_path,
            database_url=f"sqlite:///{tmp_path / 'ingest.sqlite3'}",
        ),
    )
    bus = SwitchableBus()
    bus.hold_acks = True  # Kafka "slow": the bridge holds the device messages unacknowledged
    await bus.start()
    photos = catdog_photos(catdog_train_dir)
    payloads = [tagged_jpeg(photos[i], f"{site}/{i}") for i in range(5)]
    app = create_app(settings, bus=bus)
    async with app.router.lifespan_context(app):
        runtime: IngestRuntime = app.state.runtime
        assert runtime.subscriber is not None and await runtime.subscriber.wait_connected(15)
        topic = f"dt/edgeloop/{site}/cam-1/image"
        await asyncio.to_thread(publish_qos1, *mqtt_broker, [(topic, payload) for payload in payloads])
        await wait_for(lambda: bus.held == 5, what="5 events handed to the bus")

        proxy.cut()  # the connection drops with 5 messages unacknowledged
        await wait_for(lambda: not runtime.subscriber.connected, what="the bridge to notice the drop")
        await bus.release_acks()  # Kafka answers now; the acks cannot reach the broker on the old connection
        bus.hold_acks = False
        # The bridge reconnects to its persistent session; the broker redelivers the 5 (DUP) and the bridge
        # matches each to the sample it stored: the same sample and event id, acknowledged this time.
        await wait_for(lambda: len(bus.events_of(ImageReceived)) >= 10, timeout_s=30, what="5 redeliveries")
        await wait_for(lambda: runtime.bridge.in_flight == 0, what="everything acknowledged")

        images = [event for event in bus.events_of(ImageReceived) if isinstance(event, ImageReceived)]
        assert len({event.sample_id for event in images}) == 5
        assert len({context.event_id for event, context in bus.published if isinstance(event, ImageReceived)}) == 5
        with runtime.engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(samples)).scalar_one() == 5
        await asyncio.sleep(1.0)
        assert len(bus.events_of(ImageReceived)) == 10  # acknowledged on the new connection: no third copy
    await bus.stop()


async def test_an_ingest_for_some_sites_bridges_only_theirs(
    tmp_path: Path, mqtt_broker: tuple[str, int], catdog_train_dir: Path
) -> None:
    mine, other = f"site-{uuid.uuid4().hex[:8]}", f"site-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        mqtt_client_id=f"ingest-test-{uuid.uuid4().hex[:8]}",
        mqtt_session_expiry_s=60,
        sites=f"{mine}, {mine}-annex",
        common=CommonSettings(
            mode="distributed",
            mqtt_host=mqtt_broker[0],
            mqtt_port=mqtt_broker[1],
            data_dir=tmp_path,
            database_url=f"sqlite:///{tmp_path / 'ingest.sqlite3'}",
        ),
    )
    bus = SwitchableBus()
    await bus.start()
    photos = catdog_photos(catdog_train_dir)
    app = create_app(settings, bus=bus)
    async with app.router.lifespan_context(app):
        runtime: IngestRuntime = app.state.runtime
        assert runtime.subscriber is not None and await runtime.subscriber.wait_connected(15)
        messages = [
            (f"dt/edgeloop/{other}/cam-1/image", tagged_jpeg(photos[0], f"{other}/0")),
            (f"dt/edgeloop/{mine}/cam-1/image", tagged_jpeg(photos[1], f"{mine}/1")),
            (f"dt/edgeloop/{mine}-annex/cam-2/image", tagged_jpeg(photos[2], f"{mine}-annex/2")),
        ]
        await asyncio.to_thread(publish_qos1, *mqtt_broker, messages)
        await wait_for(lambda: len(bus.events_of(ImageReceived)) >= 2, what="the two images of my sites")
        await asyncio.sleep(0.5)  # time for the other site's image to arrive, were it subscribed
        sites = sorted(event.site_id for event in bus.events_of(ImageReceived) if isinstance(event, ImageReceived))
    await bus.stop()
    assert sites == [mine, f"{mine}-annex"]


def test_the_site_list_gives_one_pair_of_subscriptions_per_site_and_refuses_bad_ids() -> None:
    assert Settings().mqtt_subscriptions() == ("dt/edgeloop/+/+/image", "dt/edgeloop/+/+/telemetry")
    assert Settings(sites=" site-a,site-b ,site-a").mqtt_subscriptions() == (
        "dt/edgeloop/site-a/+/image",
        "dt/edgeloop/site-a/+/telemetry",
        "dt/edgeloop/site-b/+/image",
        "dt/edgeloop/site-b/+/telemetry",
    )
    with pytest.raises(ValueError, match="site id '#' is not valid"):
        Settings(sites="site-a,#")
