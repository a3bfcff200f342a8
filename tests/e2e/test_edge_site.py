"""The edge tier on the real components: a site's Mosquitto, node-group model-server processes and edge-agent
processes at the edge; ingest, the inference gateway and the deployer in the cloud on Kafka, PostgreSQL and the
cloud's Mosquitto.

* the cloud is stopped for a stretch of a camera's stream: the site's devices keep getting answers from the edge,
  and once the cloud is back every record reaches ingest once, in order per device;
* the agent is killed (SIGKILL) mid-stream: no picture the site's broker acknowledged goes unanswered;
* a promotion rolled out to one node group changes the version in that site's answers only.

(The 10-minute version of the first: ``bench/edge_offline.py``.)
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from edge_site import ServiceProcess, edge_agent, node_group_model_server
from edgeloop.device import DeviceResult, DeviceSimulator, SimulatorConfig
from edgeloop.local_mqtt import LocalBroker, start_local_broker
from edgeloop.system import System, SystemConfig
from edgeloop_common.settings import CommonSettings
from loop_harness import FreshSchemas

from tests.helpers import eventually, free_port

pytestmark = [pytest.mark.kafka, pytest.mark.mqtt, pytest.mark.postgres, pytest.mark.tf]

SITE = "site-edge"
GROUPS = ("site-a", "site-b")


@pytest.fixture(scope="module")
def model_base(tmp_path_factory: pytest.TempPathFactory, trained_model_base: Path, trained_model_name: str) -> Path:
    """Versions 1 and 2 of the test model (the same weights: what tells them apart in an answer is the number)."""
    base = tmp_path_factory.mktemp("edge-models")
    for version in (1, 2):
        shutil.copytree(trained_model_base / trained_model_name / "1", base / trained_model_name / str(version))
    return base


@pytest.fixture(scope="module")
def site_model_server(
    tmp_path_factory: pytest.TempPathFactory, model_base: Path, trained_model_name: str
) -> Iterator[ServiceProcess]:
    """The model server of the site's node group, serving version 1."""
    base = tmp_path_factory.mktemp("site-models")
    (base / trained_model_name).mkdir()
    (base / trained_model_name / "1").symlink_to(model_base / trained_model_name / "1")
    server = node_group_model_server(base, trained_model_name, tmp_path_factory.mktemp("logs"), SITE).start()
    yield server
    server.stop()


@pytest.fixture
async def site_broker() -> AsyncIterator[LocalBroker]:
    """The site's own Mosquitto (not the cloud's): where its devices publish."""
    broker = await start_local_broker(free_port(), prefer="mosquitto")
    assert broker.kind == "mosquitto"
    yield broker
    await broker.stop()


@dataclass
class Cloud:
    """Ingest, the inference gateway (with its model server) and optionally the deployer, on Kafka and
    PostgreSQL; stopped and started again on the same ports, as a cloud outage would look to the edge."""

    model_name: str
    model_base: Path
    work_dir: Path
    databases: FreshSchemas
    kafka_bootstrap: str
    cloud_mqtt: tuple[str, int]
    topic_prefix: str
    deployer: dict[str, Any] | None = None
    system: System | None = None
    ports: dict[str, int] | None = None

    def common(self, service: str) -> CommonSettings:
        database = {"database_url": self.databases.url(service)} if service in self.databases.names else {}
        return CommonSettings(
            mode="distributed",
            kafka_bootstrap_servers=self.kafka_bootstrap,
            mqtt_host=self.cloud_mqtt[0],
            mqtt_port=self.cloud_mqtt[1],
            data_dir=self.work_dir / service,
            **database,
        )

    @property
    def services(self) -> list[str]:
        return ["model-server", "ingest", "inference-gateway", *(["deployer"] if self.deployer else [])]

    async def start(self) -> None:
        self.system = System(
            SystemConfig(
                model_name=self.model_name,
                model_base=self.model_base,
                common=self.common,
                topic_prefix=self.topic_prefix,
                ports=self.ports or {},
                ready_timeout_s=60,
                settings={
                    "model-server": {"inference_threads": 1},
                    "ingest": {"mqtt_session_expiry_s": 30},
                    "deployer": self.deployer or {},
                },
            )
        )
        await self.system.start(self.services)
        if self.ports is None:  # the next start takes the same ports: the edge knows the cloud by its URLs
            self.ports = {name: int(url.rsplit(":", 1)[1]) for name, url in self.system.urls.items() if name != "grpc"}
            self.ports["model-server-grpc"] = int(self.system.urls["grpc"].rsplit(":", 1)[1])

    async def stop(self) -> None:
        if self.system is not None:
            await self.system.stop()
            self.system = None

    @property
    def urls(self) -> dict[str, str]:
        assert self.system is not None
        return self.system.urls


@pytest.fixture
def start_cloud(
    tmp_path: Path,
    model_base: Path,
    trained_model_name: str,
    postgres_url: str,
    kafka_bootstrap: str,
    mqtt_broker: tuple[str, int],
    topic_prefix: str,
) -> Any:
    @asynccontextmanager
    async def start(deployer: dict[str, Any] | None = None) -> AsyncIterator[Cloud]:
        schemas = FreshSchemas(postgres_url, ["ingest", "deployer"])
        with schemas.created():
            cloud = Cloud(
                trained_model_name,
                model_base,
                tmp_path / "cloud",
                schemas,
                kafka_bootstrap,
                mqtt_broker,
                topic_prefix,
                deployer=deployer,
            )
            await cloud.start()
            try:
                yield cloud
            finally:
                await cloud.stop()

    return start


def camera(site: str, broker: LocalBroker, images: Path, device: str = "cam-1", **options: Any) -> SimulatorConfig:
    return SimulatorConfig(images, site, device, mqtt_host=broker.host, mqtt_port=broker.port, **options)


def uplink_arrivals(cloud: Cloud, site: str) -> list[tuple[str, str, int, bool]]:
    """(record id, device, sequence, picture included) of every record ingest took from ``site``, in arrival order."""
    url = cloud.databases.url("ingest").replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT record_id, device_id, sequence, image_included FROM ingest_uplink_records "
            "WHERE site_id = %s ORDER BY stored_at, sequence",
            (site,),
        ).fetchall()
        return [(str(r[0]), str(r[1]), int(r[2]), bool(r[3])) for r in rows]


def sample_ids(cloud: Cloud) -> list[str]:
    url = cloud.databases.url("ingest").replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as connection:
        return [str(row[0]) for row in connection.execute("SELECT sample_id FROM ingest_samples").fetchall()]


async def test_the_edge_answers_while_the_cloud_is_away_and_everything_reaches_it_once_it_is_back(
    start_cloud: Any,
    site_broker: LocalBroker,
    site_model_server: ServiceProcess,
    trained_model_name: str,
    catdog_train_dir: Path,
    tmp_path: Path,
) -> None:
    images = catdog_train_dir / "cat"
    results: list[tuple[float, DeviceResult]] = []
    async with start_cloud() as cloud:
        agent = edge_agent(
            SITE,
            broker=(site_broker.host, site_broker.port),
            model_name=trained_model_name,
            model_server_url=site_model_server.url,
            data_dir=tmp_path / "edge",
            logs=tmp_path,
            ingest_url=cloud.urls["ingest"],
            cloud_url=cloud.urls["inference-gateway"],
            uplink_policy="all",  # every record brings its picture: each one is a sample in the cloud
            joint_budget_ms=2000,
            link_retry_s=1,
        )
        await asyncio.to_thread(agent.start)
        try:
            cameras = [
                DeviceSimulator(
                    camera(SITE, site_broker, images, device, count=40, rate=8.0, loop=True, timeout_s=90),
                    on_result=lambda result: results.append((time.monotonic(), result)),
                )
                for device in ("cam-1", "cam-2")
            ]
            streams = asyncio.gather(*(c.run() for c in cameras))
            await asyncio.sleep(1.5)
            await cloud.stop()  # ingest, the gateway and its model server: the whole cloud side is away
            offline_from = time.monotonic()
            await asyncio.sleep(3.0)
            sent_by_then = sum(c.summary.sent for c in cameras)
            # Every picture sent so far is answered with the cloud still away (the edge may lag the camera a bit).
            await eventually(
                lambda: len(results) >= 0.99 * sent_by_then,
                what=f"99% of the {sent_by_then} pictures sent answered while the cloud is away",
                timeout_s=30,
            )
            status_offline = await asyncio.to_thread(agent.get, "/v1/status")
            offline_until = time.monotonic()
            await cloud.start()
            summaries = await streams

            # (answers arriving in the first half second may be the cloud's, given before it stopped)
            answered_offline = [r for at, r in results if offline_from + 0.5 <= at <= offline_until]
            for summary in summaries:
                assert summary.acked == summary.sent == 40, summary.describe()
                assert summary.missing == 0, summary.describe()
            assert answered_offline and {r.payload["served_by"] for r in answered_offline} == {"edge"}
            assert status_offline["uplink"]["link_up"] is False
            assert status_offline["uplink"]["queued_records"] > 0

            await eventually(
                lambda: agent.get("/v1/status")["uplink"]["queued_records"] == 0,
                what="the uplink backlog drained",
                timeout_s=60,
            )
            status = await asyncio.to_thread(agent.get, "/v1/status")
        finally:
            await asyncio.to_thread(agent.stop)

        assert status["uplink"]["link_up"] is True and status["uplink"]["set_aside"] == 0
        answered = {r.payload["sample_id"] for _, r in results}
        arrivals = await asyncio.to_thread(uplink_arrivals, cloud, SITE)
        # every answered picture reached ingest, once, with its picture, in order per device
        assert sorted(a[0] for a in arrivals) == sorted(answered)
        assert all(included for *_, included in arrivals)
        for device in ("cam-1", "cam-2"):
            sequences = [sequence for _, dev, sequence, _ in arrivals if dev == device]
            assert len(sequences) == 40 and sequences == sorted(sequences)
        stored = await asyncio.to_thread(sample_ids, cloud)
        assert sorted(set(stored) & answered) == sorted(answered) and len(stored) == len(set(stored))


async def test_an_agent_killed_mid_stream_answers_every_picture_the_broker_acknowledged(
    site_broker: LocalBroker,
    site_model_server: ServiceProcess,
    trained_model_name: str,
    catdog_train_dir: Path,
    tmp_path: Path,
) -> None:
    agent = edge_agent(
        SITE,
        broker=(site_broker.host, site_broker.port),
        model_name=trained_model_name,
        model_server_url=site_model_server.url,
        data_dir=tmp_path / "edge",
        logs=tmp_path,
        mqtt_client_id=f"edgeloop-edge-{SITE}-kill",
    )
    await asyncio.to_thread(agent.start)
    results: list[DeviceResult] = []
    try:
        simulator = DeviceSimulator(
            camera(SITE, site_broker, catdog_train_dir / "dog", count=60, rate=15.0, loop=True, timeout_s=90),
            on_result=results.append,
        )
        stream = asyncio.create_task(simulator.run())
        await eventually(lambda: len(results) >= 10, what="the first answers", timeout_s=60)
        await asyncio.to_thread(agent.kill)
        killed_after = len(results)
        await asyncio.sleep(1.0)  # the camera keeps sending; the site's broker keeps the agent's session
        await asyncio.to_thread(agent.start)
        summary = await stream
    finally:
        await asyncio.to_thread(agent.stop)

    assert summary.acked == summary.sent == 60, summary.describe()
    assert summary.missing == 0, f"{summary.describe()}\n{agent.output()}"
    assert killed_after < 60
    assert {r.payload["served_by"] for r in results} == {"edge"}


async def test_a_promotion_rolled_out_to_one_node_group_changes_only_that_sites_answers(
    start_cloud: Any,
    model_base: Path,
    trained_model_name: str,
    catdog_train_dir: Path,
    tmp_path: Path,
) -> None:
    models_root = tmp_path / "node-groups"
    servers = {
        group: node_group_model_server(models_root / group, trained_model_name, tmp_path, group) for group in GROUPS
    }
    for group in GROUPS:
        (models_root / group / trained_model_name).mkdir(parents=True)
    for server in servers.values():
        await asyncio.to_thread(server.start, wait=False)
    brokers: dict[str, LocalBroker] = {}
    agents: dict[str, ServiceProcess] = {}
    deployer = {
        "target": "local",
        "node_groups": ",".join(GROUPS),
        "local_node_group_servers": ",".join(f"{group}={servers[group].url}" for group in GROUPS),
        "local_models_root": models_root,
        "local_model_base": model_base,
        "poll_interval_s": 0.25,
        "rollout_timeout_s": 60,
    }
    try:
        async with start_cloud(deployer=deployer) as cloud:

            async def roll_out(version: int, group: str) -> None:
                body = {"model_name": trained_model_name, "version": version, "node_group": group}
                await cloud.system.json("deployer", "POST", "/v1/deployments", json=body, expect=202)  # type: ignore[union-attr]

                async def done() -> bool:
                    path = f"/v1/deployments/{trained_model_name}/{group}"
                    detail = await cloud.system.json("deployer", "GET", path)  # type: ignore[union-attr]
                    return bool(detail["actual_version"] == version and detail["phase"] == "ready")

                await eventually(done, what=f"version {version} rolled out to {group}", timeout_s=90)

            for group in GROUPS:
                await roll_out(1, group)
            for group in GROUPS:
                await asyncio.to_thread(servers[group].wait_ready)
                brokers[group] = await start_local_broker(free_port(), prefer="mosquitto")
                agents[group] = edge_agent(
                    group,
                    broker=(brokers[group].host, brokers[group].port),
                    model_name=trained_model_name,
                    model_server_url=servers[group].url,
                    data_dir=tmp_path / f"edge-{group}",
                    logs=tmp_path,
                )
                await asyncio.to_thread(agents[group].start)

            async def versions_answering() -> dict[str, set[int | None]]:
                answers: dict[str, set[int | None]] = {}
                for group in GROUPS:
                    results: list[DeviceResult] = []
                    config = camera(group, brokers[group], catdog_train_dir / "cat", count=3, rate=10.0, timeout_s=30)
                    summary = await DeviceSimulator(config, on_result=results.append).run()
                    assert summary.missing == 0, summary.describe()
                    answers[group] = {r.model_version for r in results}
                return answers

            assert await versions_answering() == {"site-a": {1}, "site-b": {1}}
            await roll_out(2, "site-a")
            await asyncio.sleep(1.0)  # the agents' metadata refresh (0.3 s)
            assert await versions_answering() == {"site-a": {2}, "site-b": {1}}
            updated = await cloud.system.json("deployer", "GET", "/v1/deployments")  # type: ignore[union-attr]
    finally:
        for agent in agents.values():
            await asyncio.to_thread(agent.stop)
        for broker in brokers.values():
            await broker.stop()
        for server in servers.values():
            await asyncio.to_thread(server.stop)
    endpoints = {(d["node_group"], d.get("endpoint")) for d in updated["deployments"]}
    assert endpoints == {(group, servers[group].url) for group in GROUPS}
