"""Apache Kafka, single-node KRaft, from the jars pinned by ``infra/kafka/pom.xml``.

The jars are fetched once per pom with Maven into a per-user cache, so another
checkout on the same machine starts without fetching. The broker runs on the
installed Java 17: ``java -cp '<cache>/*' kafka.Kafka .edgeloop/kafka/server.properties``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import shutil
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import psutil
from edgeloop_common.kafka_auth import PLAINTEXT, KafkaAuth

from edgeloop.infra import process
from edgeloop.infra.component import Component, Echo, port_setting
from edgeloop.infra.errors import InfraError
from edgeloop.infra.packages import Requirement, find_program
from edgeloop.infra.secure import KAFKA_MECHANISM, KAFKA_USER, SecureLinks

T = TypeVar("T")

HEAP = "-Xmx768m"
# As Kafka's own kafka-run-class.sh, plus readable timestamps from slf4j-simple (the pom's logger).
JVM_OPTIONS = (
    HEAP,
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS",
)
TOPIC_PARTITIONS = 3
TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code


class Kafka(Component):
    name = "kafka"
    port = 9092
    # The usual 9093 is taken on the shared development machine (by the dev broker on 19092);
    # clients never use the controller port.
    default_controller_port: ClassVar[int] = 9094
    # SASL_SSL (`infra up --secure`); 9093 is taken here (above).
    default_secure_port: ClassVar[int] = 9095
    stop_timeout_s = 60.0

    def __init__(self, state_dir: Path, repo_root: Path, *, secure: SecureLinks | None = None) -> None:
        super().__init__(state_dir, repo_root, secure=secure)
        self.controller_port = port_setting(self.name, "controller_port", self.default_controller_port)
        self.secure_port = port_setting(self.name, "secure_port", self.default_secure_port)

    @property
    def pom(self) -> Path:
        return self.repo_root / "infra" / "kafka" / "pom.xml"

    @property
    def properties_file(self) -> Path:
        # Its own name in secure mode, so that the running broker's command line tells which it serves.
        return self.home / ("server-secure.properties" if self.secure is not None else "server.properties")

    @property
    def secure_address(self) -> str:
        return f"{self.host}:{self.secure_port}"

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port, self.controller_port, *([self.secure_port] if self.secure is not None else []))

    @property
    def version(self) -> str:
        return kafka_version(self.pom)

    @property
    def jar_dir(self) -> Path:
        """The per-user cache of the broker's jars, keyed by the pom's content."""
        digest = hashlib.sha256(self.pom.read_bytes()).hexdigest()[:12]
        return cache_root() / f"kafka-{self.version}-{digest}"

    def requirements(self) -> list[Requirement]:
        return [
            Requirement("java", "openjdk-17-jre-headless"),
            Requirement("mvn", "maven"),
            Requirement("kcat", "kcat"),
        ]

    def prepare(self, echo: Echo) -> None:
        self._fetch_jars(echo)
        self.render(
            self.repo_root / "infra" / "kafka" / "server.properties",
            self.properties_file,
            host=self.host,
            port=self.port,
            controller_port=self.controller_port,
            data_dir=self.data_dir,
        )
        if self.secure is not None:
            base = self.properties_file.read_text()
            self.render(
                self.repo_root / "infra" / "kafka" / "server-secure.properties",
                self.properties_file,
                host=self.host,
                port=self.port,
                controller_port=self.controller_port,
                secure_port=self.secure_port,
                keystore_file=self.secure.kafka_keystore,
                ca_file=self.secure.tls.ca_file,
            )
            self.properties_file.write_text(base + "\n" + self.properties_file.read_text())
        if not (self.data_dir / "meta.properties").exists():
            self._format_storage(echo)

    def command(self) -> list[str]:
        return [_java(), *JVM_OPTIONS, "-cp", f"{self.jar_dir}/*", "kafka.Kafka", str(self.properties_file)]

    def answers(self) -> bool:
        if not process.port_open(self.host, self.port):
            return False
        try:
            run_coroutine(list_topics(self.address))
        except KafkaNotReady:
            return False
        return True

    def provision(self, echo: Echo) -> None:
        from edgeloop_common.topics import ALL_KAFKA_TOPICS

        created = run_coroutine(ensure_topics(self.address, ALL_KAFKA_TOPICS, TOPIC_PARTITIONS))
        if created:
            echo(f"{self.name}: created {len(created)} topics ({TOPIC_PARTITIONS} partitions each)")
        if self.secure is not None and self.runs_secure():
            self._ensure_scram_user(echo)

    def runs_secure(self) -> bool:
        running = self.running_process()
        try:
            return running is not None and any(arg.endswith("/server-secure.properties") for arg in running.cmdline())
        except psutil.Error:
            return False

    def client_auth(self) -> KafkaAuth:
        """How a client logs in on the SASL_SSL listener (the generated SCRAM user, the local CA)."""
        assert self.secure is not None
        return KafkaAuth(
            security_protocol="SASL_SSL",
            sasl_mechanism=KAFKA_MECHANISM,
            username=KAFKA_USER,
            password=self.secure.credentials().kafka_password,
            ca_file=self.secure.tls.ca_file,
        )

    def connection_hint(self) -> str:
        if self.secure is not None:
            return f"{self.address} (plain), {self.secure_address} (SASL_SSL)"
        return self.address

    def _ensure_scram_user(self, echo: Echo) -> None:
        """Log in on the SASL_SSL listener as the SCRAM user; create (or reset) the user when that is refused."""
        auth = self.client_auth()
        refusal = _login_refusal(self.secure_address, auth)
        if refusal is None:
            return
        echo(f"{self.name}: creating the SCRAM user {KAFKA_USER!r} ({KAFKA_MECHANISM}) (kafka-configs)...")
        scram = f"{KAFKA_MECHANISM}=[iterations=8192,password={auth.password}]"
        command = [_java(), "-cp", f"{self.jar_dir}/*", "kafka.admin.ConfigCommand", "--bootstrap-server"]
        command += [self.address, "--alter", "--add-config", scram, "--entity-type", "users"]
        command += ["--entity-name", KAFKA_USER]
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        if result.returncode != 0:
            raise InfraError(f"kafka: creating the SCRAM user failed:\n{result.stdout.strip()[-2000:]}")
        deadline = time.monotonic() + 20
        while (refusal := _login_refusal(self.secure_address, auth)) is not None:  # the credential propagates
            if time.monotonic() > deadline:
                raise InfraError(f"kafka: {KAFKA_USER} cannot log in on {self.secure_address}: {refusal}")
            time.sleep(0.5)
        echo(f"{self.name}: SASL_SSL on {self.secure_address} accepts {KAFKA_USER}")

    def _fetch_jars(self, echo: Echo) -> None:
        target = self.jar_dir
        if (target / ".complete").exists():
            return
        mvn = find_program("mvn")
        if mvn is None:
            raise InfraError("kafka: Maven (`mvn`) is needed to fetch the broker's jars; apt-get install maven")
        echo(f"{self.name}: fetching Kafka {self.version} jars with Maven into {target} (first run)...")
        staging = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        result = subprocess.run(
            [str(mvn), "-q", "-B", "-f", str(self.pom), "dependency:copy-dependencies", f"-DoutputDirectory={staging}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            tail = "\n".join(result.stdout.strip().splitlines()[-15:])
            raise InfraError(f"kafka: `mvn dependency:copy-dependencies` on {self.pom} failed:\n{tail}")
        (staging / ".complete").write_text(f"{self.version}\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        echo(f"{self.name}: {len(list(target.glob('*.jar')))} jars cached")

    def _format_storage(self, echo: Echo) -> None:
        cluster_id_file = self.home / "cluster-id"
        if not cluster_id_file.exists():
            cluster_id_file.write_text(new_cluster_id() + "\n")
        cluster_id = cluster_id_file.read_text().strip()
        echo(f"{self.name}: formatting storage in {self._shown(self.data_dir)} (cluster id {cluster_id})...")
        storage_tool = [_java(), "-cp", f"{self.jar_dir}/*", "kafka.tools.StorageTool"]
        # No --standalone: the quorum is the static controller.quorum.voters of the properties.
        result = subprocess.run(
            [*storage_tool, "format", "-t", cluster_id, "-c", str(self.properties_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise InfraError(f"kafka: formatting the storage failed:\n{result.stdout.strip()[-2000:]}")


def kafka_version(pom: Path) -> str:
    """The ``kafka.version`` property of the pom."""
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    element = ET.parse(pom).getroot().find("m:properties/m:kafka.version", namespace)
    if element is None or not element.text:
        raise InfraError(f"kafka: {pom} has no <kafka.version> property")
    return element.text.strip()


def cache_root() -> Path:
    """``$EDGELOOP_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgeloop``, else ``~/.cache/edgeloop``."""
    if configured := os.environ.get("EDGELOOP_CACHE_DIR"):
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeloop"


def new_cluster_id() -> str:
    """What ``kafka-storage.sh random-uuid`` prints (base64url of a random UUID), without starting a JVM."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka rejects ids that look like a command-line option
            return text


def _java() -> str:
    java = find_program("java")
    if java is None:
        raise InfraError("kafka: Java 17 is needed; apt-get install openjdk-17-jre-headless")
    return str(java)


# -- talking to the broker (aiokafka) ----------------------------------------------------------------


class KafkaNotReady(Exception):
    """The broker does not answer metadata requests yet."""


async def list_topics(bootstrap: str, auth: KafkaAuth = PLAINTEXT) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=5000, client_id="edgeloop-infra", **auth.client_options()
    )
    try:
        await admin.start()
        return set(await admin.list_topics())
    except (KafkaError, OSError, TimeoutError) as exc:
        raise KafkaNotReady(str(exc)) from exc
    finally:
        await admin.close()


async def ensure_topics(bootstrap: str, topics: tuple[str, ...], partitions: int) -> list[str]:
    """Create the topics that do not exist yet, with their configs (``KAFKA_TOPIC_CONFIGS``: deployments.updated is
    compacted), and give existing ones the configs they lack; returns those created."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError
    from edgeloop_common.bus.kafka import ensure_topic_configs
    from edgeloop_common.topics import KAFKA_TOPIC_CONFIGS

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000, client_id="edgeloop-infra")
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [topic for topic in topics if topic not in existing]
        await ensure_topic_configs(admin, {t: c for t, c in KAFKA_TOPIC_CONFIGS.items() if t in existing})
        if not missing:
            return []
        response = await admin.create_topics(
            [
                NewTopic(
                    name=topic,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs=KAFKA_TOPIC_CONFIGS.get(topic),
                )
                for topic in missing
            ]
        )
        # Each entry starts (topic, error_code, ...); "already exists" means another client won the race.
        failures = [
            f"{entry[0]}: error {entry[1]}"
            for entry in response.topic_errors
            if entry[1] not in (0, TOPIC_ALREADY_EXISTS)
        ]
        if failures:
            raise InfraError(f"kafka: could not create topics: {'; '.join(failures)}")
        return missing
    except (KafkaError, OSError, TimeoutError) as exc:
        raise InfraError(f"kafka: could not ensure the contract topics on {bootstrap}: {exc!r}") from exc
    finally:
        await admin.close()


def _login_refusal(bootstrap: str, auth: KafkaAuth) -> str | None:
    """None when a client with auth lists the topics; otherwise why not."""
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # a refusal is expected the first time; aiokafka would log it as an error
    try:
        run_coroutine(list_topics(bootstrap, auth))
    except KafkaNotReady as exc:
        return str(exc) or "refused"
    finally:
        quiet.setLevel(level)
    return None


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion, also when the caller is itself inside an event loop (an async test)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
