"""The bridge's MQTT connection sends its PUBACKs at once (real Mosquitto)."""

from __future__ import annotations

import socket
import uuid

import pytest
from edgeloop_ingest.adapters.mqtt import AsyncioMqttSubscriber, MqttConfig

pytestmark = pytest.mark.mqtt


async def test_the_bridge_connection_does_not_hold_back_small_packets(mqtt_broker: tuple[str, int]) -> None:
    """Nagle's algorithm (paho leaves it on) would keep a PUBACK waiting for the broker's delayed TCP ACK of the
    previous one, up to 40 ms, holding the device's in-flight window for nothing."""
    host, port = mqtt_broker
    config = MqttConfig(
        host=host,
        port=port,
        client_id=f"test-nodelay-{uuid.uuid4().hex[:10]}",
        subscriptions=(f"test/nodelay/{uuid.uuid4().hex[:10]}/+",),
        session_expiry_s=1,  # the broker forgets this test's session a second after it leaves
    )
    subscriber = AsyncioMqttSubscriber(config, on_message=lambda _message: None)
    await subscriber.start()
    try:
        assert await subscriber.wait_connected(timeout_s=10), "the bridge did not connect to Mosquitto"
        sock = subscriber.client._client.socket()
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        await subscriber.stop()
