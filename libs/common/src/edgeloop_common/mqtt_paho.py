"""paho-mqtt's ``Client`` with fewer system calls per message, for :mod:`edgeloop_common.mqtt_asyncio`.

A system call is the dearest thing a message costs on a sandboxed or virtualised host (each one ~5-20 µs here),
and paho makes several per message: it reads a packet in three ``recv`` calls (its command byte, each byte of its
remaining length, then its body) and writes each queued packet with its own ``send`` (a PUBACK per message
received, a PUBLISH per message sent). This subclass reads up to 64 KiB per ``recv`` and hands paho the packets
from that buffer, and writes the packets queued by then in one ``send``. Ingest's CPU per telemetry reading fell
by about a fifth with it (bench/telemetry.py, BENCHMARKS.md).

It overrides two of paho's private methods (``_sock_recv``, ``_packet_write``), so it is tied to the pinned paho
(constraints.txt); tests/test_mqtt_paho.py checks both against a real Mosquitto.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

READ_SIZE = 64 * 1024
# The most bytes joined into one packet: past this a send is as large as a socket takes at once anyway, and a
# partly written packet is copied again whenever more is queued behind it.
JOIN_SIZE = 64 * 1024
_PUBLISH = 0x30
_DISCONNECT = 0xE0
# The command of a packet made of several: neither a QoS 0 PUBLISH (whose write paho reports to on_publish) nor a
# DISCONNECT (whose write closes the socket), the two commands paho acts on once written. Those stay alone.
_COALESCED = 0x00


class SyscallThriftyClient(mqtt.Client):
    """A paho ``Client`` that reads in large chunks and writes queued packets together; otherwise paho's own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_buffer = b""
        self._read_position = 0
        self._buffered_socket: Any = None  # the socket the buffer's bytes came from

    def buffered_bytes(self) -> int:
        """Bytes read from the socket that paho has not taken yet: the socket's readiness no longer announces
        them, so the driver reads again while there are any."""
        if self._buffered_socket is not self._sock:
            return 0
        return len(self._read_buffer) - self._read_position

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._buffered_socket is not self._sock:  # a new connection: nothing read on the old one belongs to it
            self._read_buffer, self._read_position, self._buffered_socket = b"", 0, self._sock
        if self._read_position >= len(self._read_buffer):
            chunk = super()._sock_recv(READ_SIZE)  # BlockingIOError when there is nothing, b"" at the end
            if len(chunk) <= bufsize:
                self._read_buffer, self._read_position = b"", 0
                return chunk
            self._read_buffer, self._read_position = chunk, 0
        start = self._read_position
        self._read_position = min(start + bufsize, len(self._read_buffer))
        return self._read_buffer[start : self._read_position]

    def _packet_write(self) -> MQTTErrorCode:
        _coalesce(self._out_packet)
        return super()._packet_write()


def _coalesce(queue: Any) -> None:
    """Join runs of queued packets into one, in order, leaving alone the ones paho acts on once written."""
    if len(queue) < 2:
        return
    packets = list(queue)
    queue.clear()
    run: list[dict[str, Any]] = []
    run_bytes = 0
    for packet in packets:
        command = packet["command"] & 0xF0
        if command == _DISCONNECT or (command == _PUBLISH and packet["qos"] == 0):
            _flush(run, queue)
            queue.append(packet)
            continue
        if run_bytes + packet["to_process"] > JOIN_SIZE:
            _flush(run, queue)
        run.append(packet)
        run_bytes = packet["to_process"] if len(run) == 1 else run_bytes + packet["to_process"]
    _flush(run, queue)


def _flush(run: list[dict[str, Any]], queue: Any) -> None:
    if len(run) == 1:
        queue.append(run[0])
    elif run:
        data = b"".join(bytes(packet["packet"][packet["pos"] :]) for packet in run)
        queue.append(
            {"command": _COALESCED, "mid": 0, "qos": 1, "pos": 0, "to_process": len(data), "packet": data, "info": None}
        )
    run.clear()
