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

It serves two kinds of user:

* devices, the gateway, the demo: a clean session, messages acknowledged on
  receipt, ``on_message(topic, payload)``;
* ingest's bridge: a persistent session (``session_expiry_s``; a fixed client
  id), MQTT 5 or 3.1.1, and manual acknowledgement (``manual_ack=True``):
  ``on_receive`` gets a :class:`ReceivedMessage` and paho sends no PUBACK
  until its ``ack()`` is called -- once the message is durable. The broker
  redelivers, after a reconnect or a restart, what was not acknowledged, and
  MQTT 5's ``Receive Maximum`` bounds how much is unacknowledged at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop_common.mqtt_auth import MqttAuth
from edgeloop_common.mqtt_paho import SyscallThriftyClient

log = logging.getLogger(__name__)

MqttProtocol = Literal["3.1.1", "5"]


@dataclass(frozen=True)
class ReceivedMessage:
    """A message as ``on_receive`` gets it."""

    topic: str  # repr() of the raw bytes when they are not UTF-8, so the message can still be dead-lettered
    payload: bytes
    dup: bool  # the broker sent it before (it was not acknowledged then)
    qos: int
    # Sends the PUBACK (manual_ack mode), on the connection the message came on: a no-op on a later connection,
    # where the broker redelivers the message anyway. Without manual_ack paho has acknowledged it already.
    ack: Callable[[], None]
    # The MQTT packet identifier (0 at QoS 0). A redelivery carries the same one as the first delivery, so with the
    # payload it tells a resent message from a new one with the same bytes (packet ids are reused only after
    # their message was acknowledged).
    packet_id: int = 0
    # MQTT 5 user properties (name: value; a repeated name keeps its last value); empty under MQTT 3.1.1. The
    # trace context travels here (``traceparent``, docs/observability.md).
    user_properties: Mapping[str, str] = field(default_factory=dict)


MessageCallback = Callable[[str, bytes], None]
ReceiveCallback = Callable[[ReceivedMessage], None]
ConnectionCallback = Callable[[bool], None]


def disable_nagle(sock: Any) -> None:
    """Send every MQTT packet at once. paho leaves Nagle's algorithm on, so a PUBLISH written while an earlier
    small packet (a PUBACK) waits for the broker's delayed TCP ACK is held back for up to 40 ms."""
    with contextlib.suppress(AttributeError, OSError):  # not a TCP socket (WebSocket wrapper, Unix socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class MqttUnavailableError(Exception):
    """The broker could not be reached, or did not acknowledge in time."""


class MqttRefusedError(MqttUnavailableError):
    """The broker answered, and said no: a CONNACK, PUBACK (MQTT 5) or SUBACK with a failure reason code, such as
    "Not authorized" from a secured broker (docs/security.md). ``reason`` is that code's name."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _user_properties(message: mqtt.MQTTMessage) -> dict[str, str]:
    pairs = getattr(getattr(message, "properties", None), "UserProperty", None) or []
    return {str(name): str(value) for name, value in pairs}


class AsyncMqttClient:
    """One MQTT connection, driven by the running asyncio loop.

    ``on_message(topic, payload)`` and ``on_receive(message)`` are called on the loop thread for every message on
    a subscribed topic, in arrival order. Other options:

    * ``protocol``: ``"3.1.1"`` (default) or ``"5"``;
    * ``session_expiry_s``: ``None`` (default) starts a clean session on every connect. A number keeps the session
      (subscriptions, unacknowledged messages) on the broker across disconnects: under MQTT 5 for that many
      seconds, under 3.1.1 (``clean_session=False``, no expiry interval) as long as the broker keeps sessions;
    * ``receive_maximum``: MQTT 5's bound on unacknowledged QoS 1/2 messages the broker sends (ignored for 3.1.1);
    * ``manual_ack``: no PUBACK until ``ReceivedMessage.ack()`` (needs ``on_receive``);
    * ``read_burst``: packets read per readiness callback while each delivers a message, so a backlog of
      messages is taken in one go before the loop runs other work;
    * ``on_connection_change(connected)``: called on the loop thread on every CONNACK and every lost connection;
    * ``auth``: username/password and TLS (:class:`~edgeloop_common.mqtt_auth.MqttAuth`; default anonymous,
      plain text).

    What the broker refused is counted (``connect_refusals``, ``publish_refusals``, ``subscribe_refusals``) and
    raised as :class:`MqttRefusedError`: by ``connect`` for a refused CONNACK (no retrying then), by a publish's
    future for a PUBACK failure (MQTT 5 only: a 3.1.1 broker acknowledges a denied publish like any other), by
    ``subscribe`` for a refused SUBACK.
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
        on_receive: ReceiveCallback | None = None,
        manual_ack: bool = False,
        protocol: MqttProtocol = "3.1.1",
        session_expiry_s: int | None = None,
        receive_maximum: int | None = None,
        connect_timeout_s: float = 5.0,
        read_burst: int = 1,
        on_connection_change: ConnectionCallback | None = None,
        auth: MqttAuth | None = None,
    ) -> None:
        if manual_ack and on_receive is None:
            raise ValueError("manual_ack needs on_receive: nothing could acknowledge the messages")
        self.host = host
        self.port = port
        self.client_id = client_id or f"edgeloop-{uuid.uuid4().hex[:12]}"
        self.keepalive_s = keepalive_s
        self.on_message = on_message
        self.on_receive = on_receive
        self.on_connection_change = on_connection_change
        self.reconnect_max_delay_s = reconnect_max_delay_s
        self.manual_ack = manual_ack
        self.protocol = protocol
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.read_burst = read_burst
        self.auth = auth or MqttAuth()
        self.connect_refusals = 0
        self.publish_refusals = 0
        self.subscribe_refusals = 0
        self._refused = asyncio.Event()
        self._refusal_reason = ""
        self._client = self._make_client(max_inflight, connect_timeout_s)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._connected = asyncio.Event()
        self._connection_number = 0  # incremented per CONNACK: an ack goes out only on its message's connection
        self._session_present = False
        self._messages_received = 0
        self._reading_paused = False
        self._pending_publishes: dict[int, asyncio.Future[None]] = {}
        self._pending_subscribes: dict[int, asyncio.Future[None]] = {}
        self._subscriptions: dict[str, int] = {}
        self._connect_attempt: asyncio.Task[None] | None = None
        self._misc_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closing = False

    def _make_client(self, max_inflight: int, connect_timeout_s: float) -> SyscallThriftyClient:
        if self.protocol == "5":  # MQTT 5 keeps the session with clean_start and the expiry interval (connect)
            client = SyscallThriftyClient(
                CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5, manual_ack=self.manual_ack
            )
        else:
            client = SyscallThriftyClient(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=self.session_expiry_s is None,
                manual_ack=self.manual_ack,
            )
        if self.auth.username is not None:
            client.username_pw_set(self.auth.username, self.auth.password)
        if self.auth.uses_tls:
            client.tls_set(
                ca_certs=_path_or_none(self.auth.ca_file),
                certfile=_path_or_none(self.auth.cert_file),
                keyfile=_path_or_none(self.auth.key_file),
            )
        client.max_inflight_messages_set(max_inflight)
        client.connect_timeout = connect_timeout_s
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def session_present(self) -> bool:
        """Whether the broker still had this client's session at the last CONNACK."""
        return self._session_present

    @property
    def messages_received(self) -> int:
        return self._messages_received

    async def connect(self, timeout_s: float = 10.0) -> None:
        """Connect and wait for the broker's CONNACK; :class:`MqttUnavailableError` if it does not come,
        :class:`MqttRefusedError` if it refuses the connection (unknown client, wrong password: not retried)."""
        self._bind_to_running_loop()
        self._refused.clear()
        try:
            async with asyncio.timeout(timeout_s):
                await self._attempt_connection()
                await _first_of(self._connected, self._refused)
        except (OSError, TimeoutError) as exc:
            self._client_socket_close()
            raise MqttUnavailableError(f"MQTT broker {self.host}:{self.port} unreachable: {exc or 'timeout'}") from exc
        if not self.connected:  # refused: no background reconnect to a broker that said no
            self._closing = True
            self._client_socket_close()
            raise MqttRefusedError(
                f"MQTT broker {self.host}:{self.port} refused the connection: {self._refusal_reason}",
                self._refusal_reason,
            )
        self._ensure_misc_loop()

    def connect_in_background(self) -> None:
        """Keep trying to connect without blocking (instead of :meth:`connect`, or after it failed); publishes
        queue meanwhile."""
        self._bind_to_running_loop()
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = self._require_loop().create_task(self._reconnect_loop())

    async def wait_connected(self, timeout_s: float | None) -> bool:
        """Wait for a connection (``None``: as long as it takes); False if there is none after ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    async def subscribe(self, topic: str | Sequence[str], qos: int = 1, timeout_s: float = 10.0) -> None:
        """Subscribe (several topics: in one SUBSCRIBE) and wait for the SUBACK. The subscription is renewed after
        every reconnect."""
        topics = [topic] if isinstance(topic, str) else list(topic)
        for each in topics:
            self._subscriptions[each] = qos
        result, mid = self._client.subscribe([(each, qos) for each in topics])
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            for each in topics:
                self._subscriptions.pop(each, None)
            raise MqttUnavailableError(f"subscribe to {', '.join(topics)} failed: {mqtt.error_string(result)}")
        done = self._future()
        self._pending_subscribes[mid] = done
        try:
            async with asyncio.timeout(timeout_s):
                await done
        except TimeoutError as exc:
            raise MqttUnavailableError(f"no SUBACK for {', '.join(topics)} within {timeout_s}s") from exc
        except MqttRefusedError:
            for each in topics:  # not renewed after a reconnect either
                self._subscriptions.pop(each, None)
            raise

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        user_properties: Mapping[str, str] | None = None,
    ) -> asyncio.Future[None]:
        """Queue a publish; the future resolves on the PUBACK (QoS 1) or once written (QoS 0).

        While disconnected paho keeps QoS 1 messages and sends them after the
        reconnect, so the future simply resolves later. ``user_properties`` go with
        the message under MQTT 5 and are left out under 3.1.1 (which has none).
        """
        properties = None
        if user_properties and self.protocol == "5":
            properties = Properties(PacketTypes.PUBLISH)
            properties.UserProperty = list(user_properties.items())
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        done = self._future()
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            done.set_exception(MqttUnavailableError(f"publish to {topic} refused: {mqtt.error_string(info.rc)}"))
            return done
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            done.set_exception(MqttUnavailableError(f"not connected to {self.host}:{self.port}; QoS 0 message dropped"))
            return done
        self._pending_publishes[info.mid] = done
        return done

    def pause_reading(self) -> None:
        """Read nothing more, so no new messages arrive; acknowledgements and publishes still go out (for a
        graceful stop: what was received can still be acknowledged)."""
        self._reading_paused = True
        sock = self._client.socket()
        if sock is not None and self._loop is not None:
            self._loop.remove_reader(sock)

    async def close(self) -> None:
        """Disconnect. In manual_ack mode what is still unacknowledged stays with the broker's session."""
        self._closing = True
        for task in (self._reconnect_task, self._misc_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._connect_attempt is not None:
            # A connect still running in its worker thread would open a connection after the close; let it end.
            await asyncio.wait([self._connect_attempt])
        if self.connected:
            self._client.disconnect()
            self._client.loop_write()  # the DISCONNECT goes out now; paho closes the socket once it is written
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
            self.connect_refusals += 1
            self._refusal_reason = str(reason_code)
            self._refused.set()
            return
        self._connection_number += 1
        self._session_present = bool(flags.session_present)
        if self._subscriptions:
            client.subscribe(list(self._subscriptions.items()))
        self._connected.set()
        if self.on_connection_change is not None:
            self.on_connection_change(True)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._in_loop(lambda: self._handle_disconnect(reason_code))

    def _handle_disconnect(self, reason_code: Any) -> None:
        was_connected = self.connected
        self._connected.clear()
        if was_connected and self.on_connection_change is not None:
            self.on_connection_change(False)
        if self._closing or self._loop is None:
            return
        log.warning("MQTT connection to %s:%d lost (%s); reconnecting", self.host, self.port, reason_code)
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = self._loop.create_task(self._reconnect_loop())

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        done = self._pending_publishes.pop(mid, None)
        if reason_code.is_failure:  # MQTT 5 only, e.g. "Not authorized" from the broker's ACL
            self.publish_refusals += 1
            log.warning("MQTT broker %s:%d refused a publish: %s", self.host, self.port, reason_code)
            if done is not None and not done.done():
                done.set_exception(MqttRefusedError(f"publish refused: {reason_code}", str(reason_code)))
            return
        if done is not None and not done.done():
            done.set_result(None)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        failures = [code for code in reason_codes if code.is_failure]
        if failures:
            self.subscribe_refusals += 1
        done = self._pending_subscribes.pop(mid, None)
        if done is None:  # a renewal after a reconnect: nobody waits for it
            if failures:
                log.error("MQTT broker %s:%d refused the subscription: %s", self.host, self.port, failures)
            return
        if done.done():
            return
        if failures:
            reason = ", ".join(str(code) for code in failures)
            done.set_exception(MqttRefusedError(f"subscription refused: {reason}", reason))
        else:
            done.set_result(None)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._messages_received += 1
        if self.on_message is not None:
            self.on_message(message.topic, bytes(message.payload))
        if self.on_receive is not None:
            self.on_receive(self._received_message(message))

    def _received_message(self, message: mqtt.MQTTMessage) -> ReceivedMessage:
        connection, mid, qos = self._connection_number, message.mid, message.qos

        def ack() -> None:
            # A message from an earlier connection is redelivered on this one with the same packet id;
            # acking the old copy here could acknowledge a different, newer message. Leave it to the copy.
            if qos > 0 and connection == self._connection_number and self.connected:
                self._client.ack(mid, qos)

        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = repr(message._topic)
        return ReceivedMessage(
            topic=topic,
            payload=bytes(message.payload),
            dup=bool(message.dup),
            qos=qos,
            ack=ack,
            packet_id=mid,
            user_properties=_user_properties(message),
        )

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        disable_nagle(sock)
        fd = sock.fileno()
        self._in_loop(lambda: self._watch_reads(fd))

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()  # taken now: paho closes the socket right after this callback
        self._in_loop(lambda: self._unwatch(fd))

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        self._in_loop(lambda: self._require_loop().add_writer(fd, self._write))

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        self._in_loop(lambda: self._require_loop().remove_writer(fd))

    # -- driving the network loop --

    def _watch_reads(self, fd: int) -> None:
        if not self._reading_paused:
            self._require_loop().add_reader(fd, self._read)

    def _unwatch(self, fd: int) -> None:
        loop = self._require_loop()
        loop.remove_reader(fd)
        loop.remove_writer(fd)

    def _read(self) -> None:
        for _ in range(self.read_burst):
            received_before = self._messages_received
            if self._client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or self._messages_received == received_before:
                break
        # Packets already read into the client's buffer no longer make the socket readable: take them next.
        if self._client.buffered_bytes() and not self._reading_paused:
            self._require_loop().call_soon(self._read)

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
                await self._attempt_connection()
            except OSError as exc:
                log.info("MQTT reconnect to %s:%d failed: %s", self.host, self.port, exc)
                delay = min(self.reconnect_max_delay_s, delay * 2)
                continue
            if await self.wait_connected(timeout_s=10.0):
                log.info("MQTT connected to %s:%d", self.host, self.port)
                self._ensure_misc_loop()
                return

    async def _attempt_connection(self) -> None:
        """paho's blocking connect (TCP, then the CONNECT packet) in a worker thread, one attempt at a time."""
        if self._connect_attempt is None or self._connect_attempt.done():
            self._connect_attempt = self._require_loop().create_task(asyncio.to_thread(self._connect_blocking))
            self._connect_attempt.add_done_callback(_retrieve_exception)
        # Shielded: a caller that stops waiting (a timeout, close()) leaves the thread to finish, and close() waits.
        await asyncio.shield(self._connect_attempt)

    def _connect_blocking(self) -> None:
        if self.protocol != "5":
            self._client.connect(self.host, self.port, self.keepalive_s)
            return
        self._client.connect(
            self.host,
            self.port,
            self.keepalive_s,
            clean_start=self.session_expiry_s is None,
            properties=self._connect_properties(),
        )

    def _connect_properties(self) -> Properties | None:
        if self.session_expiry_s is None and self.receive_maximum is None:
            return None
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self.session_expiry_s is not None:
            properties.SessionExpiryInterval = self.session_expiry_s
        if self.receive_maximum is not None:
            properties.ReceiveMaximum = self.receive_maximum
        return properties

    def _ensure_misc_loop(self) -> None:
        if self._misc_task is None or self._misc_task.done():
            self._misc_task = self._require_loop().create_task(self._misc_loop(), name=f"mqtt-misc:{self.client_id}")

    def _client_socket_close(self) -> None:
        sock = self._client.socket()
        if sock is not None:
            self._client._sock_close()  # paho has no public "close without DISCONNECT"

    def _future(self) -> asyncio.Future[None]:
        return self._require_loop().create_future()

    def _bind_to_running_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._closing = False

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("AsyncMqttClient.connect() has not been called")
        return self._loop

    def _in_loop(self, callback: Callable[[], object]) -> None:
        if threading.get_ident() == self._loop_thread:
            callback()
        else:
            self._require_loop().call_soon_threadsafe(callback)


def _path_or_none(path: object) -> str | None:
    return None if path is None else str(path)


async def _first_of(*events: asyncio.Event) -> None:
    """Wait until one of the events is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _retrieve_exception(attempt: asyncio.Task[None]) -> None:
    """A failed attempt nobody waits for any more (its caller timed out) is not an unretrieved error."""
    if not attempt.cancelled():
        attempt.exception()
