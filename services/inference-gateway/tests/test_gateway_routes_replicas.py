"""Several gateway replicas on the real Kafka: each serves the version the deployer reports, a restarted one too.

The routes follow DeploymentUpdated through a broadcast subscription: every replica reads every update, and a
replica that starts later rebuilds the routes from the compacted topic before it says ready.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.events import DeploymentPhase, DeploymentUpdated
from edgeloop_common.settings import CommonSettings
from edgeloop_inference_gateway.app import create_app
from edgeloop_inference_gateway.settings import Settings
from gateway_fakes import FakeModelClient, FakeResults, jpeg_bytes

from tests.helpers import eventually

pytestmark = pytest.mark.kafka


@dataclass
class Replica:
    http: httpx.AsyncClient
    bus: KafkaBus

    async def classify(self, site: str) -> int:
        response = await self.http.post(
            "/v1/classify", content=jpeg_bytes(), headers={"content-type": "image/jpeg"}, params={"site": site}
        )
        assert response.status_code == 200, response.text
        version: int = response.json()["model_version"]
        return version

    async def routes(self) -> dict[str, Any]:
        routes: dict[str, Any] = (await self.http.get("/v1/routes")).json()
        return routes


@asynccontextmanager
async def replica(bootstrap: str, prefix: str) -> AsyncIterator[Replica]:
    """One gateway process: its own app and its own Kafka bus, as a replica of the Helm chart's Deployment."""
    settings = Settings(
        common=CommonSettings(mode="distributed", kafka_bootstrap_servers=bootstrap, topic_prefix=prefix),
        model_name="catdog",
        site_routes="site-c=catdog:1",
        mqtt_results=False,
        max_wait_ms=1.0,
        model_server_rest_url="http://127.0.0.1:9",
    )
    app = create_app(settings, model_client=FakeModelClient(version=1), results=FakeResults())
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://g") as http:
        yield Replica(http, app.state.bus)


@pytest.fixture
async def deployer(kafka_bootstrap: str, kafka_topics: str) -> AsyncIterator[KafkaBus]:
    bus = KafkaBus(bootstrap_servers=kafka_bootstrap, source="deployer", topic_prefix=kafka_topics)
    await bus.start()
    yield bus
    await bus.stop()


def update(group: str, phase: DeploymentPhase, version: int | None) -> DeploymentUpdated:
    return DeploymentUpdated(
        model_name="catdog", node_group=group, desired_version=version, actual_version=version, phase=phase
    )


async def test_every_replica_serves_the_version_the_deployer_reports_ready(
    kafka_bootstrap: str, kafka_topics: str, deployer: KafkaBus
) -> None:
    async with AsyncExitStack() as stack:
        replicas = [await stack.enter_async_context(replica(kafka_bootstrap, kafka_topics)) for _ in range(3)]
        for each in replicas:
            await each.bus.wait_until_caught_up()
            assert await each.classify("site-a") == 1  # the default route: the model server's latest

        await deployer.publish(update("site-a", "ready", 4))

        for each in replicas:  # with a consumer group, one replica of the three would have moved
            await eventually(
                lambda each=each: _routed(each, "site-a", "catdog:4"), what="site-a on version 4 in every replica"
            )
            assert await each.classify("site-a") == 4


async def test_a_restarted_replica_rebuilds_the_routes_before_it_is_ready(
    kafka_bootstrap: str, kafka_topics: str, deployer: KafkaBus
) -> None:
    history = [
        update("site-a", "ready", 2),
        update("site-b", "ready", 3),
        update("site-a", "pending", None),
        update("site-a", "ready", 5),
        update("site-c", "deleted", None),  # site-c's configured route goes: the model is no more served there
    ]
    expected = {"default": "catdog", "sites": {"site-a": "catdog:5", "site-b": "catdog:3"}, "caught_up": True}
    async with replica(kafka_bootstrap, kafka_topics) as first:  # follows the rollouts, then stops
        await first.bus.wait_until_caught_up()
        for event in history:
            await deployer.publish(event)
        await eventually(lambda: _routes_are(first, expected), what="the first replica followed every rollout")

    async with replica(kafka_bootstrap, kafka_topics) as restarted:
        await restarted.bus.wait_until_caught_up()
        routes = await restarted.routes()
        ready = await restarted.http.get("/readyz")
        assert routes == expected  # replayed before it says caught up: no waiting here
        assert ready.json()["checks"]["routes"] == "ok", ready.text
        assert await restarted.classify("site-a") == 5
        assert await restarted.classify("site-c") == 1

        await deployer.publish(update("site-b", "ready", 6))  # and then it follows
        await eventually(lambda: _routed(restarted, "site-b", "catdog:6"), what="site-b on version 6")


async def _routed(each: Replica, site: str, route: str) -> bool:
    return (await each.routes())["sites"].get(site) == route


async def _routes_are(each: Replica, expected: dict[str, Any]) -> bool:
    return await each.routes() == expected
