"""The gateway follows the deployer: DeploymentUpdated moves the route of the site named like the node group."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest
from edgeloop_common.bus import EventContext, PermanentError
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import DeadLetter, DeploymentPhase, DeploymentUpdated
from edgeloop_common.serving import ModelRoute, RouteConfigError
from edgeloop_inference_gateway.app import create_app
from edgeloop_inference_gateway.handlers import GatewayHandlers
from edgeloop_inference_gateway.routing import ModelRouter
from edgeloop_inference_gateway.service import BatchingConfig, InferenceService
from edgeloop_inference_gateway.settings import Settings
from fastapi import FastAPI
from gateway_fakes import FakeModelClient, FakeResults, jpeg_bytes

CONTEXT = EventContext(
    event_id="e-1", event_type=DeploymentUpdated.event_type, source="deployer", time=datetime.now(UTC), topic="t"
)


def update(
    phase: DeploymentPhase, actual: int | None, *, group: str = "site-a", model: str = "catdog", desired: int | None = 0
) -> DeploymentUpdated:
    return DeploymentUpdated(
        model_name=model,
        node_group=group,
        desired_version=actual if desired == 0 else desired,
        actual_version=actual,
        phase=phase,
        reason="test",
    )


@pytest.fixture
def router() -> ModelRouter:
    return ModelRouter(ModelRoute("catdog"), {"site-b": ModelRoute("catdog", version=1)})


def test_ready_routes_the_site_of_the_group_to_the_actual_version(router: ModelRouter) -> None:
    follow = router.follow_deployment

    follow(update("pending", None, desired=3))
    follow(update("progressing", None, desired=3))
    assert router.route_for("site-a") == ModelRoute("catdog")  # nothing changes before the version is ready

    follow(update("ready", 3))
    assert router.route_for("site-a") == ModelRoute("catdog", version=3)
    assert router.route_for("site-b") == ModelRoute("catdog", version=1)  # another group, untouched


def test_a_rolled_back_or_failed_rollout_keeps_the_version_that_serves(router: ModelRouter) -> None:
    follow = router.follow_deployment
    follow(update("ready", 3))

    follow(update("rolled_back", 3, desired=4))
    assert router.route_for("site-a") == ModelRoute("catdog", version=3)
    follow(update("failed", None, desired=5))  # failed with nothing serving: the route stays
    assert router.route_for("site-a") == ModelRoute("catdog", version=3)


def test_deleted_sends_the_site_back_to_the_default_route_only_for_that_model(router: ModelRouter) -> None:
    follow = router.follow_deployment

    follow(update("deleted", None, group="site-b", model="another-model"))
    assert router.route_for("site-b") == ModelRoute("catdog", version=1)
    follow(update("deleted", None, group="site-b"))
    assert router.route_for("site-b") == ModelRoute("catdog")


async def test_a_group_that_cannot_be_a_site_is_a_permanent_error(router: ModelRouter) -> None:
    with pytest.raises(RouteConfigError, match="invalid site id 'site a'"):
        router.follow_deployment(update("ready", 2, group="site a"))

    service = InferenceService(
        model_client=FakeModelClient(), router=router, blob_fetcher=None, batching=BatchingConfig()
    )
    handlers = GatewayHandlers(service, InProcessBus(), results=None)
    with pytest.raises(PermanentError, match="cannot route site 'site a' to catdog:2") as raised:
        await handlers.on_deployment_updated(update("ready", 2, group="site a"), CONTEXT)
    assert isinstance(raised.value.__cause__, RouteConfigError)  # the dead letter names it
    await service.close()


# --- through the app: what a device of the site gets back -------------------------------------------------------


@dataclass
class Gateway:
    app: FastAPI
    http: httpx.AsyncClient
    bus: InProcessBus


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    bus = InProcessBus(source="deployer")
    settings = Settings(model_name="catdog", max_wait_ms=1.0, model_server_rest_url="http://127.0.0.1:9")
    app = create_app(settings, bus=bus, model_client=FakeModelClient(version=1), results=FakeResults())
    async with app.router.lifespan_context(app):
        await bus.start()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
            yield Gateway(app, http, bus)
        await bus.stop()


async def classify(gateway: Gateway, site: str) -> tuple[str, int]:
    response = await gateway.http.post(
        "/v1/classify", content=jpeg_bytes(), headers={"content-type": "image/jpeg"}, params={"site": site}
    )
    assert response.status_code == 200, response.text
    return response.json()["model_name"], response.json()["model_version"]


async def test_the_gateway_serves_the_site_with_the_version_the_deployer_reports_ready(gateway: Gateway) -> None:
    assert await classify(gateway, "site-a") == ("catdog", 1)  # the default route: the latest version

    await gateway.bus.publish(update("ready", 4))
    await gateway.bus.drain()

    assert await classify(gateway, "site-a") == ("catdog", 4)
    assert await classify(gateway, "site-b") == ("catdog", 1)
    routes = (await gateway.http.get("/v1/routes")).json()
    assert routes == {"default": "catdog", "sites": {"site-a": "catdog:4"}, "caught_up": True}


async def test_a_bad_update_is_dead_lettered_with_the_reason(gateway: Gateway) -> None:
    await gateway.bus.publish(update("ready", 2, group="site a"))
    await gateway.bus.drain()

    [dead] = [event for event in gateway.bus.events_of(DeadLetter) if isinstance(event, DeadLetter)]
    assert dead.reason.startswith("inference-gateway-routes: cannot route site 'site a' to catdog:2")
    assert dead.error_type == "RouteConfigError"
