"""The federated service's logic with fakes: registration body and lineage, the gate asked, failures, the API."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from edgeloop_common.bus import EventContext
from edgeloop_common.events import TrainingRequested
from edgeloop_common.settings import CommonSettings
from edgeloop_federated.handlers import FederatedHandlers
from edgeloop_federated.ports import (
    Baseline,
    FederatedError,
    FederationResult,
    PromotionDecision,
    RegisteredVersion,
    RoundRecord,
    TrainingSpec,
)
from edgeloop_federated.service import FederatedService


class FakeRunner:
    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.calls: list[tuple[TrainingSpec, Baseline | None]] = []
        self.release = asyncio.Event()

    def run(self, training_id: str, spec: TrainingSpec, baseline: Baseline | None, progress: Any) -> FederationResult:
        self.calls.append((spec, baseline))
        if self.fail:
            raise FederatedError(self.fail)
        rounds = []
        for number, sites in enumerate((["site-a", "site-b", "site-c"], ["site-a", "site-b"]), start=1):
            record = RoundRecord(number, datetime.now(UTC), 1.5, sites, {s: 100 + i for i, s in enumerate(sites)})
            record.failures = 3 - len(sites)
            progress("running", f"round {number}", record)
            rounds.append(record)
        return FederationResult(
            weights=[np.zeros(3, np.float32)],
            model_kind=spec.model_kind,
            rounds=rounds,
            metrics={"pr_auc": 0.8, "precision": 0.7, "recall": 0.6, "threshold": 0.4, "positives": 10, "windows": 90},
            evaluation_sites={"site-a": 40, "site-b": 50},
            reference_stats={"kind": "telemetry_features", "features": {}},
            normalisation_windows=300,
            baseline=None if baseline is None else {"version": baseline.version, "pr_auc": 0.7},
        )


class FakeRegistry:
    def __init__(self, production: RegisteredVersion | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.promotions: list[int] = []
        self.current = production

    async def latest_version(self, model_name: str) -> int | None:
        return self.current.version if self.current else None

    async def production(self, model_name: str) -> RegisteredVersion | None:
        return self.current

    async def register(self, model_name: str, body: dict[str, Any]) -> RegisteredVersion:
        self.bodies.append(body)
        return RegisteredVersion(model_name, body["version"], body["artifact_uri"], body["metrics"])

    async def promote(self, model_name: str, version: int, *, reason: str, actor: str) -> PromotionDecision:
        self.promotions.append(version)
        return PromotionDecision(True, "better", None)


class FakeStore:
    def __init__(self, base: Path) -> None:
        self.base = base

    def export(self, model_name: str, version: int, result: FederationResult, metadata: dict[str, Any]) -> Path:
        path = self.base / model_name / str(version)
        path.mkdir(parents=True)
        return path

    def load(self, version: int, artifact_uri: str) -> Baseline | None:
        return Baseline(version, [np.zeros(3, np.float32)], "logistic")


def _service(tmp_path: Path, runner: FakeRunner, registry: FakeRegistry) -> FederatedService:
    return FederatedService(runner=runner, registry=registry, store=FakeStore(tmp_path), defaults=TrainingSpec())


async def _finished(service: FederatedService, training_id: str) -> dict[str, Any]:
    for _ in range(200):
        training = service.get(training_id)
        if training.state in ("succeeded", "failed"):
            return training.as_dict()
        await asyncio.sleep(0.01)
    raise AssertionError(service.get(training_id).as_dict())


async def test_a_training_registers_its_lineage_and_asks_the_gate_with_production_as_baseline(tmp_path: Path) -> None:
    production = RegisteredVersion("machine-failure", 4, (tmp_path / "4").as_uri(), {})
    registry = FakeRegistry(production)
    runner = FakeRunner()
    service = _service(tmp_path, runner, registry)
    training, joined = await service.request(service.spec_for(strategy="fedprox"), reason="drift", requested_by="drift")
    finished = await _finished(service, training.training_id)
    await service.stop()

    assert not joined and finished["state"] == "succeeded", finished
    assert runner.calls[0][1] is not None and runner.calls[0][1].version == 4  # production evaluated beside it
    body = registry.bodies[0]
    assert body["version"] == 5 and body["artifact_uri"].endswith("/machine-failure/5")
    assert body["metrics"]["policy_metric"] == "pr_auc" and body["metrics"]["pr_auc"] == 0.8
    assert body["metrics"]["baseline"] == {"version": 4, "pr_auc": 0.7}
    assert body["signature"]["kind"] == "tabular" and body["reference_stats"]["kind"] == "telemetry_features"
    lineage = body["lineage"]["parameters"]
    assert lineage["strategy"] == "fedprox" and lineage["proximal_mu"] == 0.1 and lineage["reason"] == "drift"
    assert lineage["clients_per_round"] == [3, 2] and lineage["failures_per_round"] == [0, 1]
    assert lineage["samples_per_client"] == {"site-a": 100, "site-b": 101, "site-c": 102}
    assert registry.promotions == [5]
    assert [r["clients"] for r in finished["rounds"]] == [["site-a", "site-b", "site-c"], ["site-a", "site-b"]]
    assert finished["result"]["promotion"]["promoted"] is True


async def test_a_failed_federation_is_recorded_with_its_reason_and_registers_nothing(tmp_path: Path) -> None:
    registry = FakeRegistry()
    service = _service(tmp_path, FakeRunner(fail="round 2: 1 site(s) answered, fewer than min_fit_clients 2"), registry)
    training, _ = await service.request(service.spec_for(), reason="manual", requested_by="me")
    finished = await _finished(service, training.training_id)
    await service.stop()
    assert finished["state"] == "failed" and "fewer than min_fit_clients" in finished["error"]
    assert registry.bodies == [] and registry.promotions == []


async def test_requests_while_one_is_queued_join_it_and_other_models_are_not_ours(tmp_path: Path) -> None:
    service = _service(tmp_path, FakeRunner(), FakeRegistry())
    first, _ = await service.request(service.spec_for(), reason="drift", requested_by="drift")
    second, joined = await service.request(service.spec_for(), reason="drift", requested_by="drift")
    assert joined and second is first and first.requests == 2
    handlers = FederatedHandlers(service)
    context = EventContext(event_id="e1", event_type="t", source="test", time=datetime.now(UTC), topic="t")
    await handlers.on_training_requested(
        TrainingRequested(model_name="edgeloop-classifier", reason="drift", requested_by="drift"), context
    )
    assert len(service.list()) == 1  # the image model's request is the trainer's
    with pytest.raises(ValueError, match="min_fit_clients"):
        service.spec_for(min_fit_clients=3, min_available_clients=2)
    await _finished(service, first.training_id)
    await service.stop()


async def test_the_api_refuses_what_cannot_run_and_says_why(tmp_path: Path) -> None:
    from edgeloop_federated.app import create_app
    from edgeloop_federated.settings import Settings

    settings = Settings(model_base=tmp_path, common=CommonSettings(mode="standalone", data_dir=tmp_path))
    app = create_app(settings, registry=FakeRegistry(), runner=FakeRunner(), store=FakeStore(tmp_path))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://federated") as client:
            bad = await client.post("/v1/trainings", json={"min_fit_clients": 3, "min_available_clients": 2})
            assert bad.status_code == 422 and "min_fit_clients" in bad.json()["detail"]
            unknown = await client.post("/v1/trainings", json={"strategy": "fedsgd"})
            assert unknown.status_code == 422
            missing = await client.get("/v1/trainings/nope")
            assert missing.status_code == 404 and "nope" in missing.json()["detail"]
            accepted = await client.post("/v1/trainings", json={"rounds": 2, "requested_by": "me"})
            assert accepted.status_code == 202 and accepted.headers["location"].endswith(accepted.json()["training_id"])
            for _ in range(200):
                training = (await client.get(accepted.headers["location"])).json()
                if training["state"] == "succeeded":
                    break
                await asyncio.sleep(0.01)
            assert training["state"] == "succeeded" and training["spec"]["rounds"] == 2, training
