"""The edge agent's side of the canary split, on real components: the real deployer (local target, standalone, served
over HTTP) runs a canary at the agent's site on a real lite model server beside the site's own; the agent learns it
by polling the deployer and sends the pictures in the canary's share there (docs/edge.md, "Canary rollouts").

A canary server that fails is answered for by the site's server (counted), a device never notices; without a
deployer, or with one that has no canary or cannot be reached, the agent answers as it always did.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from edge_helpers import AgentFactory, RunningAgent
from edgeloop.device import DeviceResult, DeviceSimulator, SimulatorConfig
from edgeloop.system import EmbeddedServer
from edgeloop_common.events import in_canary_share
from edgeloop_common.settings import CommonSettings
from edgeloop_deployer.app import create_app as create_deployer
from edgeloop_deployer.settings import Settings as DeployerSettings
from edgeloop_model_server.embedded import RunningServer, serve_in_thread

from tests.helpers import eventually, free_port
from tests.model_fixtures import lite_server_settings

pytestmark = [pytest.mark.mqtt, pytest.mark.tf, pytest.mark.slow]

WEIGHT = 0.5
PICTURES = 40


@dataclass
class SiteCanary:
    deployer: EmbeddedServer
    canary_server: RunningServer
    stop_canary_server: Any


@pytest.fixture
def canary_folder(tmp_path: Path, site: str) -> Path:
    folder = tmp_path / "canary" / site  # the canary server's models: what the deployer links there
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def canary_server(canary_folder: Path, trained_model_name: str) -> Iterator[tuple[RunningServer, Any]]:
    """The site's canary model server (LOCAL_CANARY_SERVERS), empty until the deployer links the candidate in."""
    settings = lite_server_settings(
        canary_folder, trained_model_name, model_version_policy="latest:1", poll_interval_s=0.2, warmup=False
    )
    context = serve_in_thread(settings)
    server = context.__enter__()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            context.__exit__(None, None, None)

    yield server, stop
    stop()


@pytest.fixture
async def site_canary(
    canary_server: tuple[RunningServer, Any],
    node_group_server: RunningServer,
    trained_model_base: Path,
    trained_model_name: str,
    tmp_path: Path,
    site: str,
) -> AsyncIterator[SiteCanary]:
    """The real deployer with version 1 on the site and version 2 (the same model: it answers) as the site's canary,
    watched for longer than the test, taking WEIGHT of the site's samples."""
    model_base = tmp_path / "registry-models"
    shutil.copytree(trained_model_base / trained_model_name / "1", model_base / trained_model_name / "1")
    shutil.copytree(trained_model_base / trained_model_name / "1", model_base / trained_model_name / "2")
    server, stop_server = canary_server
    deployer = EmbeddedServer(
        "deployer",
        create_deployer(
            DeployerSettings(
                common=CommonSettings(mode="standalone", data_dir=tmp_path / "deployer"),
                target="local",
                node_groups=site,
                local_node_group_servers=f"{site}={node_group_server.rest_url}",
                local_canary_servers=f"{site}={server.rest_url}",
                local_models_root=tmp_path / "node-groups",
                local_canary_models_root=tmp_path / "canary",
                local_model_base=model_base,
                rollout_timeout_s=60,
                poll_interval_s=0.1,
                canary_weight=WEIGHT,
                canary_window_s=600,  # no answer reaches this deployer (no ingest here): it stays watching
                canary_settle_s=0,
            )
        ),
        "127.0.0.1",
        free_port(),
    )
    await deployer.start()
    try:
        async with httpx.AsyncClient(base_url=deployer.url) as http:

            async def deploy(version: int) -> None:
                body = {"model_name": trained_model_name, "version": version, "node_group": site}
                assert (await http.post("/v1/deployments", json=body)).status_code == 202, version

            async def serving_1() -> bool:
                response = await http.get(f"/v1/deployments/{trained_model_name}/{site}")
                return response.status_code == 200 and response.json()["actual_version"] == 1

            await deploy(1)  # nothing serves yet: at once
            await eventually(serving_1, what="version 1 serving the site", timeout_s=60)
            await deploy(2)  # over version 1: a canary first

            async def watching() -> bool:
                response = await http.get(f"/v1/deployments/{trained_model_name}/{site}/canary")
                return response.status_code == 200 and response.json()["status"] == "watching"

            await eventually(watching, what="the canary of version 2 watching", timeout_s=60)
        yield SiteCanary(deployer, server, stop_server)
    finally:
        await deployer.stop()


def device(site: str, mqtt_broker: tuple[str, int], images: Path, count: int) -> SimulatorConfig:
    return SimulatorConfig(
        images, site, "cam-1", mqtt_host=mqtt_broker[0], mqtt_port=mqtt_broker[1], count=count, loop=True, rate=40.0
    )


async def knows_the_canary(agent: RunningAgent) -> None:
    async def known() -> bool:
        return (await agent.status())["canary"]["version"] == 2

    await eventually(known, what="the agent knowing the canary", timeout_s=10)


def canary_counts(agent: RunningAgent) -> tuple[float, float]:
    samples = agent.app.state.metrics.canary_samples
    return samples.labels(outcome="canary")._value.get(), samples.labels(outcome="canary_fallback")._value.get()


async def test_the_canarys_share_of_the_sites_pictures_is_answered_by_the_canary(
    start_agent: AgentFactory,
    site_canary: SiteCanary,
    site: str,
    mqtt_broker: tuple[str, int],
    catdog_captures_dir: Path,
) -> None:
    results: list[DeviceResult] = []
    async with start_agent(deployer_url=site_canary.deployer.url, canary_poll_s=0.2) as agent:
        await knows_the_canary(agent)
        status = (await agent.status())["canary"]
        summary = await DeviceSimulator(
            device(site, mqtt_broker, catdog_captures_dir, PICTURES), on_result=results.append
        ).run()
        counts = canary_counts(agent)

        async def all_recorded() -> bool:  # a result is sent before its answer is committed (at least once)
            return (await agent.status())["uplink"]["unanswered"] == 0

        await eventually(all_recorded, what="the answers recorded", timeout_s=10)
        queued = await asyncio.to_thread(agent.app.state.edge.store.next_to_forward, 100)
        uplinked = {p.record_id: p.inference.model_version for p in queued if p.inference is not None}
        await site_canary.deployer.stop()  # the deployer away: the agent keeps the split it learned
        await eventually(
            lambda: agent.app.state.metrics.deployer_failures._value.get() >= 1, what="a poll failing", timeout_s=5
        )
        still = (await agent.status())["canary"]

    assert (summary.sent, summary.results, summary.missing) == (PICTURES, PICTURES, 0), summary.describe()
    assert status == {
        "deployer_url": site_canary.deployer.url,
        "version": 2,
        "weight": WEIGHT,
        "endpoint": site_canary.canary_server.rest_url,
        "last_error": "",
    }
    # Each picture went where in_canary_share sends it (as the gateway and the deployer compute it), and the answer
    # names the version that gave it.
    answered = {r.payload["sample_id"]: r.model_version for r in results}
    in_share = [sample for sample in answered if in_canary_share(sample, WEIGHT)]
    assert {sample: 2 if sample in in_share else 1 for sample in answered} == answered
    assert uplinked == answered  # what the uplink sends the cloud (ingest, the deployer) says the same
    assert 0.25 <= len(in_share) / PICTURES <= 0.75, len(in_share)  # about WEIGHT of them
    assert counts == (len(in_share), 0)
    assert {r.payload["served_by"] for r in results} == {"edge"}
    assert (still["version"], still["last_error"].startswith("deployer unreachable")) == (2, True)


async def test_a_failing_canary_is_answered_for_by_the_sites_server_and_counted(
    start_agent: AgentFactory,
    site_canary: SiteCanary,
    site: str,
    mqtt_broker: tuple[str, int],
    catdog_captures_dir: Path,
) -> None:
    results: list[DeviceResult] = []
    async with start_agent(deployer_url=site_canary.deployer.url, canary_poll_s=0.2) as agent:
        await knows_the_canary(agent)
        site_canary.stop_canary_server()  # the deployer still says it is watching: the agent's calls fail
        summary = await DeviceSimulator(
            device(site, mqtt_broker, catdog_captures_dir, 16), on_result=results.append
        ).run()
        counts = canary_counts(agent)
        scraped = (await agent.http.get("/metrics")).text

    assert (summary.sent, summary.results, summary.missing) == (16, 16, 0), summary.describe()
    assert {r.model_version for r in results} == {1}  # the stable version answered the canary's share too
    in_share = [r for r in results if in_canary_share(r.payload["sample_id"], WEIGHT)]
    assert in_share and counts == (0, len(in_share))
    assert f'edgeloop_edge_canary_samples_total{{outcome="canary_fallback"}} {len(in_share)}.0' in scraped


@pytest.mark.parametrize("deployer", ["none", "no canary (404)", "unreachable"])
async def test_without_a_canary_from_the_deployer_the_site_is_answered_as_before(
    deployer: str,
    start_agent: AgentFactory,
    site: str,
    mqtt_broker: tuple[str, int],
    catdog_captures_dir: Path,
    tmp_path: Path,
) -> None:
    results: list[DeviceResult] = []
    server = None
    url = {"none": "", "unreachable": f"http://127.0.0.1:{free_port()}"}.get(deployer, "")
    if deployer == "no canary (404)":  # a real deployer of the site: nothing deployed, no canary ever ran
        settings = DeployerSettings(common=CommonSettings(mode="standalone", data_dir=tmp_path / "d"), node_groups=site)
        server = EmbeddedServer("deployer", create_deployer(settings), "127.0.0.1", free_port())
        await server.start()
        url = server.url
    try:
        async with start_agent(deployer_url=url, canary_poll_s=0.2) as agent:
            await eventually(
                lambda: agent.app.state.metrics.deployer_failures._value.get() >= (deployer == "unreachable"),
                what="a poll",
                timeout_s=5,
            )
            summary = await DeviceSimulator(
                device(site, mqtt_broker, catdog_captures_dir, 8), on_result=results.append
            ).run()
            status = (await agent.status())["canary"]
            counts = canary_counts(agent)
            failures = agent.app.state.metrics.deployer_failures._value.get()
    finally:
        if server is not None:
            await server.stop()

    assert (summary.sent, summary.results, summary.missing) == (8, 8, 0), summary.describe()
    assert {(r.payload["served_by"], r.model_version) for r in results} == {("edge", 1)}
    assert counts == (0, 0) and (status["version"], status["weight"]) == (None, 0.0)
    assert (failures > 0) == (deployer == "unreachable")
    if deployer == "none":
        assert status["deployer_url"] is None
