"""PostgreSQL (Debian package), our own cluster in ``.edgeloop/postgres/data`` with the database ``edgeloop``.

PostgreSQL refuses to run as root, so when ``infra up`` runs as root the cluster
belongs to the ``postgres`` user (initdb and the server run as that user).
Administration goes through the Unix socket in ``.edgeloop/postgres/run``
(``trust`` there, only the owner and root can reach it); clients use TCP on
127.0.0.1 with a password.
"""

from __future__ import annotations

import glob
import pwd
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from edgeloop.infra import process
from edgeloop.infra.component import Component, Echo
from edgeloop.infra.errors import InfraError
from edgeloop.infra.packages import Requirement, find_program

if TYPE_CHECKING:
    import psycopg

SERVICE_USER = "postgres"
SUPERUSER = "postgres"
ROLE = "edgeloop"
PASSWORD = "edgeloop"
DATABASE = "edgeloop"
DATABASE_URL = f"postgresql+psycopg://{ROLE}:{PASSWORD}@127.0.0.1:5432/{DATABASE}"
DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin/postgres"


class Postgres(Component):
    name = "postgres"
    port = 5432
    # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart") would wait for every client to disconnect.
    stop_signal = signal.SIGINT
    stop_timeout_s = 30.0

    @property
    def socket_dir(self) -> Path:
        return self.home / "run"

    def requirements(self) -> list[Requirement]:
        return [
            Requirement("postgres", "postgresql", locations=(DEBIAN_BINARIES,)),
            Requirement("psql", "postgresql-client"),
        ]

    def prepare(self, echo: Echo) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        for directory in (self.data_dir, self.socket_dir):
            directory.mkdir(exist_ok=True)
            self._give_to_server_user(directory)
            directory.chmod(0o700)  # PostgreSQL insists on it for the data dir
        if (self.data_dir / "PG_VERSION").exists():
            return
        if any(self.data_dir.iterdir()):
            raise InfraError(f"postgres: {self.data_dir} holds files but no cluster (no PG_VERSION); move it away")
        echo(f"{self.name}: creating the database cluster in {self._shown(self.data_dir)} (initdb)...")
        initdb = [str(self.bin_dir() / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER]
        initdb += ["-E", "UTF8", "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"]
        result = subprocess.run(
            initdb,
            user=self.run_as(),
            group=self._server_group(),
            extra_groups=[] if self.run_as() else None,
            cwd=self.data_dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise InfraError(
                f"postgres: initdb failed (can user {self.run_as() or 'you'} reach {self.data_dir}?):\n"
                f"{result.stdout.strip()[-2000:]}"
            )

    def command(self) -> list[str]:
        return [
            str(self.bin_dir() / "postgres"),
            "-D",
            str(self.data_dir),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            f"port={self.port}",
            "-c",
            f"unix_socket_directories={self.socket_dir}",
            "-c",
            "max_connections=200",  # every service's pool plus the tests' engines
        ]

    def answers(self) -> bool:
        import psycopg

        if not process.port_open(self.host, self.port):
            return False
        try:
            with self._connect_as_superuser(connect_timeout=3):
                return True
        except psycopg.OperationalError:
            return False  # "the database system is starting up"

    def provision(self, echo: Echo) -> None:
        import psycopg
        from psycopg import sql

        with self._connect_as_superuser(autocommit=True) as admin:
            if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone() is None:
                admin.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(PASSWORD))
                )
                echo(f"{self.name}: created role {ROLE}")
            if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                create = sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), sql.Identifier(ROLE))
                admin.execute(create)
                echo(f"{self.name}: created database {DATABASE} owned by {ROLE}")
        try:
            with psycopg.connect(
                host=self.host, port=self.port, user=ROLE, password=PASSWORD, dbname=DATABASE, connect_timeout=5
            ) as client:
                client.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            raise InfraError(f"postgres: {ROLE} cannot log in to {DATABASE} on {self.address}: {exc}") from exc

    def run_as(self) -> str | None:
        if not process.running_as_root():
            return None
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError as exc:
            raise InfraError(f"postgres: refuses to run as root and there is no {SERVICE_USER!r} user") from exc
        return SERVICE_USER

    def connection_hint(self) -> str:
        return DATABASE_URL

    def bin_dir(self) -> Path:
        """The binaries of the data dir's PostgreSQL version (newest installed for a new cluster)."""
        installed = {Path(path).parent.parent.name: Path(path).parent for path in glob.glob(DEBIAN_BINARIES)}
        version_file = self.data_dir / "PG_VERSION"
        if version_file.exists():
            wanted = version_file.read_text().strip()
            if wanted in installed:
                return installed[wanted]
            raise InfraError(
                f"postgres: {self.data_dir} was created by PostgreSQL {wanted}, which is not installed "
                f"(found: {', '.join(sorted(installed)) or 'none'}); apt-get install postgresql-{wanted}"
            )
        if installed:
            return installed[max(installed, key=_version_key)]
        if (on_path := find_program("postgres")) is not None:
            return on_path.parent
        raise InfraError("postgres: not installed; apt-get install postgresql")

    def _connect_as_superuser(self, *, autocommit: bool = False, connect_timeout: int = 10) -> psycopg.Connection:
        """Through the Unix socket in our run dir, where the superuser needs no password."""
        import psycopg

        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=SUPERUSER,
            dbname="postgres",
            autocommit=autocommit,
            connect_timeout=connect_timeout,
        )

    def _give_to_server_user(self, path: Path) -> None:
        if (user := self.run_as()) is not None:
            shutil.chown(path, user, self._server_group())

    def _server_group(self) -> int | None:
        user = self.run_as()
        return pwd.getpwnam(user).pw_gid if user else None

    def _foreign_hint(self, holder: process.PortHolder) -> str:
        if "/var/lib/postgresql/" in holder.command or "/etc/postgresql/" in holder.command:
            return (
                "It looks like Debian's own cluster: `pg_ctlcluster <version> main stop` "
                "(and `systemctl disable postgresql`), then try again."
            )
        return super()._foreign_hint(holder)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))
