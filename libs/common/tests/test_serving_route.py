"""ModelRoute: which model and version to ask, parsed from ``model``, ``model:3`` or ``model:stable``."""

from __future__ import annotations

import pytest
from edgeloop_common.serving import ModelRoute, RouteConfigError


@pytest.mark.parametrize(
    ("spec", "route"),
    [
        ("catdog", ModelRoute("catdog")),
        (" catdog:3 ", ModelRoute("catdog", version=3)),
        ("catdog:stable", ModelRoute("catdog", label="stable")),
        ("edgeloop-classifier:canary.2", ModelRoute("edgeloop-classifier", label="canary.2")),
    ],
)
def test_a_route_is_a_model_with_a_version_a_label_or_neither(spec: str, route: ModelRoute) -> None:
    assert ModelRoute.parse(spec) == route
    assert ModelRoute.parse(str(route)) == route  # str() gives back the spec
    assert ModelRoute.of(*spec.strip().split(":", 1)) == route


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: ModelRoute.parse("bad name"), "invalid model name 'bad name'"),
        (lambda: ModelRoute.parse(":3"), "invalid model name ''"),
        (lambda: ModelRoute.parse("m:1:2"), "invalid version label '1:2'"),
        (lambda: ModelRoute("m", version=-1), "invalid version -1"),
        (lambda: ModelRoute("m", version=1, label="stable"), "a version or a label, not both"),
    ],
)
def test_a_route_that_cannot_be_understood_is_refused_with_the_reason(make: object, reason: str) -> None:
    with pytest.raises(RouteConfigError, match=reason):
        make()  # type: ignore[operator]
    assert issubclass(RouteConfigError, ValueError)
