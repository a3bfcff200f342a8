"""Who a Kafka client is to the broker, and how it talks to it: TLS and SASL/SCRAM credentials.

Every Kafka client EdgeLoop builds (the bus's producer, consumers and admin clients; ``edgeloop infra``'s;
the tests' helpers) takes its connection options from one :class:`KafkaAuth`, built from ``CommonSettings``
(``kafka_auth()``) -- the same code talks to the development broker in plain text and to a secured one over
SASL_SSL, by configuration only (docs/security.md, "Kafka and PostgreSQL over TLS").
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]


@dataclass(frozen=True)
class KafkaAuth:
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    username: str | None = None
    password: str | None = None
    # TLS (SSL, SASL_SSL): ca_file verifies the broker (None: the system's trust store) and its host name;
    # cert_file + key_file are a client certificate (a broker with ssl.client.auth=required).
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if self.uses_sasl and not (self.username and self.password):
            raise ValueError(f"Kafka {self.security_protocol} needs a username and a password")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a Kafka client certificate needs both its cert file and its key file")
        if self.cert_file is not None and not self.uses_tls:
            raise ValueError(f"a Kafka client certificate needs TLS (SSL or SASL_SSL), not {self.security_protocol}")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A context that verifies the broker's certificate and host name (None in plain text)."""
        if not self.uses_tls:
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            options |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.username,
                "sasl_plain_password": self.password,
            }
        return options

    def librdkafka_config(self) -> dict[str, str]:
        """The same as librdkafka properties (``kcat -X key=value`` or ``kcat -F file``)."""
        config = {"security.protocol": self.security_protocol.lower()}
        if self.ca_file is not None:
            config["ssl.ca.location"] = str(self.ca_file)
        if self.cert_file is not None and self.key_file is not None:
            config |= {"ssl.certificate.location": str(self.cert_file), "ssl.key.location": str(self.key_file)}
        if self.uses_sasl and self.username and self.password:
            config |= {"sasl.mechanisms": self.sasl_mechanism, "sasl.username": self.username}
            config["sasl.password"] = self.password
        return config

    def __repr__(self) -> str:  # never print the password
        secret = "***" if self.password is not None else None
        return (
            f"KafkaAuth(security_protocol={self.security_protocol!r}, sasl_mechanism={self.sasl_mechanism!r}, "
            f"username={self.username!r}, password={secret!r}, ca_file={self.ca_file!r})"
        )


PLAINTEXT = KafkaAuth()
