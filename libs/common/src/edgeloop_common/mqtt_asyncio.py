"""paho-mqtt 2.x driven by the asyncio event loop, with no network thread.

docs/architecture.md records that publishing from one thread while ``loop_start()`` runs
the network loop in another managed 29-162 messages/s, whereas a client whose
network loop runs where it publishes reached 22,000/s. This driver wires
paho's socket into the running loop with the ``on_socket_*`` callbacks, so
``publish`` writes from the loop thread and a PUBACK resolves an asyncio
future right where it arrives.

Only the (blocking) TCP connect runs in a worker thread, so an unreachable
broker never stalls the loop; the socket callbacks it triggers are marshalled
back onto the loop. The client reconnects with backoff, subscribes again, and
paho resends unacknowledged QoS 1 messages after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

log = logging.getLogger(__name__)

MessageCallback = Callable[[str, bytes], None]


def disable_nagle(sock: Any) -> None:
    """Send every MQTT packet at once. paho leaves Nagle's algorithm on, so a PUBLISH written while an earlier
    small packet (a PUBACK) waits for the broker's delayed TCP ACK is held back for up to 40 ms."""
    with contextlib.suppress(AttributeError, OSError):  # not a TCP socket (WebSocket wrapper, Unix socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class MqttUnavailableError(Exception):
    """The broker could not be reached, or did not acknowledge in time."""


class AsyncMqttClient:
    """One MQTT connection, driven by the running asyncio loop.

    ``on_message(topic, payload)`` is called on the loop thread for every
    message on a subscribed topic.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str | None = None,
        keepalive_s: int = 30,
        max_inflight: int = 1000,
        on_message: MessageCallback | None = None,
        reconnect_max_delay_s: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id or f"edgeloop-{uuid.uuid4().hex[:12]}"
        self.keepalive_s = keepalive_s
        self.on_message = on_message
        self.reconnect_max_delay_s = reconnect_max_delay_s
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
        self._client.max_inflight_messages_set(max_inflight)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_socket_open = self._on_socket_open
        self._client.on_socket_close = self._on_socket_close
        self._client.on_socket_register_write = self._on_socket_register_write
        self._client.on_socket_unregister_write = self._on_socket_unregister_write
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._connected = asyncio.Event()
        self._pending_publishes: dict[int, asyncio.Future[None]] = {}
        self._pending_subscribes: dict[int, asyncio.Future[None]] = {}
        self._subscriptions: dict[str, int] = {}
        self._misc_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def connect(self, timeout_s: float = 10.0) -> None:
        """Connect and wait for the broker's CONNACK; :class:`MqttUnavailableError` if it does not come."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._closing = False
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.to_thread(self._client.connect, self.host, self.port, self.keepalive_s)
                await self._connected.wait()
        except (OSError, TimeoutError) as exc:
            self._client_socket_close()
            raise MqttUnavailableError(f"MQTT broker {self.host}:{self.port} unreachable: {exc or 'timeout'}") from exc
        self._ensure_misc_loop()

    def connect_in_background(self) -> None:
        """Keep trying to connect without blocking (after :meth:`connect` failed); publishes queue meanwhile."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._closing = False
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = self._loop.create_task(self._reconnect_loop())

    async def wait_connected(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    async def subscribe(self, topic: str, qos: int = 1, timeout_s: float = 10.0) -> None:
        """Subscribe and wait for the SUBACK. The subscription is renewed after every reconnect."""
        self._subscriptions[topic] = qos
        result, mid = self._client.subscribe(topic, qos)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttUnavailableError(f"subscribe to {topic} failed: {mqtt.error_string(result)}")
        done = self._future()
        self._pending_subscribes[mid] = done
        try:
            async with asyncio.timeout(timeout_s):
                await done
        except TimeoutError as exc:
            raise MqttUnavailableError(f"no SUBACK for {topic} within {timeout_s}s") from exc

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False) -> asyncio.Future[None]:
        """Queue a publish; the future resolves on the PUBACK (QoS 1) or once written (QoS 0).

        While disconnected paho keeps QoS 1 messages and sends them after the
        reconnect, so the future simply resolves later.
        """
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        done = self._future()
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            done.set_exception(MqttUnavailableError(f"publish to {topic} refused: {mqtt.error_string(info.rc)}"))
            return done
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            done.set_exception(MqttUnavailableError(f"not connected to {self.host}:{self.port}; QoS 0 message dropped"))
            return done
        self._pending_publishes[info.mid] = done
        return done

    async def close(self) -> None:
        self._closing = True
        for task in (self._reconnect_task, self._misc_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.connected:
            self._client.disconnect()
            # Let the loop write the DISCONNECT packet before the socket goes.
            await asyncio.sleep(0)
        self._client_socket_close()
        self._connected.clear()
        for future in [*self._pending_publishes.values(), *self._pending_subscribes.values()]:
            if not future.done():
                future.set_exception(MqttUnavailableError("MQTT client closed"))
        self._pending_publishes.clear()
        self._pending_subscribes.clear()

    # -- paho callbacks (on the loop thread, except the socket ones during a connect) --

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        for topic, qos in self._subscriptions.items():
            client.subscribe(topic, qos)
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._in_loop(self._handle_disconnect)

    def _handle_disconnect(self) -> None:
        self._connected.clear()
        if self._closing or self._loop is None:
            return
        log.warning("MQTT connection to %s:%d lost; reconnecting", self.host, self.port)
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = self._loop.create_task(self._reconnect_loop())

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        done = self._pending_publishes.pop(mid, None)
        if done is not None and not done.done():
            done.set_result(None)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        done = self._pending_subscribes.pop(mid, None)
        if done is None or done.done():
            return
        failures = [code for code in reason_codes if code.is_failure]
        if failures:
            done.set_exception(MqttUnavailableError(f"subscription refused: {failures}"))
        else:
            done.set_result(None)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self.on_message is not None:
            self.on_message(message.topic, bytes(message.payload))

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        disable_nagle(sock)
        fd = sock.fileno()
        self._in_loop(lambda: self._require_loop().add_reader(fd, self._read))

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()  # taken now: paho closes the socket right after this callback
        self._in_loop(lambda: self._require_loop().remove_reader(fd))

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        self._in_loop(lambda: self._require_loop().add_writer(fd, self._write))

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        self._in_loop(lambda: self._require_loop().remove_writer(fd))

    # -- driving the network loop --

    def _read(self) -> None:
        self._client.loop_read()

    def _write(self) -> None:
        self._client.loop_write()

    async def _misc_loop(self) -> None:
        while True:
            self._client.loop_misc()  # keepalive pings; detects a dead connection
            await asyncio.sleep(1.0)

    async def _reconnect_loop(self) -> None:
        delay = 0.1
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                await asyncio.to_thread(self._client.reconnect)
            except OSError as exc:
                log.info("MQTT reconnect to %s:%d failed: %s", self.host, self.port, exc)
                delay = min(self.reconnect_max_delay_s, delay * 2)
                continue
            if await self.wait_connected(timeout_s=10.0):
                log.info("MQTT connected to %s:%d", self.host, self.port)
                self._ensure_misc_loop()
                return

    def _ensure_misc_loop(self) -> None:
        if self._misc_task is None or self._misc_task.done():
            self._misc_task = self._require_loop().create_task(self._misc_loop(), name=f"mqtt-misc:{self.client_id}")

    def _client_socket_close(self) -> None:
        sock = self._client.socket()
        if sock is not None:
            self._client._sock_close()  # paho has no public "close without DISCONNECT"

    def _future(self) -> asyncio.Future[None]:
        return self._require_loop().create_future()

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("AsyncMqttClient.connect() has not been called")
        return self._loop

    def _in_loop(self, callback: Callable[[], object]) -> None:
        if threading.get_ident() == self._loop_thread:
            callback()
        else:
            self._require_loop().call_soon_threadsafe(callback)
