"""``edgeloop infra``: the local Kafka, Mosquitto and PostgreSQL, as a user and the other tests see them.

These tests use the standard addresses the infrastructure serves (127.0.0.1:9092,
:1883, :5432), not the EDGELOOP_* overrides, because they test the servers
``edgeloop infra up`` starts. The first one brings the stack up; a test that
stops a server starts it again before it ends, so the shared stack stays up.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import pytest
import sqlalchemy
from edgeloop import infra
from edgeloop.infra.mosquitto import Mosquitto
from edgeloop_common.topics import ALL_KAFKA_TOPICS, KAFKA_TOPIC_CONFIGS
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA = "127.0.0.1:9092"
MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883

pytestmark = [pytest.mark.kafka, pytest.mark.mqtt, pytest.mark.postgres]


def edgeloop(*arguments: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the `edgeloop` command as a user would, from the repository root."""
    env = {**os.environ, "EDGELOOP_HOME": str(home)} if home is not None else None
    return subprocess.run(
        [sys.executable, "-m", "edgeloop.main", *arguments],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module", autouse=True)
def stack_up() -> str:
    result = edgeloop("infra", "up")
    assert result.returncode == 0, f"`edgeloop infra up` failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def pids() -> dict[str, int | None]:
    return {item.name: item.pid for item in infra.status()}


# -- up, status ------------------------------------------------------------------------------------------


def test_status_shows_all_three_running_on_localhost() -> None:
    result = edgeloop("infra", "status")

    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert rows["kafka"][1:3] == ["running", "127.0.0.1:9092"]
    assert rows["mosquitto"][1:3] == ["running", "127.0.0.1:1883"]
    assert rows["postgres"][1:3] == ["running", "127.0.0.1:5432"]
    described = json.loads(edgeloop("infra", "status", "--json").stdout)
    for item in described:
        assert psutil.pid_exists(item["pid"]), item
        assert item["data_dir"].startswith(str(REPO_ROOT / ".edgeloop")), item


def test_servers_listen_on_127_0_0_1_only() -> None:
    for item in infra.status():
        listening = [c for c in psutil.Process(item.pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        addresses = {conn.laddr.ip.removeprefix("::ffff:") for conn in listening}  # Java shows IPv4-mapped IPv6
        assert addresses == {"127.0.0.1"}, f"{item.name} listens on {addresses}"


def test_up_twice_keeps_the_same_servers() -> None:
    before = pids()

    result = edgeloop("infra", "up")

    assert result.returncode == 0, result.stdout + result.stderr
    for name, pid in before.items():
        assert f"{name}: already running (pid {pid})" in result.stdout
    assert pids() == before


# -- what each server holds --------------------------------------------------------------------------------


def test_kafka_has_every_contract_topic_with_three_partitions() -> None:
    listing = subprocess.run(
        ["kcat", "-b", KAFKA, "-L", "-J"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    partitions = {topic["topic"]: len(topic["partitions"]) for topic in json.loads(listing)["topics"]}

    for topic in ALL_KAFKA_TOPICS:
        assert partitions.get(topic) == 3, f"{topic}: {partitions.get(topic)} partitions"


def test_kafka_topics_have_their_configs() -> None:
    """deployments.updated is compacted: a gateway replica replays it from the beginning to rebuild its routes."""
    for topic, configs in KAFKA_TOPIC_CONFIGS.items():
        for name, value in configs.items():
            assert asyncio.run(_topic_config(topic, name)) == value, f"{topic}: {name}"


async def _topic_config(topic: str, name: str) -> str | None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {name: None})])
    finally:
        await admin.close()
    [resource] = response.to_object()["resources"]
    return {e["config_names"]: e["config_value"] for e in resource["config_entries"]}.get(name)


def test_postgres_database_edgeloop_is_reachable_and_writable_as_edgeloop() -> None:
    engine = sqlalchemy.create_engine(infra.DATABASE_URL)
    table = f"infra_probe_{uuid.uuid4().hex[:8]}"
    try:
        with engine.begin() as connection:
            user, database = connection.execute(sqlalchemy.text("SELECT current_user, current_database()")).one()
            connection.execute(sqlalchemy.text(f"CREATE TABLE {table} (id int PRIMARY KEY)"))
            connection.execute(sqlalchemy.text(f"INSERT INTO {table} VALUES (1)"))
            count = connection.execute(sqlalchemy.text(f"SELECT count(*) FROM {table}")).scalar_one()
            connection.execute(sqlalchemy.text(f"DROP TABLE {table}"))
    finally:
        engine.dispose()

    assert (user, database, count) == ("edgeloop", "edgeloop", 1)


class MqttClient:
    """A paho client on its own network thread that collects what it receives."""

    def __init__(self, client_id: str, *, clean_session: bool) -> None:
        self.received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subscribed = queue.Queue[int]()
        self.session_present: bool | None = None
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session, protocol=mqtt.MQTTv311
        )
        self.client.on_message = lambda _client, _userdata, message: self.received.put(message)
        self.client.on_subscribe = lambda _client, _userdata, mid, _codes, _props: self.subscribed.put(mid)
        self.client.on_connect = self._on_connect
        self.connected = queue.Queue[bool]()

    def _on_connect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        self.session_present = flags.session_present
        self.connected.put(not reason.is_failure)

    def __enter__(self) -> MqttClient:
        self.client.connect(MQTT_HOST, MQTT_PORT, keepalive=30)
        self.client.loop_start()
        assert self.connected.get(timeout=10), "the broker refused the connection"
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def subscribe(self, topic: str) -> None:
        _result, mid = self.client.subscribe(topic, qos=1)
        assert self.subscribed.get(timeout=10) == mid

    def publish_qos1(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), "no PUBACK from the broker"


def test_mosquitto_acknowledges_a_qos1_publish_and_delivers_it() -> None:
    topic = f"test/infra/{uuid.uuid4().hex}"
    with MqttClient(f"infra-sub-{uuid.uuid4().hex[:8]}", clean_session=True) as subscriber:
        subscriber.subscribe(topic)
        with MqttClient(f"infra-pub-{uuid.uuid4().hex[:8]}", clean_session=True) as publisher:
            publisher.publish_qos1(topic, b"hello edge")
        message = subscriber.received.get(timeout=10)

    assert (message.topic, message.payload, message.qos) == (topic, b"hello edge", 1)


@pytest.fixture
def restores() -> Iterator[list[str]]:
    """Components a test stops; each is started again afterwards, whatever happened."""
    stopped: list[str] = []
    yield stopped
    for name in stopped:
        infra.start(name)


@pytest.mark.slow
def test_mosquitto_keeps_a_persistent_sessions_queued_message_across_a_restart(restores: list[str]) -> None:
    topic = f"test/infra/{uuid.uuid4().hex}"
    session = f"infra-persistent-{uuid.uuid4().hex[:8]}"
    with MqttClient(session, clean_session=False) as subscriber:
        subscriber.subscribe(topic)
    with MqttClient(f"infra-pub-{uuid.uuid4().hex[:8]}", clean_session=True) as publisher:
        publisher.publish_qos1(topic, b"queued while away")

    restores.append("mosquitto")
    assert infra.stop("mosquitto")
    infra.start("mosquitto")

    with MqttClient(session, clean_session=False) as subscriber:
        message = subscriber.received.get(timeout=10)
        assert subscriber.session_present
    with MqttClient(session, clean_session=True):
        pass  # ends the session, so the broker stops queueing for it
    assert message.payload == b"queued while away"


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_kafka_keeps_written_records_across_stop_and_start(restores: list[str]) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = f"test-infra-durability-{uuid.uuid4().hex[:8]}"
    sent = [(f"device-{i % 4}".encode(), f"record-{i}".encode()) for i in range(40)]
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all", enable_idempotence=True)
    try:
        await producer.start()
        for key, value in sent:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()

    restores.append("kafka")
    assert await infra.stop_async("kafka")
    assert [item.state for item in infra.status(["kafka"])] == ["stopped"]
    await infra.start_async("kafka")

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA, auto_offset_reset="earliest", group_id=None)
    received: list[tuple[bytes, bytes]] = []
    try:
        await consumer.start()
        deadline = time.monotonic() + 60
        while len(received) < len(sent) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            received += [(record.key, record.value) for records in batches.values() for record in records]
    finally:
        await consumer.stop()

    assert sorted(received) == sorted(sent)
    for device in {key for key, _ in sent}:  # one key, one partition: its order survives
        assert [v for k, v in received if k == device] == [v for k, v in sent if k == device]


# -- never touching what is not ours ------------------------------------------------------------------------


@pytest.fixture
def other_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A second checkout of EdgeLoop (its own .edgeloop/), for which the running stack is someone else's."""
    (tmp_path / "infra").symlink_to(REPO_ROOT / "infra")
    monkeypatch.setenv("EDGELOOP_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port this test process listens on: a server edgeloop did not start."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_start_refuses_a_port_served_by_a_process_it_did_not_start(
    other_checkout: Path, held_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not the shared ports: if the refusal failed, nothing but this test's own port would be at stake.
    monkeypatch.setattr(Mosquitto, "port", held_port)
    progress: list[str] = []

    with pytest.raises(infra.InfraError) as refusal:
        infra.start("mosquitto", echo=progress.append)

    message = str(refusal.value)
    assert f"already served by pid {os.getpid()}" in message and f"on port {held_port}" in message
    assert "leaving it alone" in message
    assert not any("starting" in line for line in progress), progress
    [mosquitto] = infra.status(["mosquitto"])
    assert (mosquitto.state, mosquitto.pid) == ("foreign", os.getpid())


def test_down_leaves_alone_a_process_its_pid_file_names_but_it_did_not_start(other_checkout: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        pid_file = other_checkout / ".edgeloop" / "run" / "mosquitto.pid"
        pid_file.parent.mkdir(parents=True)
        pid_file.write_text(f"{sleeper.pid}\n")

        result = edgeloop("infra", "down", home=other_checkout)

        assert result.returncode == 0, result.stderr
        assert f"mosquitto: removing stale pid file (pid {sleeper.pid} is not an edgeloop mosquitto)" in result.stdout
        assert sleeper.poll() is None, "down killed a process it had not started"
        assert not pid_file.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_kcat_and_mosquitto_clients_are_installed() -> None:
    for program in ("kcat", "mosquitto_pub", "mosquitto_sub", "psql"):
        assert shutil.which(program), f"{program} is not on PATH"
