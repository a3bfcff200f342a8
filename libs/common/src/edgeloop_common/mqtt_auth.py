"""Who an MQTT client is to the broker, and how it talks to it: credentials and TLS.

The broker of a secured installation knows every device and service by a username and password
(docs/security.md, "Device identity on MQTT"); the connection may run over TLS. This is what
:class:`edgeloop_common.mqtt_asyncio.AsyncMqttClient` takes, built from ``CommonSettings`` (``mqtt_auth()``)
or by hand (a device). No field set: an anonymous, plain-text connection, as the development broker of
``edgeloop infra up`` accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MqttAuth:
    username: str | None = None
    password: str | None = None
    # TLS: on when ``tls`` is set or any file is given. ``ca_file`` verifies the broker (None: the system's
    # trust store); ``cert_file`` + ``key_file`` are a client certificate (mutual TLS, the other way for a
    # device to prove who it is).
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def uses_tls(self) -> bool:
        return self.tls or any(path is not None for path in (self.ca_file, self.cert_file, self.key_file))

    def __repr__(self) -> str:  # never print the password
        secret = "***" if self.password is not None else None
        return f"MqttAuth(username={self.username!r}, password={secret!r}, tls={self.uses_tls})"


ANONYMOUS = MqttAuth()
