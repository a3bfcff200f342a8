"""The bridge's MQTT client: paho-mqtt driven by the asyncio event loop, no network thread.

paho's ``loop_start()`` runs the network loop in a thread of its own; a client
used from another thread that way managed a few hundred messages per second
here (docs/architecture.md). Instead the socket is registered with the event loop
(``on_socket_open`` / ``on_socket_register_write`` ...): when it is readable
the loop calls ``loop_read()``, when there is something to write
``loop_write()``, and a small task calls ``loop_misc()`` for keepalives.
Messages are handed over in arrival order, and every callback (including the
bridge's and the acknowledgements) runs on the event loop's thread.

The session is persistent (MQTT 5, ``clean_start=False``, a session expiry
interval, a fixed client id): a message the bridge has not acknowledged is
redelivered after a restart or a reconnect. Acknowledgements are manual
(``manual_ack=True``) and sent by the bridge once the message is durable.
``Receive Maximum`` bounds how many unacknowledged messages the broker sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from edgeloop_common.mqtt_asyncio import disable_nagle
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgeloop_ingest import metrics

log = logging.getLogger(__name__)

READ_BURST = 128  # packets read per readiness callback before the loop runs other work
MISC_INTERVAL_S = 1.0


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int
    client_id: str
    subscriptions: tuple[str, ...]
    receive_maximum: int = 1000
    session_expiry_s: int = 7 * 24 * 3600
    keepalive_s: int = 30
    connect_timeout_s: float = 5.0
    # "5" (default: session expiry and Receive Maximum) or "3.1.1" for brokers without MQTT 5, such as the
    # embedded broker of standalone mode; there the session is kept with clean_session=False instead.
    protocol: str = "5"


@dataclass(frozen=True)
class ReceivedMessage:
    topic: str
    payload: bytes
    dup: bool
    qos: int
    ack: Callable[[], None]  # PUBACK, on the connection the message came on (no-op on a later one)


OnMessage = Callable[[ReceivedMessage], None]


class AsyncioMqttSubscriber:
    def __init__(self, config: MqttConfig, on_message: OnMessage) -> None:
        self.config = config
        self.on_message = on_message
        self.connected = False
        self.received = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection = 0  # incremented per CONNACK; an ack must go out on the connection its message came on
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._paused = False
        self._connected_once = asyncio.Event()
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        if self.config.protocol == "5":
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=self.config.client_id, protocol=mqtt.MQTTv5, manual_ack=True
            )
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.config.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,
                manual_ack=True,
            )
        client.connect_timeout = self.config.connect_timeout_s
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._supervisor = asyncio.create_task(self._supervise(), name="mqtt-supervisor")

    async def wait_connected(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected_once.wait()
        except TimeoutError:
            return False
        return True

    def pause(self) -> None:
        """Read no more messages (acknowledgements still go out); for a graceful stop."""
        self._paused = True
        sock = self._client.socket()
        if sock is not None and self._loop is not None:
            self._loop.remove_reader(sock)

    async def stop(self) -> None:
        """Disconnect without acknowledging anything still in flight: the broker keeps it for the session."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        if self.connected:
            self._client.disconnect()
            self._client.loop_write()
        self._close_socket_registration()

    # -- connection management ------------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay_s = 0.2
        while not self._stopping:
            if self._client.socket() is None:
                try:
                    await self._connect()
                    delay_s = 0.2
                except (OSError, TimeoutError) as exc:
                    log.warning(
                        "MQTT broker %s:%d unreachable (%s); retrying in %.1f s",
                        self.config.host,
                        self.config.port,
                        exc,
                        delay_s,
                    )
                    await asyncio.sleep(delay_s)
                    delay_s = min(delay_s * 2, 10.0)
                    continue
            self._client.loop_misc()
            await asyncio.sleep(MISC_INTERVAL_S if self.connected else 0.05)

    async def _connect(self) -> None:
        # paho connects with a blocking socket call; probe asynchronously first so an unreachable
        # broker never blocks the event loop (a refused probe raises OSError here).
        async with asyncio.timeout(self.config.connect_timeout_s):
            _, writer = await asyncio.open_connection(self.config.host, self.config.port)
        writer.close()
        if self.config.protocol != "5":
            self._client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
            return
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.config.session_expiry_s
        properties.ReceiveMaximum = self.config.receive_maximum
        self._client.connect(
            self.config.host,
            self.config.port,
            keepalive=self.config.keepalive_s,
            clean_start=False,
            properties=properties,
        )

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            log.error("MQTT broker refused the connection: %s", reason)
            return
        self._connection += 1
        self.connected = True
        metrics.MQTT_CONNECTED.set(1)
        log.info(
            "connected to MQTT %s:%d as %r (session present: %s)",
            self.config.host,
            self.config.port,
            self.config.client_id,
            flags.session_present,
        )
        if self.config.protocol == "5":
            options = SubscribeOptions(qos=1)
            client.subscribe([(topic, options) for topic in self.config.subscriptions])
        else:
            client.subscribe([(topic, 1) for topic in self.config.subscriptions])

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        failed = [str(reason) for reason in reasons if reason.is_failure]
        if failed:
            log.error("MQTT subscription refused: %s", failed)
            return
        self._connected_once.set()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
        was_connected, self.connected = self.connected, False
        metrics.MQTT_CONNECTED.set(0)
        if was_connected and not self._stopping:
            log.warning("disconnected from MQTT broker (%s); reconnecting", reason)

    # -- messages -------------------------------------------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.received += 1
        connection, mid, qos = self._connection, message.mid, message.qos

        def ack() -> None:
            # A message from an earlier connection is redelivered on this one with the same packet id;
            # acking the old copy here could acknowledge a different, newer message. Leave it to the copy.
            if qos > 0 and connection == self._connection and self.connected:
                client.ack(mid, qos)

        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = repr(message._topic)  # shown in the dead letter's reason
        self.on_message(
            ReceivedMessage(topic=topic, payload=bytes(message.payload), dup=bool(message.dup), qos=qos, ack=ack)
        )

    # -- the socket, driven by the event loop ---------------------------------------------------------------------

    def _on_socket_open(self, client: mqtt.Client, _userdata: Any, sock: mqtt.SocketLike) -> None:
        assert self._loop is not None
        disable_nagle(sock)  # PUBACKs go out as soon as a message is durable, not after a delayed TCP ACK
        if not self._paused:
            self._loop.add_reader(sock, self._read)

    def _read(self) -> None:
        for _ in range(READ_BURST):
            before = self.received
            if self._client.loop_read() != mqtt.MQTT_ERR_SUCCESS or self.received == before:
                return

    def _on_socket_close(self, _client: mqtt.Client, _userdata: Any, sock: mqtt.SocketLike) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)

    def _on_socket_register_write(self, client: mqtt.Client, _userdata: Any, sock: mqtt.SocketLike) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, client.loop_write)

    def _on_socket_unregister_write(self, _client: mqtt.Client, _userdata: Any, sock: mqtt.SocketLike) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock)

    def _close_socket_registration(self) -> None:
        sock = self._client.socket()
        if sock is not None and self._loop is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
