"""The edge agent on the real Mosquitto and the real lite model server (the node group's pod): devices answered at
the edge, bad input kept with its reason, joint inference with a cloud gateway, and a restart that loses nothing."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from edge_helpers import AgentFactory
from edgeloop.device import DeviceResult, DeviceSimulator, SimulatorConfig
from edgeloop.system import EmbeddedServer
from edgeloop_common.mqtt_asyncio import AsyncMqttClient
from edgeloop_common.settings import CommonSettings
from edgeloop_common.topics import MQTT_IMAGE, MQTT_RESULT, mqtt_topic
from edgeloop_inference_gateway.app import create_app as create_gateway_app
from edgeloop_inference_gateway.settings import Settings as GatewaySettings
from edgeloop_model_server.embedded import RunningServer

from tests.helpers import eventually, free_port

pytestmark = [pytest.mark.mqtt, pytest.mark.tf]


def device(site: str, mqtt_broker: tuple[str, int], images: Path, **options: Any) -> SimulatorConfig:
    return SimulatorConfig(
        images, site, options.pop("device", "cam-1"), mqtt_host=mqtt_broker[0], mqtt_port=mqtt_broker[1], **options
    )


async def test_a_sites_devices_are_answered_at_the_edge_with_the_version_that_served(
    start_agent: AgentFactory, site: str, mqtt_broker: tuple[str, int], catdog_captures_dir: Path
) -> None:
    results: list[DeviceResult] = []
    async with start_agent() as agent:
        summary = await DeviceSimulator(
            device(site, mqtt_broker, catdog_captures_dir, rate=20.0, timeout_s=30), on_result=results.append
        ).run()
        status = await agent.status()
    assert (summary.sent, summary.acked, summary.results, summary.missing) == (8, 8, 8, 0), summary.describe()
    assert {(r.payload["served_by"], r.model_version) for r in results} == {("edge", 1)}
    assert all(r.payload["site_id"] == site and r.payload["sample_id"] for r in results)
    assert status["last_answer"]["model_version"] == 1
    # No uplink configured: every record waits at the edge, none lost.
    assert status["uplink"]["queued_records"] == 8 and status["uplink"]["unanswered"] == 0


async def test_what_is_not_a_picture_is_kept_with_its_reason_and_the_next_picture_is_answered(
    start_agent: AgentFactory, site: str, mqtt_broker: tuple[str, int], catdog_captures_dir: Path
) -> None:
    async with start_agent() as agent:
        publisher = AsyncMqttClient(*mqtt_broker)
        await publisher.connect()
        try:
            topic = mqtt_topic(MQTT_IMAGE, site=site, device="cam-9")
            await publisher.publish(topic, b"these bytes are no picture", qos=1)
            await eventually(
                lambda: agent.app.state.metrics.pictures.labels(outcome="rejected")._value.get() == 1,
                what="the rejection",
                timeout_s=10,
            )
        finally:
            await publisher.close()
        rejected = (await agent.http.get("/v1/rejected")).json()
        summary = await DeviceSimulator(device(site, mqtt_broker, catdog_captures_dir, count=1, timeout_s=30)).run()
    assert [(row["device_id"], "not a JPEG or PNG" in row["reason"]) for row in rejected] == [("cam-9", True)]
    assert summary.results == 1


async def test_a_restart_answers_what_was_acknowledged_before_it(
    start_agent: AgentFactory,
    site: str,
    mqtt_broker: tuple[str, int],
    catdog_captures_dir: Path,
    node_group_server: RunningServer,
) -> None:
    """Pictures acknowledged while the node group's model server was away are answered after a restart."""
    results: list[dict[str, Any]] = []
    listener = AsyncMqttClient(*mqtt_broker, on_message=lambda topic, payload: results.append(json.loads(payload)))
    await listener.connect()
    await listener.subscribe(mqtt_topic(MQTT_RESULT, site=site, device="+"))
    photos = [(catdog_captures_dir / name).read_bytes() for name in sorted(os.listdir(catdog_captures_dir))[:4]]
    try:
        async with start_agent(model_server_url=f"http://127.0.0.1:{free_port()}") as agent:  # nothing there
            publisher = AsyncMqttClient(*mqtt_broker)
            await publisher.connect()
            for photo in photos:
                await publisher.publish(mqtt_topic(MQTT_IMAGE, site=site, device="cam-1"), photo, qos=1)
            await publisher.close()

            async def accepted_unanswered() -> bool:
                return (await agent.status())["uplink"]["unanswered"] == 4

            await eventually(accepted_unanswered, what="the four pictures stored at the edge", timeout_s=10)
            assert results == []
        async with start_agent() as agent:  # back, with the node group's model server
            await eventually(lambda: len(results) == 4, what="the four answers", timeout_s=30)

            async def answers_recorded() -> bool:  # a result is sent before its answer is committed (at least once)
                return (await agent.status())["uplink"]["unanswered"] == 0

            await eventually(answers_recorded, what="the four answers recorded", timeout_s=10)
            status = await agent.status()
    finally:
        await listener.close()
    assert status["uplink"]["unanswered"] == 0 and status["uplink"]["queued_records"] == 4
    assert [r["served_by"] for r in results] == ["edge"] * 4


async def test_hard_examples_get_the_clouds_answer_within_the_budget_and_the_edges_without_it(
    start_agent: AgentFactory,
    site: str,
    mqtt_broker: tuple[str, int],
    catdog_captures_dir: Path,
    node_group_server: RunningServer,
    trained_model_name: str,
    tmp_path: Path,
) -> None:
    gateway = EmbeddedServer(
        "inference-gateway",
        create_gateway_app(
            GatewaySettings(
                model_server_rest_url=node_group_server.rest_url,
                model_name=trained_model_name,
                mqtt_results=False,
                common=CommonSettings(mode="standalone", data_dir=tmp_path / "cloud"),
            )
        ),
        "127.0.0.1",
        free_port(),
    )
    await gateway.start()
    results: list[DeviceResult] = []
    try:
        # Every picture is a hard example for this miner: each is offered to the cloud.
        async with start_agent(cloud_url=gateway.url, hard_example_threshold=1.0, joint_budget_ms=5000) as agent:
            await DeviceSimulator(
                device(site, mqtt_broker, catdog_captures_dir, count=4, timeout_s=30), on_result=results.append
            ).run()
            cloud_served = {r.payload["served_by"] for r in results}
            joint = agent.app.state.metrics.joint
            assert joint.labels(outcome="cloud")._value.get() == 4
        await gateway.stop()
        results.clear()
        async with start_agent(cloud_url=gateway.url, hard_example_threshold=1.0, joint_budget_ms=5000) as agent:
            await DeviceSimulator(
                device(site, mqtt_broker, catdog_captures_dir, count=4, timeout_s=30), on_result=results.append
            ).run()
            assert agent.app.state.metrics.joint.labels(outcome="cloud_error")._value.get() == 4
    finally:
        await gateway.stop()
    assert cloud_served == {"cloud"}
    assert {r.payload["served_by"] for r in results} == {"edge"}
    assert all(r.payload["hard_example"] for r in results)


async def test_a_slow_cloud_costs_the_device_no_more_than_the_budget(
    start_agent: AgentFactory, site: str, mqtt_broker: tuple[str, int], catdog_captures_dir: Path
) -> None:
    """A cloud that accepts the connection and never answers: each hard example waits the budget, then the edge
    answers."""
    hung: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)

    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    results: list[DeviceResult] = []
    try:
        async with start_agent(
            cloud_url=f"http://127.0.0.1:{port}", hard_example_threshold=1.0, joint_budget_ms=200
        ) as agent:
            await DeviceSimulator(
                device(site, mqtt_broker, catdog_captures_dir, count=3, timeout_s=30), on_result=results.append
            ).run()
            timeouts = agent.app.state.metrics.joint.labels(outcome="timeout")._value.get()
    finally:
        silent.close()
        for writer in hung:
            writer.close()
    assert timeouts == 3
    assert {r.payload["served_by"] for r in results} == {"edge"}
    assert all(200 <= r.payload["latency_ms"] < 2000 for r in results), [r.payload["latency_ms"] for r in results]


async def test_at_the_queues_bound_devices_keep_their_answers_and_what_is_let_go_is_counted(
    start_agent: AgentFactory, site: str, mqtt_broker: tuple[str, int], catdog_captures_dir: Path
) -> None:
    """No cloud for a long while: the uplink queue stays within its bound, keeping the newest; the drops counted."""
    async with start_agent(uplink_max_records=3, hard_example_miner="none") as agent:
        summary = await DeviceSimulator(device(site, mqtt_broker, catdog_captures_dir, rate=20.0, timeout_s=30)).run()

        dropped = agent.app.state.metrics.uplink_dropped.labels(what="record")
        # (the last result goes out before its answer is recorded and the bound enforced)
        await eventually(lambda: dropped._value.get() >= 5, what="five records let go", timeout_s=10)
        status = await agent.status()
        scraped = (await agent.http.get("/metrics")).text
    assert (summary.sent, summary.results) == (8, 8), summary.describe()
    assert status["uplink"]["queued_records"] == 3 and status["uplink"]["unanswered"] == 0
    assert dropped._value.get() == 5
    assert 'edgeloop_edge_uplink_dropped_total{what="record"} 5.0' in scraped
