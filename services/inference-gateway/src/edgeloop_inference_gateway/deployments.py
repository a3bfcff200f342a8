"""The gateway follows the deployer: ``DeploymentUpdated`` in -> the route of the site named like the node group.

A KubeEdge node group serves the devices of the site of the same name (docs/learning-loop.md), so:

* ``ready``: the group now serves ``model_name:actual_version`` -> route the site there;
* ``rolled_back`` (and ``failed`` with an actual version): the version the group still serves -> route there
  (it normally already is: the failed version never became ready);
* ``deleted``: the group serves the model no more -> the site goes back to the default route, if it was
  routed to that model;
* ``pending`` / ``progressing``: nothing changes until the new version is ready.
"""

from __future__ import annotations

import logging

from edgeloop_common.bus import EventContext, PermanentError
from edgeloop_common.events import DeploymentUpdated

from edgeloop_inference_gateway.routing import ModelRoute, ModelRouter, RouteConfigError

log = logging.getLogger(__name__)

ROUTES_CONSUMER_GROUP = "inference-gateway-routes"


class DeploymentRouteFollower:
    def __init__(self, router: ModelRouter) -> None:
        self.router = router

    async def __call__(self, event: DeploymentUpdated, context: EventContext) -> None:
        site = event.node_group
        try:
            if event.phase == "deleted":
                self._forget(site, event.model_name)
            elif event.phase in ("ready", "rolled_back", "failed") and event.actual_version is not None:
                self._route(site, ModelRoute(event.model_name, version=event.actual_version), event)
        except RouteConfigError as exc:
            raise PermanentError(
                f"cannot route site {site!r} to {event.model_name}:{event.actual_version}: {exc}"
            ) from exc

    def _route(self, site: str, route: ModelRoute, event: DeploymentUpdated) -> None:
        if self.router.site_routes().get(site) == route:
            return
        self.router.set_route(site, route)
        log.info("site %s now served by %s (deployment %s: %s)", site, route, event.phase, event.reason)

    def _forget(self, site: str, model_name: str) -> None:
        current = self.router.site_routes().get(site)
        if current is not None and current.model_name == model_name:
            self.router.remove_route(site)
            log.info("site %s back on the default route %s (%s deleted there)", site, self.router.default, model_name)
