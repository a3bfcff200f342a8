"""Device identity on MQTT (docs/security.md): a secured Mosquitto of the test's own, with the dynamic-security
plugin, a plain-text and a TLS listener on free ports. The shared broker of `edgeloop infra up` is not touched."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from edgeloop.device_identity import DynsecAdmin, device_username, service_username
from edgeloop.main import app
from edgeloop.secure_mqtt import SecureBroker, count_refusals, generate_password, issue_client_certificate
from edgeloop_common import topics
from edgeloop_common.mqtt_asyncio import AsyncMqttClient, MqttRefusedError, MqttUnavailableError, ReceivedMessage
from edgeloop_common.mqtt_auth import MqttAuth
from typer.testing import CliRunner

from tests.helpers import eventually, free_port

pytestmark = pytest.mark.mqtt


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    workdir = tmp_path_factory.mktemp("secure-mqtt")
    secured = SecureBroker(workdir, port=free_port(), tls_port=free_port(), cert_port=free_port()).start()
    try:
        yield secured
    finally:
        secured.stop()


def admin_auth(broker: SecureBroker) -> MqttAuth:
    return MqttAuth(username=broker.admin_username, password=broker.admin_password)


@pytest.fixture
async def admin(broker: SecureBroker) -> AsyncIterator[DynsecAdmin]:
    assert broker.port is not None
    async with DynsecAdmin(broker.host, broker.port, admin_auth(broker)) as connected:
        yield connected


@pytest.fixture
def site() -> str:
    """A site of the test's own, so tests sharing the module's broker never see each other's devices."""
    return f"site-{uuid.uuid4().hex[:8]}"


class Collector:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))

    def topics(self) -> list[str]:
        return [topic for topic, _ in self.messages]


async def connected(
    broker: SecureBroker, username: str, password: str, *, on_message: Collector | None = None, protocol: str = "5"
) -> AsyncMqttClient:
    assert broker.port is not None
    client = AsyncMqttClient(
        broker.host,
        broker.port,
        on_message=on_message,
        protocol=protocol,  # type: ignore[arg-type]
        auth=MqttAuth(username=username, password=password),
    )
    await client.connect(timeout_s=5)
    return client


async def test_unknown_device_and_wrong_password_are_refused_at_connect_and_counted(
    broker: SecureBroker, admin: DynsecAdmin, site: str
) -> None:
    await admin.add_device(site, "cam-1", "right-password")
    before = broker.refusals().connections
    for username, password in ((f"{site}/stranger", "whatever"), (f"{site}/cam-1", "wrong-password")):
        assert broker.port is not None
        client = AsyncMqttClient(broker.host, broker.port, protocol="5", auth=MqttAuth(username, password))
        with pytest.raises(MqttRefusedError) as refused:
            await client.connect(timeout_s=5)
        assert refused.value.reason == "Not authorized"
        assert client.connect_refusals == 1
        await client.close()
    anonymous = AsyncMqttClient(broker.host, broker.port, protocol="5")
    with pytest.raises(MqttRefusedError):
        await anonymous.connect(timeout_s=5)
    await anonymous.close()
    await eventually(lambda: broker.refusals().connections == before + 3, timeout_s=5)
    device = await connected(broker, f"{site}/cam-1", "right-password")
    assert device.connected
    await device.close()


async def test_a_device_publishing_as_another_device_is_refused_and_counted(
    broker: SecureBroker, admin: DynsecAdmin, site: str
) -> None:
    await admin.add_device(site, "cam-a", "pw-a")
    await admin.add_device(site, "cam-b", "pw-b")
    await admin.add_service("ingest", "pw-ingest")
    seen = Collector()
    ingest = await connected(broker, service_username("ingest"), "pw-ingest", on_message=seen)
    await ingest.subscribe([topics.MQTT_IMAGE_SUBSCRIPTION, topics.MQTT_TELEMETRY_SUBSCRIPTION])
    cam_a = await connected(broker, device_username(site, "cam-a"), "pw-a")
    own = topics.mqtt_topic(topics.MQTT_IMAGE, site=site, device="cam-a")
    as_b = topics.mqtt_topic(topics.MQTT_IMAGE, site=site, device="cam-b")
    other_site = topics.mqtt_topic(topics.MQTT_IMAGE, site=f"{site}-x", device="cam-a")
    before = broker.refusals().publishes
    try:
        await cam_a.publish(own, b"mine")
        await cam_a.publish(topics.mqtt_topic(topics.MQTT_TELEMETRY, site=site, device="cam-a"), b"{}")
        for forged in (as_b, other_site):
            with pytest.raises(MqttRefusedError) as refused:  # MQTT 5: PUBACK with "Not authorized"
                await cam_a.publish(forged, b"forged")
            assert refused.value.reason == "Not authorized"
        assert cam_a.publish_refusals == 2
        # MQTT 3.1.1 has no reason code in a PUBACK: the broker acknowledges and drops the message.
        legacy = await connected(broker, device_username(site, "cam-a"), "pw-a", protocol="3.1.1")
        await legacy.publish(as_b, b"forged over 3.1.1")
        await legacy.close()
        await eventually(lambda: broker.refusals().publishes == before + 3, timeout_s=5)
        await cam_a.publish(own, b"mine again")  # the connection is still good for its own topics
        await eventually(lambda: seen.topics().count(own) == 2, timeout_s=5)
        await asyncio.sleep(0.2)
        assert as_b not in seen.topics() and other_site not in seen.topics()
        assert set(count_refusals(broker.log_text()).denied_topics) >= {as_b, other_site}
    finally:
        await cam_a.close()
        await ingest.close()


async def test_a_device_subscribes_only_to_its_own_results_and_commands(
    broker: SecureBroker, admin: DynsecAdmin, site: str
) -> None:
    await admin.add_device(site, "cam-a", "pw-a")
    await admin.add_device(site, "cam-b", "pw-b")
    await admin.add_service("inference-gateway", "pw-gateway")
    await admin.add_service("ingest", "pw-ingest")
    seen = Collector()
    cam_a = await connected(broker, device_username(site, "cam-a"), "pw-a", on_message=seen)
    gateway = await connected(broker, service_username("inference-gateway"), "pw-gateway")
    ingest = await connected(broker, service_username("ingest"), "pw-ingest")
    result_a = topics.mqtt_topic(topics.MQTT_RESULT, site=site, device="cam-a")
    capture_a = topics.mqtt_topic(topics.MQTT_CAPTURE, site=site, device="cam-a")
    try:
        for foreign in (
            topics.mqtt_topic(topics.MQTT_RESULT, site=site, device="cam-b"),
            f"dt/edgeloop/{site}/+/result",
            "dt/edgeloop/#",
            topics.mqtt_topic(topics.MQTT_IMAGE, site=site, device="cam-a"),
        ):
            with pytest.raises(MqttRefusedError):  # SUBACK: "Not authorized"
                await cam_a.subscribe(foreign)
        assert cam_a.subscribe_refusals == 4
        await cam_a.subscribe([result_a, capture_a])
        await gateway.publish(result_a, b'{"top_label": "cat"}')
        await ingest.publish(capture_a, b"{}")
        await eventually(lambda: sorted(seen.topics()) == sorted([result_a, capture_a]), timeout_s=5)
        # Services publish only what they own: the gateway sends no commands, ingest no results.
        with pytest.raises(MqttRefusedError):
            await gateway.publish(capture_a, b"{}")
        with pytest.raises(MqttRefusedError):
            await ingest.publish(result_a, b"{}")
    finally:
        for client in (cam_a, gateway, ingest):
            await client.close()


async def test_a_removed_device_is_dropped_at_once_and_refused_after(
    broker: SecureBroker, admin: DynsecAdmin, site: str
) -> None:
    await admin.add_device(site, "cam-gone", "pw")
    await admin.add_device(site, "cam-stays", "pw")
    assert {(d.site, d.device) for d in await admin.list_devices() if d.site == site} == {
        (site, "cam-gone"),
        (site, "cam-stays"),
    }
    gone = await connected(broker, device_username(site, "cam-gone"), "pw")
    stays = await connected(broker, device_username(site, "cam-stays"), "pw")
    try:
        started = asyncio.get_running_loop().time()
        await admin.remove_device(site, "cam-gone")
        await eventually(lambda: not gone.connected, timeout_s=2)
        assert asyncio.get_running_loop().time() - started < 1.0
        assert stays.connected
        with pytest.raises(MqttRefusedError):
            await connected(broker, device_username(site, "cam-gone"), "pw")
        assert [d.device for d in await admin.list_devices() if d.site == site] == ["cam-stays"]
    finally:
        await gone.close()
        await stays.close()


async def test_an_edge_agent_identity_reads_and_answers_only_its_site(
    broker: SecureBroker, admin: DynsecAdmin, site: str
) -> None:
    await admin.add_service("edge", "pw-edge", site=site)
    await admin.add_device(site, "cam-1", "pw-1")
    seen = Collector()
    edge = await connected(broker, service_username("edge", site), "pw-edge", on_message=seen)
    device = await connected(broker, device_username(site, "cam-1"), "pw-1")
    try:
        with pytest.raises(MqttRefusedError):
            await edge.subscribe(topics.MQTT_IMAGE_SUBSCRIPTION)  # every site's pictures: not its own
        await edge.subscribe(topics.mqtt_topic(topics.MQTT_IMAGE, site=site, device="+"))
        image = topics.mqtt_topic(topics.MQTT_IMAGE, site=site, device="cam-1")
        await device.publish(image, b"jpeg")
        await eventually(lambda: seen.topics() == [image], timeout_s=5)
        await edge.publish(topics.mqtt_topic(topics.MQTT_RESULT, site=site, device="cam-1"), b"{}")
        with pytest.raises(MqttRefusedError):
            await edge.publish(topics.mqtt_topic(topics.MQTT_RESULT, site=f"{site}-other", device="cam-1"), b"{}")
    finally:
        await edge.close()
        await device.close()


async def test_the_tls_listener_refuses_plain_text_and_accepts_a_client_that_trusts_its_ca(
    broker: SecureBroker, admin: DynsecAdmin, site: str
) -> None:
    assert broker.tls_port is not None and broker.tls is not None
    await admin.add_device(site, "cam-tls", "pw")
    credentials = {"username": device_username(site, "cam-tls"), "password": "pw"}
    plain = AsyncMqttClient(broker.host, broker.tls_port, protocol="5", auth=MqttAuth(**credentials))
    with pytest.raises(MqttUnavailableError):
        await plain.connect(timeout_s=3)
    await plain.close()
    untrusting = AsyncMqttClient(broker.host, broker.tls_port, protocol="5", auth=MqttAuth(**credentials, tls=True))
    with pytest.raises(MqttUnavailableError):  # the system's trust store does not know the local CA
        await untrusting.connect(timeout_s=3)
    await untrusting.close()
    client = AsyncMqttClient(
        broker.host, broker.tls_port, protocol="5", auth=MqttAuth(**credentials, ca_file=broker.tls.ca_file)
    )
    await client.connect(timeout_s=5)
    try:
        await client.publish(topics.mqtt_topic(topics.MQTT_IMAGE, site=site, device="cam-tls"), b"over tls")
        with pytest.raises(MqttRefusedError):  # the same rights as over plain text
            await client.publish(topics.mqtt_topic(topics.MQTT_IMAGE, site=site, device="cam-x"), b"forged")
    finally:
        await client.close()


async def test_a_device_identified_by_its_client_certificate(
    broker: SecureBroker, admin: DynsecAdmin, site: str, tmp_path: Path
) -> None:
    """The other way to prove who a device is: a certificate signed by the broker's CA, common name SITE/DEVICE.
    The broker asks no password then; the rights are still the dynamic-security client's of that name."""
    assert broker.cert_port is not None and broker.tls is not None
    ca = broker.tls.ca_file
    await admin.add_device(site, "cam-cert", generate_password())  # the password is never used over this listener
    own = topics.mqtt_topic(topics.MQTT_IMAGE, site=site, device="cam-cert")

    async def as_holder_of(common_name: str) -> AsyncMqttClient:
        cert, key = issue_client_certificate(broker.tls, common_name, tmp_path)  # type: ignore[arg-type]
        client = AsyncMqttClient(
            broker.host, broker.cert_port or 0, protocol="5", auth=MqttAuth(ca_file=ca, cert_file=cert, key_file=key)
        )
        await client.connect(timeout_s=5)
        return client

    device = await as_holder_of(device_username(site, "cam-cert"))
    try:
        await device.publish(own, b"jpeg")
        with pytest.raises(MqttRefusedError):
            await device.publish(topics.mqtt_topic(topics.MQTT_IMAGE, site=site, device="cam-other"), b"forged")
    finally:
        await device.close()
    # A certificate the CA signed for a name the broker does not know connects, but may do nothing.
    stranger = await as_holder_of(device_username(site, "cam-unknown"))
    try:
        with pytest.raises(MqttRefusedError):
            await stranger.publish(topics.mqtt_topic(topics.MQTT_IMAGE, site=site, device="cam-unknown"), b"x")
    finally:
        await stranger.close()
    no_certificate = AsyncMqttClient(broker.host, broker.cert_port, protocol="5", auth=MqttAuth(ca_file=ca))
    with pytest.raises(MqttUnavailableError):
        await no_certificate.connect(timeout_s=3)
    await no_certificate.close()


def test_device_commands_add_list_remove(broker: SecureBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELOOP_MQTT_HOST", broker.host)
    monkeypatch.setenv("EDGELOOP_MQTT_PORT", str(broker.port))
    monkeypatch.setenv("EDGELOOP_MQTT_ADMIN_USERNAME", broker.admin_username)
    monkeypatch.setenv("EDGELOOP_MQTT_ADMIN_PASSWORD", broker.admin_password)
    site = f"cli-{uuid.uuid4().hex[:8]}"
    runner = CliRunner()
    password_file = tmp_path / "password"
    password_file.write_text("from-a-file\n")

    added = runner.invoke(app, ["device", "add", site, "cam-1", "--password-file", str(password_file)])
    assert added.exit_code == 0, added.output
    generated = runner.invoke(app, ["device", "add", site, "cam-2"])
    assert generated.exit_code == 0, generated.output
    assert "password (shown once): " in generated.output
    again = runner.invoke(app, ["device", "add", site, "cam-1"])
    assert again.exit_code == 2 and "already exists" in again.output
    bad = runner.invoke(app, ["device", "add", "no/slash", "cam-1"])
    assert bad.exit_code == 2 and "not a valid site id" in bad.output

    listed = runner.invoke(app, ["device", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    mine = [each["device"] for each in json.loads(listed.output) if each["site"] == site]
    assert mine == ["cam-1", "cam-2"]

    async def login(password: str) -> None:
        client = await connected(broker, device_username(site, "cam-1"), password)
        await client.close()

    asyncio.run(login("from-a-file"))
    removed = runner.invoke(app, ["device", "remove", site, "cam-1"])
    assert removed.exit_code == 0, removed.output
    with pytest.raises(MqttRefusedError):
        asyncio.run(login("from-a-file"))
    counted = runner.invoke(app, ["device", "refusals", "--log", str(broker.log_file)])
    assert counted.exit_code == 0 and "connections refused: " in counted.output


async def test_services_connect_with_the_identity_their_settings_give(
    broker: SecureBroker, admin: DynsecAdmin, site: str, monkeypatch: pytest.MonkeyPatch, catdog_captures_dir: Path
) -> None:
    """Ingest's bridge, built from its settings (EDGELOOP_MQTT_USERNAME/_PASSWORD), receives a registered device's
    pictures; the device simulator with the device's password gets its results from the site's edge identity."""
    from edgeloop.device import DeviceSimulator, SimulatorConfig
    from edgeloop_ingest.adapters.mqtt import AsyncioMqttSubscriber
    from edgeloop_ingest.app import mqtt_config
    from edgeloop_ingest.settings import Settings as IngestSettings

    await admin.add_service("ingest", "pw-ingest")
    await admin.add_service("edge", "pw-edge", site=site)
    await admin.add_device(site, "cam-1", "pw-cam")
    monkeypatch.setenv("EDGELOOP_MQTT_HOST", broker.host)
    monkeypatch.setenv("EDGELOOP_MQTT_PORT", str(broker.port))
    monkeypatch.setenv("EDGELOOP_MQTT_USERNAME", "ingest")
    monkeypatch.setenv("EDGELOOP_MQTT_PASSWORD", "pw-ingest")
    monkeypatch.setenv("EDGELOOP_INGEST_SITES", site)
    monkeypatch.setenv("EDGELOOP_INGEST_MQTT_CLIENT_ID", f"ingest-{site}")
    config = mqtt_config(IngestSettings())
    assert config.auth is not None and config.auth.username == "ingest"
    bridged: list[str] = []

    def on_received(message: ReceivedMessage) -> None:
        bridged.append(message.topic)
        message.ack()

    bridge = AsyncioMqttSubscriber(config, on_received)
    await bridge.start()
    assert await bridge.wait_connected(timeout_s=5)

    edge = await connected(broker, service_username("edge", site), "pw-edge")

    def answer(topic: str, payload: bytes) -> None:
        parsed = topics.parse_device_topic(topic)
        assert parsed is not None
        result = {"image_sha256": hashlib.sha256(payload).hexdigest(), "top_label": "cat", "confidence": 0.9}
        edge.publish(topics.mqtt_topic(topics.MQTT_RESULT, site=site, device=parsed.device_id), json.dumps(result))

    edge.on_message = answer
    await edge.subscribe(topics.mqtt_topic(topics.MQTT_IMAGE, site=site, device="+"))
    try:
        simulator = DeviceSimulator(
            SimulatorConfig(
                catdog_captures_dir,
                site,
                "cam-1",
                rate=50.0,
                count=3,
                mqtt_host=broker.host,
                mqtt_port=broker.port or 0,
                auth=MqttAuth(username=device_username(site, "cam-1"), password="pw-cam"),
                timeout_s=10,
            )
        )
        summary = await simulator.run()
        assert (summary.sent, summary.acked, summary.results, summary.missing) == (3, 3, 3, 0)
        image = topics.mqtt_topic(topics.MQTT_IMAGE, site=site, device="cam-1")
        await eventually(lambda: bridged.count(image) == 3, timeout_s=5)
    finally:
        await edge.close()
        await bridge.stop()
        # End the bridge's persistent session on the broker (docs/infrastructure.md).
        forget = AsyncMqttClient(
            broker.host, broker.port or 0, client_id=f"ingest-{site}", auth=MqttAuth("ingest", "pw-ingest")
        )
        await forget.connect()
        await forget.close()
