"""The registry's HTTP API in standalone mode (SQLite, in-process bus): what a client sees, errors included."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.events import ModelPromoted, ModelRegistered
from edgeloop_common.settings import CommonSettings
from edgeloop_registry import api
from edgeloop_registry.app import create_app
from edgeloop_registry.settings import Settings
from fastapi import FastAPI
from fastapi.routing import APIRoute
from registry_testing import version_body, wait_for


@pytest.fixture
async def bus() -> AsyncIterator[InProcessBus]:
    bus = InProcessBus(source="registry")
    await bus.start()
    yield bus
    await bus.stop()


def registry_app(tmp_path: Path, bus: InProcessBus, margin: float = 0.0) -> FastAPI:
    settings = Settings(
        promotion_margin=margin,
        common=CommonSettings(mode="standalone", data_dir=tmp_path),
    )
    return create_app(settings, bus=bus)


@pytest.fixture
async def client(tmp_path: Path, bus: InProcessBus) -> AsyncIterator[httpx.AsyncClient]:
    app = registry_app(tmp_path, bus)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry") as http,
    ):
        yield http


async def register(client: httpx.AsyncClient, accuracy: float | None, **kwargs: Any) -> dict[str, Any]:
    response = await client.post("/v1/models/classifier/versions", json=version_body(accuracy, **kwargs))
    assert response.status_code == 201, response.text
    return response.json()


async def promote(client: httpx.AsyncClient, version: int, **extra: Any) -> httpx.Response:
    body = {"version": version, "reason": "evaluated", "actor": "trainer", **extra}
    return await client.post("/v1/models/classifier/promotions", json=body)


# -- models ---------------------------------------------------------------------------------------------------------


async def test_create_get_and_list_models(client: httpx.AsyncClient) -> None:
    created = await client.post("/v1/models", json={"name": "classifier", "description": "cats and dogs"})
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/v1/models/classifier"
    assert created.json()["description"] == "cats and dogs"
    assert created.json()["latest_version"] is None and created.json()["production_version"] is None

    again = await client.post("/v1/models", json={"name": "classifier"})
    assert again.status_code == 409
    assert "already exists" in again.json()["detail"]

    assert (await client.get("/v1/models/classifier")).json()["name"] == "classifier"
    assert [model["name"] for model in (await client.get("/v1/models")).json()] == ["classifier"]


async def test_unknown_model_and_version_are_404_with_a_reason(client: httpx.AsyncClient) -> None:
    for path in ("/v1/models/nope", "/v1/models/nope/versions", "/v1/models/nope/aliases"):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert "'nope' does not exist" in response.json()["detail"]
    await register(client, 0.7)
    missing = await client.get("/v1/models/classifier/versions/9")
    assert missing.status_code == 404 and "no version 9" in missing.json()["detail"]
    assert (await promote(client, 9)).status_code == 404


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/models", {"name": "has space"}),
        ("/v1/models", {"name": "ok", "unexpected": 1}),
        ("/v1/models/classifier/versions", {"artifact_uri": ""}),
        ("/v1/models/classifier/versions", {"artifact_uri": "file:///m/1", "metrics": {"accuracy": 1.5}}),
        ("/v1/models/classifier/versions", {"artifact_uri": "file:///m/1", "version": 0}),
        ("/v1/models/classifier/versions", {"artifact_uri": "file:///m/1", "metrics": {"train_counts": {"cat": -1}}}),
        ("/v1/models/bad%20name/versions", {"artifact_uri": "file:///m/1"}),
        ("/v1/models/classifier/versions", {"artifact_uri": "file:///m/1", "metrics": {"loss": float("nan")}}),
        (
            "/v1/models/classifier/versions",
            {"artifact_uri": "file:///m/1", "reference_stats": {"x": [1.0, float("inf")]}},
        ),
        ("/v1/models/classifier/promotions", {"version": 1, "actor": "me"}),
        ("/v1/models/classifier/promotions", {"version": 1, "reason": "", "actor": "me"}),
        ("/v1/models/classifier/rollback", {"reason": "r", "actor": "me", "node_group": "a/b"}),
    ],
)
async def test_bad_requests_are_422_with_the_reason(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> None:
    # Python's encoder writes NaN and Infinity as bare tokens, as a careless client would.
    response = await client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["msg"]


# -- versions -------------------------------------------------------------------------------------------------------


async def test_versions_are_numbered_and_keep_metrics_lineage_and_reference_stats(
    client: httpx.AsyncClient, bus: InProcessBus
) -> None:
    first = await register(client, 0.7)
    second = await register(client, 0.8)
    assert (first["version"], second["version"]) == (1, 2)
    assert first["status"] == "ready"
    assert first["metrics"]["train_counts"] == {"cat": 160, "dog": 170}
    assert first["metrics"]["per_class"]["cat"]["f1"] == 0.75
    assert first["lineage"]["dataset_snapshot_id"] == "snap-0123456789abcdef"
    assert first["train_started_at"] == "2026-01-02T03:04:05Z" and first["train_duration_s"] == 31.5

    explicit = await client.post("/v1/models/classifier/versions", json=version_body(0.9, version=7))
    assert explicit.status_code == 201 and explicit.json()["version"] == 7
    assert explicit.headers["location"] == "/v1/models/classifier/versions/7"
    taken = await client.post("/v1/models/classifier/versions", json=version_body(0.9, version=2))
    assert taken.status_code == 409 and "version 2" in taken.json()["detail"]
    assert (await register(client, 0.6))["version"] == 8

    one = (await client.get("/v1/models/classifier/versions/1")).json()
    assert one["reference_stats"]["features"]["confidence"] == [0.9, 0.8]
    listed = (await client.get("/v1/models/classifier/versions")).json()
    assert [v["version"] for v in listed] == [1, 2, 7, 8]
    assert "reference_stats" not in listed[0]
    assert (await client.get("/v1/models/classifier")).json()["latest_version"] == 8

    await wait_for(lambda: len(bus.events_of(ModelRegistered)) == 4, what="four ModelRegistered")
    registered = bus.events_of(ModelRegistered)
    assert [event.version for event in registered] == [1, 2, 7, 8]  # type: ignore[attr-defined]
    assert registered[0].dataset_snapshot_id == "snap-0123456789abcdef"  # type: ignore[attr-defined]


async def test_status_changes_and_the_version_production_uses_cannot_be_archived(client: httpx.AsyncClient) -> None:
    await register(client, 0.7)
    await register(client, 0.8)
    assert (await promote(client, 1)).json()["promoted"]

    refused = await client.patch("/v1/models/classifier/versions/1", json={"status": "archived"})
    assert refused.status_code == 409 and "production" in refused.json()["detail"]
    archived = await client.patch("/v1/models/classifier/versions/2", json={"status": "archived"})
    assert archived.status_code == 200 and archived.json()["status"] == "archived"
    bad = await client.patch("/v1/models/classifier/versions/2", json={"status": "registering"})
    assert bad.status_code == 409 and "archived" in bad.json()["detail"]
    assert (await client.patch("/v1/models/classifier/versions/2", json={"status": "nonsense"})).status_code == 422

    assert [v["version"] for v in (await client.get("/v1/models/classifier/versions?status=archived")).json()] == [2]
    not_ready = await promote(client, 2, force=True)
    assert not_ready.status_code == 409 and "not ready" in not_ready.json()["detail"]


# -- promotion, aliases, rollback -----------------------------------------------------------------------------------


async def test_promotion_policy_through_the_api(client: httpx.AsyncClient, bus: InProcessBus) -> None:
    await register(client, 0.70)
    await register(client, 0.80)
    await register(client, 0.75)  # worse than 2
    await register(client, 0.99, evaluation_set_id="evalset-other")

    first = (await promote(client, 1)).json()
    assert first["promoted"] and first["previous_version"] is None
    better = (await promote(client, 2)).json()
    assert better["promoted"] and better["previous_version"] == 1
    worse = (await promote(client, 3)).json()
    assert not worse["promoted"] and worse["previous_version"] == 2
    assert "0.7500" in worse["decision"] and "0.8000" in worse["decision"]
    other_set = (await promote(client, 4)).json()
    assert not other_set["promoted"] and "same evaluation set" in other_set["decision"]
    same = (await promote(client, 2)).json()
    assert not same["promoted"] and "already production" in same["decision"]
    forced = (await promote(client, 3, force=True, actor="alice")).json()
    assert forced["promoted"] and "forced by alice" in forced["decision"]

    assert (await client.get("/v1/models/classifier")).json()["production_version"] == 3
    await wait_for(lambda: len(bus.events_of(ModelPromoted)) == 3, what="three ModelPromoted")
    promoted = bus.events_of(ModelPromoted)
    assert [(e.version, e.previous_version) for e in promoted] == [(1, None), (2, 1), (3, 2)]  # type: ignore[attr-defined]
    assert promoted[2].promoted_by == "alice" and promoted[2].alias == "production"  # type: ignore[attr-defined]


async def test_a_failure_model_is_promoted_on_pr_auc(client: httpx.AsyncClient) -> None:
    async def failure_model(pr_auc: float, accuracy: float) -> int:
        body = version_body(accuracy, model="machine-failure")
        body["metrics"].update({"policy_metric": "pr_auc", "pr_auc": pr_auc, "precision": 0.7, "recall": 0.8})
        body["signature"] = {"kind": "tabular", "inputs": {"features": "DT_FLOAT"}}
        response = await client.post("/v1/models/machine-failure/versions", json=body)
        assert response.status_code == 201, response.text
        return int(response.json()["version"])

    async def promote_failure_model(number: int) -> dict[str, Any]:
        body = {"version": number, "reason": "evaluated", "actor": "trainer"}
        response = await client.post("/v1/models/machine-failure/promotions", json=body)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    first = await failure_model(0.60, accuracy=0.90)
    higher_accuracy_lower_pr_auc = await failure_model(0.55, accuracy=0.99)
    better = await failure_model(0.72, accuracy=0.80)
    assert (await promote_failure_model(first))["promoted"]
    refused = await promote_failure_model(higher_accuracy_lower_pr_auc)
    assert not refused["promoted"] and "pr_auc 0.5500" in refused["decision"]
    assert (await promote_failure_model(better))["promoted"]
    assert (await client.get("/v1/models/machine-failure")).json()["production_version"] == better
    # A retraining on new data: another evaluation set, production measured on it by the trainer (pr_auc only).
    body = version_body(None, model="machine-failure", evaluation_set_id="evalset-after-drift")
    body["metrics"].update({"policy_metric": "pr_auc", "pr_auc": 0.66, "baseline": {"version": better, "pr_auc": 0.41}})
    response = await client.post("/v1/models/machine-failure/versions", json=body)
    assert response.status_code == 201, response.text
    retrained = await promote_failure_model(response.json()["version"])
    assert retrained["promoted"] and "0.4100" in retrained["decision"]


async def test_margin_from_settings(tmp_path: Path, bus: InProcessBus) -> None:
    app = registry_app(tmp_path, bus, margin=0.05)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry") as client,
    ):
        for accuracy in (0.70, 0.74, 0.75):
            await register(client, accuracy)
        await promote(client, 1)
        assert not (await promote(client, 2)).json()["promoted"]
        assert (await promote(client, 3)).json()["promoted"]


async def test_aliases_move_atomically_with_history_per_node_group(
    client: httpx.AsyncClient, bus: InProcessBus
) -> None:
    for accuracy in (0.7, 0.8, 0.9):
        await register(client, accuracy)
    moved = await client.put(
        "/v1/models/classifier/aliases/candidate", json={"version": 2, "reason": "fresh", "actor": "trainer"}
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["alias"] == "candidate" and moved.json()["version"] == 2
    await client.put("/v1/models/classifier/aliases/candidate", json={"version": 3, "reason": "fresher", "actor": "t"})
    group = await client.put(
        "/v1/models/classifier/aliases/production",
        json={"version": 1, "node_group": "site-a", "reason": "pin site-a", "actor": "bob"},
    )
    assert group.status_code == 200 and group.json()["node_group"] == "site-a"
    unknown = await client.put(
        "/v1/models/classifier/aliases/candidate", json={"version": 9, "reason": "r", "actor": "a"}
    )
    assert unknown.status_code == 404

    aliases = {(a["alias"], a["node_group"]): a for a in (await client.get("/v1/models/classifier/aliases")).json()}
    assert set(aliases) == {("candidate", None), ("production", "site-a")}
    assert aliases[("production", "site-a")]["moved_by"] == "bob"
    assert aliases[("production", "site-a")]["reason"] == "pin site-a"
    assert aliases[("candidate", None)]["version"] == 3

    history = (await client.get("/v1/models/classifier/aliases/candidate/history")).json()
    assert [(m["from_version"], m["to_version"], m["reason"]) for m in history] == [
        (2, 3, "fresher"),
        (None, 2, "fresh"),
    ]
    assert history[0]["moved_at"] >= history[1]["moved_at"]
    site_a = (await client.get("/v1/models/classifier/aliases/production/history?node_group=site-a")).json()
    assert [(m["to_version"], m["moved_by"], m["kind"]) for m in site_a] == [(1, "bob", "move")]
    assert (await client.get("/v1/models/classifier/aliases/production/history")).json() == []

    # Only production moves are announced, with the node group.
    await wait_for(lambda: len(bus.events_of(ModelPromoted)) == 1, what="ModelPromoted for site-a")
    [event] = bus.events_of(ModelPromoted)
    assert (event.version, event.node_group, event.reason) == (1, "site-a", "pin site-a")  # type: ignore[attr-defined]


async def test_node_group_promotion_is_compared_with_what_the_group_serves(client: httpx.AsyncClient) -> None:
    for accuracy in (0.8, 0.7, 0.9):
        await register(client, accuracy)
    await promote(client, 1)
    worse_for_site = (await promote(client, 2, node_group="site-b")).json()
    assert not worse_for_site["promoted"] and worse_for_site["previous_version"] == 1
    better_for_site = (await promote(client, 3, node_group="site-b")).json()
    assert better_for_site["promoted"] and better_for_site["node_group"] == "site-b"
    assert (await client.get("/v1/models/classifier")).json()["production_version"] == 1  # model-wide unchanged


async def test_rollback_undoes_one_promotion_per_call_and_to_a_chosen_version(
    client: httpx.AsyncClient, bus: InProcessBus
) -> None:
    for accuracy in (0.6, 0.7, 0.8):
        await register(client, accuracy)
    nothing = await client.post("/v1/models/classifier/rollback", json={"reason": "r", "actor": "a"})
    assert nothing.status_code == 409 and "no production version" in nothing.json()["detail"]
    for number in (1, 2, 3):
        assert (await promote(client, number)).json()["promoted"]

    back = await client.post("/v1/models/classifier/rollback", json={"reason": "bad at night", "actor": "carol"})
    assert back.status_code == 200, back.text
    assert (back.json()["version"], back.json()["previous_version"]) == (2, 3)
    again = (await client.post("/v1/models/classifier/rollback", json={"reason": "still bad", "actor": "carol"})).json()
    assert (again["version"], again["previous_version"]) == (1, 2)
    exhausted = await client.post("/v1/models/classifier/rollback", json={"reason": "r", "actor": "a"})
    assert exhausted.status_code == 409 and "no earlier version" in exhausted.json()["detail"]

    chosen = await client.post("/v1/models/classifier/rollback", json={"reason": "r", "actor": "a", "to_version": 3})
    assert chosen.status_code == 200 and chosen.json()["version"] == 3
    same = await client.post("/v1/models/classifier/rollback", json={"reason": "r", "actor": "a", "to_version": 3})
    assert same.status_code == 409
    unknown = await client.post("/v1/models/classifier/rollback", json={"reason": "r", "actor": "a", "to_version": 8})
    assert unknown.status_code == 404

    history = (await client.get("/v1/models/classifier/aliases/production/history")).json()
    assert [(m["kind"], m["from_version"], m["to_version"]) for m in history] == [
        ("rollback", 1, 3),
        ("rollback", 2, 1),
        ("rollback", 3, 2),
        ("promotion", 2, 3),
        ("promotion", 1, 2),
        ("promotion", None, 1),
    ]
    assert history[2]["moved_by"] == "carol" and history[2]["reason"] == "bad at night"
    await wait_for(lambda: len(bus.events_of(ModelPromoted)) == 6, what="six ModelPromoted")
    rolled = bus.events_of(ModelPromoted)[3]
    assert (rolled.version, rolled.previous_version, rolled.reason) == (2, 3, "bad at night")  # type: ignore[attr-defined]


async def test_rollback_of_a_node_group_without_its_own_alias_is_refused(client: httpx.AsyncClient) -> None:
    await register(client, 0.7)
    await promote(client, 1)
    response = await client.post(
        "/v1/models/classifier/rollback", json={"reason": "r", "actor": "a", "node_group": "x"}
    )
    assert response.status_code == 409 and "node group 'x'" in response.json()["detail"]


# -- documentation and health ---------------------------------------------------------------------------------------


# The API of docs/learning-loop.md ("Registry HTTP API") plus the health endpoints every service has.
CONTRACT_ROUTES = {
    ("POST", "/v1/models"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{name}"),
    ("POST", "/v1/models/{name}/versions"),
    ("GET", "/v1/models/{name}/versions"),
    ("GET", "/v1/models/{name}/versions/{version}"),
    ("PATCH", "/v1/models/{name}/versions/{version}"),
    ("GET", "/v1/models/{name}/aliases"),
    ("PUT", "/v1/models/{name}/aliases/{alias}"),
    ("GET", "/v1/models/{name}/aliases/{alias}/history"),
    ("POST", "/v1/models/{name}/promotions"),
    ("POST", "/v1/models/{name}/rollback"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
}


async def test_openapi_lists_every_route_with_its_response_model_and_tag(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    documented = {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}
    assert documented == CONTRACT_ROUTES
    coded = {
        (method, route.path_format)
        for route in api.router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    assert coded <= documented
    for method, path in CONTRACT_ROUTES:
        operation = document["paths"][path][method.lower()]
        assert operation.get("tags"), f"{method} {path} has no tag"
        assert operation.get("summary") or operation.get("description"), f"{method} {path} is undocumented"
        if path.startswith("/v1/"):
            success = next(code for code in operation["responses"] if code.startswith("2"))
            assert "$ref" in str(operation["responses"][success]["content"]), f"{method} {path} has no response model"
            if ("{name}" in path and method != "POST") or path.endswith(("promotions", "rollback")):
                assert "404" in operation["responses"], f"{method} {path} does not document its 404"
    promotion = document["components"]["schemas"]["PromotionOut"]["properties"]
    assert {"promoted", "decision", "previous_version"} <= set(promotion)
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


async def test_health_readiness_and_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "bus": "ok"}
    await register(client, 0.7)
    await promote(client, 1)
    exposition = (await client.get("/metrics")).text
    assert "edgeloop_registry_versions_registered_total" in exposition
    assert 'edgeloop_registry_promotions_total{outcome="promoted"}' in exposition
    assert "edgeloop_registry_outbox_pending" in exposition
