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

import psutil

from edgeloop.infra import process
from edgeloop.infra.component import Component, Echo
from edgeloop.infra.errors import InfraError
from edgeloop.infra.packages import Requirement, find_program
from edgeloop.infra.secure import POSTGRES_CERT_ROLE, POSTGRES_TLS_DATABASE, POSTGRES_TLS_ROLE

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
    # Secure mode: networks besides the server's own address whose clients may log in over TLS (the TLS roles
    # only, with their password or certificate); none by default. A test's server on the real node's bridge
    # lets its pods in (tests/kube/test_helm_real_install.py).
    tls_client_networks: tuple[str, ...] = ()

    @property
    def socket_dir(self) -> Path:
        return self.home / "run"

    @property
    def tls_dir(self) -> Path:
        """The server's copies of its key, certificate and the CA (owned by the server's user, as it insists)."""
        return self.home / "tls"

    @property
    def hba_file(self) -> Path:
        """Who may log in how, in secure mode (plain mode keeps initdb's pg_hba.conf in the data dir)."""
        return self.home / "pg_hba.conf"

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
        if self.secure is not None:
            self._prepare_tls()
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
            *self._tls_options(),
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
        if self.secure is not None and self.runs_secure():
            self._provision_tls(echo)

    def runs_secure(self) -> bool:
        running = self.running_process()
        try:
            return running is not None and "ssl=on" in running.cmdline()
        except psutil.Error:
            return False

    def _tls_options(self) -> list[str]:
        if self.secure is None:
            return []
        options = {
            "ssl": "on",
            "ssl_cert_file": self.tls_dir / "server.pem",
            "ssl_key_file": self.tls_dir / "server.key",
            "ssl_ca_file": self.tls_dir / "ca.pem",  # verifies client certificates (the cert role)
            "ssl_min_protocol_version": "TLSv1.2",
            "hba_file": self.hba_file,
        }
        return [argument for key, value in options.items() for argument in ("-c", f"{key}={value}")]

    def _prepare_tls(self) -> None:
        assert self.secure is not None
        tls = self.secure.tls
        self.tls_dir.mkdir(exist_ok=True)
        self._give_to_server_user(self.tls_dir)
        self.tls_dir.chmod(0o700)
        for source, name in ((tls.cert_file, "server.pem"), (tls.key_file, "server.key"), (tls.ca_file, "ca.pem")):
            target = self.tls_dir / name
            shutil.copyfile(source, target)
            target.chmod(0o600)  # the key must be; PostgreSQL refuses a key others can read
            self._give_to_server_user(target)
        roles = f"{POSTGRES_TLS_ROLE},{POSTGRES_CERT_ROLE}"
        self.hba_file.write_text(
            "# Written by `edgeloop infra up --secure` (edgeloop.infra.postgres): the first matching line decides.\n"
            "# TYPE    DATABASE USER  ADDRESS       METHOD\n"
            "local     all      all                  trust\n"
            f"hostnossl all      {roles}  all  reject\n"
            f"hostssl   all      {POSTGRES_TLS_ROLE}  {self.host}/32  scram-sha-256\n"
            f"hostssl   all      {POSTGRES_CERT_ROLE}  {self.host}/32  cert\n"
            f"host      all      all  {self.host}/32  scram-sha-256\n"
            + "".join(
                f"hostssl   all      {POSTGRES_TLS_ROLE}  {network}  scram-sha-256\n"
                f"hostssl   all      {POSTGRES_CERT_ROLE}  {network}  cert\n"
                for network in self.tls_client_networks
            )
        )
        self._give_to_server_user(self.hba_file)

    def _provision_tls(self, echo: Echo) -> None:
        """The TLS roles and their database; then a log-in over TLS that verifies the server (verify-full)."""
        import psycopg
        from psycopg import sql

        assert self.secure is not None
        password = self.secure.credentials().postgres_password
        with self._connect_as_superuser(autocommit=True) as admin:
            role, cert_role = sql.Identifier(POSTGRES_TLS_ROLE), sql.Identifier(POSTGRES_CERT_ROLE)
            if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (POSTGRES_TLS_ROLE,)).fetchone() is None:
                admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
                echo(f"{self.name}: created role {POSTGRES_TLS_ROLE} (password over TLS only)")
            # Always: the password is the one in .edgeloop/secure/credentials.json, even if that file was remade.
            admin.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(password)))
            if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (POSTGRES_CERT_ROLE,)).fetchone() is None:
                admin.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(cert_role, role))
                # Its sessions act as the TLS role: what either creates, both may use.
                admin.execute(sql.SQL("ALTER ROLE {} SET role = {}").format(cert_role, sql.Literal(POSTGRES_TLS_ROLE)))
                echo(f"{self.name}: created role {POSTGRES_CERT_ROLE} (a client certificate over TLS)")
            database = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (POSTGRES_TLS_DATABASE,))
            if database.fetchone() is None:
                admin.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(POSTGRES_TLS_DATABASE), role)
                )
                echo(f"{self.name}: created database {POSTGRES_TLS_DATABASE} owned by {POSTGRES_TLS_ROLE}")
        try:
            with psycopg.connect(
                host=self.host,
                port=self.port,
                user=POSTGRES_TLS_ROLE,
                password=password,
                dbname=POSTGRES_TLS_DATABASE,
                sslmode="verify-full",
                sslrootcert=str(self.secure.tls.ca_file),
                connect_timeout=5,
            ) as client:
                client.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            raise InfraError(f"postgres: {POSTGRES_TLS_ROLE} cannot log in over TLS on {self.address}: {exc}") from exc

    def run_as(self) -> str | None:
        if not process.running_as_root():
            return None
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError as exc:
            raise InfraError(f"postgres: refuses to run as root and there is no {SERVICE_USER!r} user") from exc
        return SERVICE_USER

    def connection_hint(self) -> str:
        plain = DATABASE_URL.replace(":5432/", f":{self.port}/")
        if self.secure is not None:
            return f"{plain} (plain); TLS: {POSTGRES_TLS_ROLE} on database {POSTGRES_TLS_DATABASE} (secure.env)"
        return plain

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
