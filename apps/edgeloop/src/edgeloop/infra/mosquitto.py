"""Mosquitto (Debian package), with our own config from ``infra/mosquitto/mosquitto.conf``."""

from __future__ import annotations

import pwd
import shutil
from pathlib import Path

from edgeloop.infra import process
from edgeloop.infra.component import Component, Echo
from edgeloop.infra.errors import InfraError
from edgeloop.infra.packages import Requirement, find_program

SERVICE_USER = "mosquitto"


class Mosquitto(Component):
    name = "mosquitto"
    port = 1883
    stop_timeout_s = 15.0

    @property
    def config_file(self) -> Path:
        return self.home / "mosquitto.conf"

    def requirements(self) -> list[Requirement]:
        return [Requirement("mosquitto", "mosquitto"), Requirement("mosquitto_pub", "mosquitto-clients")]

    def prepare(self, echo: Echo) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.render(
            self.repo_root / "infra" / "mosquitto" / "mosquitto.conf",
            self.config_file,
            host=self.host,
            port=self.port,
            data_dir=self.data_dir,
        )
        if user := self.run_as():
            # The broker writes its persistence file here as that user.
            entry = pwd.getpwnam(user)
            shutil.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
            for path in self.data_dir.iterdir():
                shutil.chown(path, entry.pw_uid, entry.pw_gid)

    def command(self) -> list[str]:
        mosquitto = find_program("mosquitto")
        if mosquitto is None:
            raise InfraError("mosquitto: not installed; apt-get install mosquitto")
        return [str(mosquitto), "-c", str(self.config_file)]

    def answers(self) -> bool:
        return process.port_open(self.host, self.port)

    def run_as(self) -> str | None:
        """Root runs the broker as the package's unprivileged user, as Debian's service does."""
        if not process.running_as_root():
            return None
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            return None
        return SERVICE_USER

    def connection_hint(self) -> str:
        return f"mqtt://{self.address}"

    def _foreign_hint(self, holder: process.PortHolder) -> str:
        if "/etc/mosquitto/" in holder.command:
            return "It looks like Debian's mosquitto service: `systemctl disable --now mosquitto`, then try again."
        return super()._foreign_hint(holder)
