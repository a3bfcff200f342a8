"""AsyncMqttClient in ingest's mode (manual acknowledgement, persistent session) against the real Mosquitto."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from edgeloop_common.mqtt_asyncio import AsyncMqttClient, MqttProtocol, ReceivedMessage

pytestmark = pytest.mark.mqtt

ConnectSubscriber = Callable[[], Awaitable[AsyncMqttClient]]


@pytest.fixture
def client_id() -> str:
    return f"test-manual-ack-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def topic() -> str:
    return f"test/manual-ack/{uuid.uuid4().hex[:10]}"


@pytest.fixture
def received() -> asyncio.Queue[ReceivedMessage]:
    return asyncio.Queue()


@pytest.fixture
async def publisher(mqtt_broker: tuple[str, int], client_id: str) -> AsyncIterator[AsyncMqttClient]:
    client = AsyncMqttClient(*mqtt_broker)
    await client.connect()
    yield client
    await client.close()
    # A clean session with the test's client id makes the broker forget the test's persistent session.
    forget = AsyncMqttClient(*mqtt_broker, client_id=client_id)
    await forget.connect()
    await forget.close()


@pytest.fixture(params=["5", "3.1.1"])
def connect_subscriber(
    request: pytest.FixtureRequest,
    mqtt_broker: tuple[str, int],
    client_id: str,
    received: asyncio.Queue[ReceivedMessage],
) -> ConnectSubscriber:
    """Connects a client in ingest's mode (MQTT 5 or 3.1.1) with the test's client id, so to the same session."""
    protocol: MqttProtocol = request.param

    async def connect() -> AsyncMqttClient:
        subscriber = AsyncMqttClient(
            *mqtt_broker,
            client_id=client_id,
            protocol=protocol,
            session_expiry_s=30,
            receive_maximum=10,
            manual_ack=True,
            on_receive=received.put_nowait,
        )
        await subscriber.connect()
        return subscriber

    return connect


async def next_message(received: asyncio.Queue[ReceivedMessage]) -> ReceivedMessage:
    return await asyncio.wait_for(received.get(), timeout=5)


async def drop_connection(client: AsyncMqttClient) -> None:
    """A network drop (no DISCONNECT); the client reconnects to its session by itself."""
    lost = asyncio.Event()
    client.on_connection_change = lambda connected: None if connected else lost.set()
    sock = client._client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)
    await asyncio.wait_for(lost.wait(), timeout=5)
    assert await client.wait_connected(timeout_s=5)


async def test_what_is_not_acknowledged_stays_with_the_session_for_the_next_connection(
    connect_subscriber: ConnectSubscriber,
    topic: str,
    received: asyncio.Queue[ReceivedMessage],
    publisher: AsyncMqttClient,
) -> None:
    first = await connect_subscriber()
    assert not first.session_present
    await first.subscribe(topic, qos=1)
    await asyncio.gather(publisher.publish(topic, b"one"), publisher.publish(topic, b"two"))
    one, two = await next_message(received), await next_message(received)
    assert (one.payload, two.payload, one.dup, one.qos) == (b"one", b"two", False, 1)
    one.ack()
    await first.close()

    second = await connect_subscriber()  # a restart: a new client with the same id
    try:
        assert second.session_present
        redelivered = await next_message(received)
        assert (redelivered.payload, redelivered.dup) == (b"two", True)
        redelivered.ack()
        await asyncio.sleep(0.3)
        assert received.empty()  # "one" was acknowledged before the restart
    finally:
        await second.close()


async def test_an_ack_counts_only_on_the_connection_its_message_came_on(
    connect_subscriber: ConnectSubscriber,
    topic: str,
    received: asyncio.Queue[ReceivedMessage],
    publisher: AsyncMqttClient,
) -> None:
    subscriber = await connect_subscriber()
    try:
        await subscriber.subscribe(topic, qos=1)
        await publisher.publish(topic, b"image")
        first_copy = await next_message(received)

        await drop_connection(subscriber)
        second_copy = await next_message(received)
        assert (second_copy.payload, second_copy.dup) == (b"image", True)
        # The first copy's ack would carry the same packet id as the second copy: it must send nothing.
        first_copy.ack()
        await asyncio.sleep(0.2)  # time for a wrong PUBACK to reach the broker

        await drop_connection(subscriber)
        third_copy = await next_message(received)  # so the broker still holds it
        assert third_copy.payload == b"image"
        third_copy.ack()
    finally:
        await subscriber.close()  # writes the PUBACK before the DISCONNECT

    restarted = await connect_subscriber()
    try:
        await asyncio.sleep(0.3)
        assert received.empty()  # acknowledged on its own connection: gone
    finally:
        await restarted.close()


def test_manual_ack_without_a_receiver_is_refused() -> None:
    with pytest.raises(ValueError, match="manual_ack needs on_receive"):
        AsyncMqttClient("127.0.0.1", 1883, manual_ack=True)
