"""A secured Mosquitto beside the shared anonymous one: ``edgeloop infra up --secure`` (docs/security.md).

The development broker on 1883 stays anonymous (every test and demo relies on it) and is never restarted for
this. ``--secure`` adds a second Mosquitto of its own, ``mqtts``: TLS only on 8883 (``EDGELOOP_INFRA_MQTTS_PORT``),
no anonymous client, the dynamic-security plugin with the admin and the services' identities
(:func:`edgeloop.device_identity.bootstrap_identities`, the same code as docker-compose.yml's mqtt-identities job),
the certificate of the local CA that Kafka and PostgreSQL use (``.edgeloop/secure/``). The passwords are under
``.edgeloop/secure/mqtt/`` (0600); ``secure.env`` gets the broker's address, its CA and the admin's password file.
"""

from __future__ import annotations

from pathlib import Path

from edgeloop.device_identity import bootstrap_identities
from edgeloop.infra import process
from edgeloop.infra.component import Component, Echo
from edgeloop.infra.errors import InfraError
from edgeloop.infra.packages import Requirement, find_program
from edgeloop.secure_mqtt import render_config

# The identities made with the broker: the cloud services that talk MQTT, and the edge agent of the demo's site.
SERVICE_IDENTITIES = ("ingest", "inference-gateway", "edge-site-a")


class SecureMosquitto(Component):
    name = "mqtts"
    port = 8883
    stop_timeout_s = 15.0

    @property
    def config_file(self) -> Path:
        return self.home / "mosquitto.conf"

    @property
    def dynsec_file(self) -> Path:
        return self.data_dir / "dynamic-security.json"

    @property
    def passwords_dir(self) -> Path:
        """``<username>.password`` of each identity, and ``admin.password``."""
        if self.secure is None:
            raise InfraError("mqtts: the secured broker comes with `edgeloop infra up --secure`")
        return self.secure.directory / "mqtt"

    @property
    def admin_password_file(self) -> Path:
        return self.passwords_dir / "admin.password"

    def requirements(self) -> list[Requirement]:
        return [Requirement("mosquitto", "mosquitto")]

    def prepare(self, echo: Echo) -> None:
        if self.secure is None:
            raise InfraError("mqtts: the secured broker comes with `edgeloop infra up --secure`")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        result = bootstrap_identities(
            dynsec_file=self.dynsec_file,
            passwords_dir=self.passwords_dir,
            admin_password_file=self.admin_password_file,
            services=SERVICE_IDENTITIES,
        )
        if result.made:
            echo(f"mqtts: identities {', '.join(result.made)} made (passwords in {self._shown(self.passwords_dir)})")
        # Started by root, Mosquitto would switch to the user `mosquitto`; render_config names the current user so
        # that the plugin can rewrite its file and read the key (0600, ours).
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            render_config(
                dynsec_file=self.dynsec_file,
                port=None,
                tls_port=self.port,
                tls=self.secure.tls,
                host=self.host,
                log_denied_publishes=False,  # notice level: refused connections are still logged (and counted)
            )
        )

    def command(self) -> list[str]:
        mosquitto = find_program("mosquitto")
        if mosquitto is None:
            raise InfraError("mqtts: mosquitto is not installed; apt-get install mosquitto")
        return [str(mosquitto), "-c", str(self.config_file)]

    def answers(self) -> bool:
        return process.port_open(self.host, self.port)

    def runs_secure(self) -> bool:
        return self.running_process() is not None

    def connection_hint(self) -> str:
        return f"mqtts://{self.address} (TLS; identities and CA in secure.env)"

    def client_environment(self) -> dict[str, str]:
        """What ``secure.env`` says of this broker: its address and CA, and the admin's password file (for
        ``edgeloop device add|remove|list``). A service adds its own identity:
        ``EDGELOOP_MQTT_USERNAME=ingest EDGELOOP_MQTT_PASSWORD_FILE=.edgeloop/secure/mqtt/ingest.password``."""
        assert self.secure is not None
        return {
            "EDGELOOP_MQTT_HOST": self.host,
            "EDGELOOP_MQTT_PORT": str(self.port),
            "EDGELOOP_MQTT_TLS_CA_FILE": str(self.secure.tls.ca_file),
            "EDGELOOP_MQTT_ADMIN_PASSWORD_FILE": str(self.admin_password_file),
        }
