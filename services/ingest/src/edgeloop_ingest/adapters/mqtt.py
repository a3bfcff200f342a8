"""The bridge's MQTT subscriber: the shared asyncio driver of paho (:mod:`edgeloop_common.mqtt_asyncio`) in the
bridge's mode.

The session is persistent (a fixed client id; MQTT 5 with ``clean_start=False`` and a session expiry interval, or
3.1.1 with ``clean_session=False``): a message the bridge has not acknowledged is redelivered after a restart or a
reconnect. Acknowledgements are manual and sent by the bridge once the message is durable (``ReceivedMessage.ack``).
``Receive Maximum`` bounds how many unacknowledged messages the broker sends. Messages are handed over in arrival
order, and every callback (the bridge's and the acknowledgements) runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from edgeloop_common.mqtt_asyncio import AsyncMqttClient, MqttProtocol, MqttUnavailableError, ReceivedMessage
from edgeloop_common.mqtt_auth import MqttAuth

from edgeloop_ingest import metrics

__all__ = ["AsyncioMqttSubscriber", "MqttConfig", "OnMessage", "ReceivedMessage"]

log = logging.getLogger(__name__)

READ_BURST = 128  # packets read per readiness callback before the loop runs other work
RECONNECT_MAX_DELAY_S = 10.0
SUBSCRIBE_RETRY_S = 1.0


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
    protocol: MqttProtocol = "5"
    auth: MqttAuth | None = None  # credentials and TLS on a secured broker (docs/security.md)


OnMessage = Callable[[ReceivedMessage], None]


class AsyncioMqttSubscriber:
    def __init__(self, config: MqttConfig, on_message: OnMessage) -> None:
        self.config = config
        self.client = AsyncMqttClient(
            config.host,
            config.port,
            client_id=config.client_id,
            keepalive_s=config.keepalive_s,
            protocol=config.protocol,
            session_expiry_s=config.session_expiry_s,
            receive_maximum=config.receive_maximum,
            connect_timeout_s=config.connect_timeout_s,
            manual_ack=True,
            on_receive=on_message,
            read_burst=READ_BURST,
            reconnect_max_delay_s=RECONNECT_MAX_DELAY_S,
            on_connection_change=self._on_connection_change,
            auth=config.auth,
        )
        self._subscribed = asyncio.Event()
        self._subscribing: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.client.connected

    @property
    def received(self) -> int:
        return self.client.messages_received

    async def start(self) -> None:
        """Connect (retrying in the background until the broker is there) and subscribe."""
        self.client.connect_in_background()
        self._subscribing = asyncio.create_task(self._subscribe_once_connected(), name="mqtt-subscribe")
        # With the broker there, return subscribed (as before the shared driver): what devices publish right after
        # start is not lost. Without it, go on; the connection keeps being retried in the background.
        await self.wait_connected(timeout_s=5.0)

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait until connected and subscribed (the first time)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._subscribed.wait()
        except TimeoutError:
            return False
        return True

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1) -> asyncio.Future[None]:
        """Publish on the bridge's connection (device commands); resolves on the broker's PUBACK (QoS 1)."""
        acknowledged: asyncio.Future[None] = self.client.publish(topic, payload, qos=qos)
        return acknowledged

    def pause(self) -> None:
        """Read no more messages (acknowledgements still go out); for a graceful stop."""
        self.client.pause_reading()

    async def stop(self) -> None:
        """Disconnect without acknowledging anything still in flight: the broker keeps it for the session."""
        if self._subscribing is not None:
            self._subscribing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._subscribing
        await self.client.close()

    async def _subscribe_once_connected(self) -> None:
        """The first subscription; the driver renews it on every reconnect (the broker's session keeps it too)."""
        while True:
            await self.client.wait_connected(timeout_s=None)
            try:
                await self.client.subscribe(self.config.subscriptions, qos=1)
            except MqttUnavailableError as exc:  # refused, or the connection went before the SUBACK
                log.error("MQTT subscription to %s failed (%s); retrying", self.config.subscriptions, exc)
                await asyncio.sleep(SUBSCRIBE_RETRY_S)
                continue
            self._subscribed.set()
            return

    def _on_connection_change(self, connected: bool) -> None:
        metrics.MQTT_CONNECTED.set(1 if connected else 0)
        if connected:
            log.info(
                "connected to MQTT %s:%d as %r (session present: %s)",
                self.config.host,
                self.config.port,
                self.config.client_id,
                self.client.session_present,
            )
