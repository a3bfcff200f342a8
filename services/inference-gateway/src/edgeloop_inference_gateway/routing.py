"""Which model, and which version of it, serves which site.

A route is an ``edgeloop_common.serving.ModelRoute`` (shared with the edge agent).
Routes come from settings, from ``PUT /v1/routes/{site}``, and from the deployer:
:meth:`ModelRouter.follow_deployment` moves a site's route as the deployer's
``DeploymentUpdated`` events report. A KubeEdge node group serves the devices of
the site of the same name (docs/learning-loop.md), so:

* ``ready``: the group now serves ``model_name:actual_version`` -> route the site there;
* ``rolled_back`` (and ``failed`` with an actual version): the version the group still serves -> route there
  (it normally already is: the failed version never became ready);
* ``deleted``: the group serves the model no more -> the site goes back to the default route, if it was
  routed to that model;
* ``pending`` / ``progressing``: nothing changes until the new version is ready;
* ``canary`` with ``canary_status == "watching"``: the canary takes ``canary_weight`` of the site's samples, chosen by
  :func:`edgeloop_common.events.in_canary_share` of the sample id (:meth:`ModelRouter.route_for` with a sample id);
  any other update of that model and group ends the split (docs/deployer.md, "Canary rollouts").
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from edgeloop_common.events import DeploymentUpdated, in_canary_share
from edgeloop_common.serving import ModelRoute, RouteConfigError
from edgeloop_common.topics import ID_PATTERN

log = logging.getLogger(__name__)

_SITE = re.compile(rf"^{ID_PATTERN}$")


def parse_site_routes(text: str) -> dict[str, ModelRoute]:
    """``site-a=model:3,site-b=model:stable`` -> {site: route}; :class:`RouteConfigError` on nonsense."""
    routes: dict[str, ModelRoute] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        site, sep, spec = item.partition("=")
        site = site.strip()
        if not sep or not spec.strip():
            raise RouteConfigError(f"route {item!r} is not 'site=model[:version|label]'")
        if not _SITE.match(site):
            raise RouteConfigError(f"invalid site id {site!r} in route {item!r}")
        if site in routes:
            raise RouteConfigError(f"site {site!r} has two routes")
        routes[site] = ModelRoute.parse(spec)
    return routes


@dataclass(frozen=True)
class CanaryRoute:
    """A canary taking ``weight`` of a site's samples."""

    route: ModelRoute
    weight: float


class ModelRouter:
    """The route of each site, with a default for sites that have none, and the sites' canaries."""

    def __init__(self, default: ModelRoute, site_routes: dict[str, ModelRoute] | None = None) -> None:
        self._default = default
        self._site_routes: dict[str, ModelRoute] = dict(site_routes or {})
        self._canaries: dict[str, CanaryRoute] = {}

    @property
    def default(self) -> ModelRoute:
        return self._default

    def route_for(self, site_id: str | None, *, sample_id: str | None = None) -> ModelRoute:
        """The site's route; with ``sample_id``, the site's canary's when the sample is in its share."""
        if site_id is None:
            return self._default
        route = self._site_routes.get(site_id, self._default)
        canary = self._canaries.get(site_id)
        if (
            sample_id is not None
            and canary is not None
            and canary.route.model_name == route.model_name
            and in_canary_share(sample_id, canary.weight)
        ):
            return canary.route
        return route

    def canaries(self) -> dict[str, CanaryRoute]:
        return dict(self._canaries)

    def set_route(self, site_id: str, route: ModelRoute) -> None:
        """Serve ``site_id`` with ``route`` from the next request on."""
        if not _SITE.match(site_id):
            raise RouteConfigError(f"invalid site id {site_id!r}")
        self._site_routes[site_id] = route

    def remove_route(self, site_id: str) -> None:
        """Serve ``site_id`` with the default route again."""
        self._site_routes.pop(site_id, None)

    def set_default(self, route: ModelRoute) -> None:
        self._default = route

    def site_routes(self) -> dict[str, ModelRoute]:
        return dict(self._site_routes)

    def all_routes(self) -> set[ModelRoute]:
        return {self._default, *self._site_routes.values()}

    def follow_deployment(self, update: DeploymentUpdated) -> None:
        """Route the site named like ``update``'s node group to what the group serves (see the module's doc).
        :class:`RouteConfigError` if the group's name cannot be a site's."""
        site = update.node_group
        self._follow_canary(update)
        if update.phase == "deleted":
            current = self._site_routes.get(site)
            if current is not None and current.model_name == update.model_name:
                self.remove_route(site)
                log.info(
                    "site %s back on the default route %s (%s deleted there)", site, self._default, update.model_name
                )
        elif update.phase in ("ready", "rolled_back", "failed") and update.actual_version is not None:
            route = ModelRoute(update.model_name, version=update.actual_version)
            if self._site_routes.get(site) != route:
                self.set_route(site, route)
                log.info("site %s now served by %s (deployment %s: %s)", site, route, update.phase, update.reason)

    def _follow_canary(self, update: DeploymentUpdated) -> None:
        site = update.node_group
        weight = update.canary_weight or 0.0
        if update.phase == "canary" and update.canary_status == "watching" and update.canary_version and weight > 0:
            if not _SITE.match(site):
                raise RouteConfigError(f"invalid site id {site!r}")
            canary = CanaryRoute(ModelRoute(update.model_name, version=update.canary_version), weight)
            if self._canaries.get(site) != canary:
                self._canaries[site] = canary
                log.info("site %s: canary %s takes %.0f%% of the samples", site, canary.route, weight * 100)
            return
        current = self._canaries.get(site)
        if current is not None and current.route.model_name == update.model_name:
            del self._canaries[site]
            log.info("site %s: canary %s ended (deployment %s: %s)", site, current.route, update.phase, update.reason)
