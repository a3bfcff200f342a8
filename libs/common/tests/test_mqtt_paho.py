"""SyscallThriftyClient (edgeloop_common.mqtt_paho): paho reading in large chunks and writing queued packets
together, checked through AsyncMqttClient against the real Mosquitto -- every message arrives whole and in order
(packets straddling the read buffer's edge, one larger than the buffer), every acknowledgement reaches the broker
-- with far fewer reads and writes than messages."""

from __future__ import annotations

import asyncio
import collections
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from edgeloop_common.mqtt_asyncio import AsyncMqttClient, MqttProtocol, ReceivedMessage
from edgeloop_common.mqtt_paho import JOIN_SIZE, READ_SIZE, _coalesce

MESSAGES = 2_000


def _payload(index: int) -> bytes:
    # Sizes from a few bytes to ~3 KiB, and one larger than the read buffer: packets end anywhere in a chunk.
    size = READ_SIZE + 1000 if index == MESSAGES // 2 else 7 + (index * 131) % 3000
    return f"{index:06d}:".encode() + bytes([index % 251]) * size


class _SocketCalls:
    """Counts one client's socket reads and writes (paho's own methods, which the subclass calls)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, client_id: str) -> None:
        self.reads = 0
        self.writes = 0
        recv, send = mqtt.Client._sock_recv, mqtt.Client._sock_send

        def counting_recv(client: mqtt.Client, bufsize: int) -> bytes:
            self.reads += client._client_id == client_id.encode()
            return recv(client, bufsize)

        def counting_send(client: mqtt.Client, buf: Any) -> int:
            self.writes += client._client_id == client_id.encode()
            return send(client, buf)

        monkeypatch.setattr(mqtt.Client, "_sock_recv", counting_recv)
        monkeypatch.setattr(mqtt.Client, "_sock_send", counting_send)


@pytest.mark.mqtt
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_every_message_arrives_whole_in_order_and_acknowledged_with_few_reads_and_writes(
    mqtt_broker: tuple[str, int], monkeypatch: pytest.MonkeyPatch, protocol: MqttProtocol
) -> None:
    topic = f"test/paho-thrifty/{uuid.uuid4().hex[:10]}"
    client_id = f"test-thrifty-{uuid.uuid4().hex[:10]}"
    received: asyncio.Queue[ReceivedMessage] = asyncio.Queue()
    subscriber = AsyncMqttClient(
        *mqtt_broker,
        client_id=client_id,
        protocol=protocol,
        session_expiry_s=30,
        receive_maximum=1000,
        manual_ack=True,
        on_receive=received.put_nowait,
        read_burst=64,
    )
    publisher = AsyncMqttClient(*mqtt_broker, max_inflight=1000)
    await subscriber.connect()
    await subscriber.subscribe(topic, qos=1)
    await publisher.connect()
    calls = _SocketCalls(monkeypatch, client_id)
    try:
        acks = [publisher.publish(topic, _payload(index), qos=1) for index in range(MESSAGES)]
        taken: list[ReceivedMessage] = []
        for index in range(MESSAGES):
            message = await asyncio.wait_for(received.get(), 30)
            assert message.payload == _payload(index), f"message {index} arrived changed or out of order"
            taken.append(message)
            if len(taken) == 100:  # as ingest does once a batch is durable: many acknowledgements at once
                for each in taken:
                    each.ack()
                taken.clear()
        await asyncio.wait_for(asyncio.gather(*acks), 30)  # the broker acknowledged every publish
    finally:
        await publisher.close()
        await subscriber.close()

    # The subscriber's: paho alone reads each message in three reads and writes each PUBACK on its own (here
    # acknowledged 100 at a time).
    assert calls.reads < MESSAGES / 2, f"{calls.reads} socket reads for {MESSAGES} messages"
    assert calls.writes < MESSAGES / 2, f"{calls.writes} socket writes for {MESSAGES} messages"

    # The subscriber's acknowledgements all reached the broker: its session holds nothing to redeliver.
    redelivered: asyncio.Queue[ReceivedMessage] = asyncio.Queue()
    again = AsyncMqttClient(
        *mqtt_broker,
        client_id=client_id,
        protocol=protocol,
        session_expiry_s=0 if protocol == "5" else None,
        manual_ack=True,
        on_receive=redelivered.put_nowait,
    )
    await again.connect()
    await asyncio.sleep(1.0)
    await again.close()
    assert redelivered.empty(), f"{redelivered.qsize()} message(s) redelivered: acknowledgements lost"


def _packet(command: int, data: bytes, qos: int = 1, pos: int = 0) -> dict[str, Any]:
    return {
        "command": command,
        "mid": 1,
        "qos": qos,
        "pos": pos,
        "to_process": len(data) - pos,
        "packet": data,
        "info": None,
    }


def test_queued_packets_are_joined_in_order_except_the_ones_paho_acts_on_once_written() -> None:
    puback, publish_qos1, publish_qos0, disconnect = 0x40, 0x32, 0x30, 0xE0
    queue = collections.deque(
        [
            _packet(puback, b"xxAB", pos=2),  # partly written already: only its rest goes out
            _packet(publish_qos1, b"CD"),
            _packet(publish_qos0, b"EF", qos=0),  # its write is reported to on_publish: alone
            _packet(puback, b"GH"),
            _packet(puback, b"IJ"),
            _packet(disconnect, b"KL"),  # its write closes the socket: alone
            _packet(puback, b"MN"),
            _packet(publish_qos1, b"O" * (JOIN_SIZE - 4)),
            _packet(puback, b"PQ"),  # joined: JOIN_SIZE bytes
            _packet(puback, b"RS"),  # one more would pass JOIN_SIZE: a new run
        ]
    )
    _coalesce(queue)
    sent = [bytes(p["packet"][p["pos"] :]) for p in queue]
    assert sent == [b"ABCD", b"EF", b"GHIJ", b"KL", b"MN" + b"O" * (JOIN_SIZE - 4) + b"PQ", b"RS"]
    assert [p["command"] & 0xF0 for p in queue][1:4] == [0x30, 0x00, 0xE0]
    assert all(p["to_process"] == len(p["packet"]) - p["pos"] for p in queue)
