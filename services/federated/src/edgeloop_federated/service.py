"""The federated service's logic: trainings requested, run one at a time, registered and promoted through the gate.

A request (HTTP, or ``TrainingRequested`` for the telemetry model) is queued; one that arrives while another is
still queued joins it. The worker runs the federation (the runner port: Flower), then exports the aggregated model,
registers it with its lineage (strategy, rounds, the sites and their window counts per round) and asks the registry's
promotion gate, which compares ``metrics.pr_auc`` with production's figure measured on the same held-out windows
(``metrics.baseline``). Trainings are kept in memory: a restart forgets their progress, not what was registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from edgeloop_common.telemetry import model as failure_model

from edgeloop_federated.ports import (
    FederatedError,
    FederationResult,
    FederationRunner,
    ModelStore,
    PromotionDecision,
    RegistryError,
    RegistryPort,
    RegistryUnavailableError,
    RoundRecord,
    TrainingNotFoundError,
    TrainingSpec,
    TrainingState,
)

log = logging.getLogger(__name__)
SERVICE_NAME = "federated"
MAX_KEPT_TRAININGS = 100
T = TypeVar("T")


@dataclass
class Training:
    training_id: str
    spec: TrainingSpec
    reason: str
    requested_by: str
    detail: str
    created_at: datetime
    state: TrainingState = "queued"
    message: str = "queued"
    requests: int = 1
    started_at: datetime | None = None
    finished_at: datetime | None = None
    rounds: list[RoundRecord] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "training_id": self.training_id,
            "model_name": self.spec.model_name,
            "state": self.state,
            "message": self.message,
            "reason": self.reason,
            "requested_by": self.requested_by,
            "detail": self.detail,
            "requests": self.requests,
            "spec": {k: v for k, v in self.spec.__dict__.items()},
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "rounds": [record.as_dict() for record in self.rounds],
            "result": self.result,
            "error": self.error,
        }


class FederatedMetricsPort:
    """What the service counts (the Prometheus metrics implement it; tests may pass None)."""

    def training_finished(self, outcome: str, duration_s: float) -> None: ...

    def round_finished(self, strategy: str, duration_s: float, clients: int, failures: int) -> None: ...


async def in_daemon_thread(function: Callable[[], T]) -> T:
    """Run blocking ``function`` in a daemon thread: a stopping service does not wait for a training's rounds."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)  # type: ignore[arg-type]

    def work() -> None:
        try:
            value = function()
        except BaseException as exc:  # noqa: BLE001 -- handed to the awaiting coroutine, which decides
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=work, name="federated-training", daemon=True).start()
    return await future


class FederatedService:
    def __init__(
        self,
        *,
        runner: FederationRunner,
        registry: RegistryPort,
        store: ModelStore,
        defaults: TrainingSpec,
        promote: bool = True,
        actor: str = "federated",
        metrics: FederatedMetricsPort | None = None,
    ) -> None:
        self.runner = runner
        self.registry = registry
        self.store = store
        self.defaults = defaults
        self.promote = promote
        self.actor = actor
        self.metrics = metrics or FederatedMetricsPort()
        self._trainings: dict[str, Training] = {}
        self._queue: asyncio.Queue[Training] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    # --- requests ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="federated:worker")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    def spec_for(self, model_name: str | None = None, **overrides: Any) -> TrainingSpec:
        """The defaults with a request's changes; bad combinations raise ValueError (a 422 at the API)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        spec = replace(self.defaults, model_name=model_name or self.defaults.model_name, **changes)
        if spec.min_fit_clients > spec.min_available_clients:
            raise ValueError(
                f"min_fit_clients ({spec.min_fit_clients}) cannot exceed min_available_clients "
                f"({spec.min_available_clients}): a round could never have enough sites"
            )
        return spec

    def handles(self, model_name: str) -> bool:
        return model_name == self.defaults.model_name

    async def request(
        self, spec: TrainingSpec, *, reason: str, requested_by: str, detail: str = ""
    ) -> tuple[Training, bool]:
        """Queue a training (or join the one queued already with the same spec); it and whether it was joined."""
        for queued in self._trainings.values():
            if queued.state == "queued" and queued.spec == spec:
                queued.requests += 1
                return queued, True
        training = Training(
            training_id=f"fed-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}",
            spec=spec,
            reason=reason,
            requested_by=requested_by,
            detail=detail,
            created_at=datetime.now(UTC),
        )
        self._trainings[training.training_id] = training
        self._forget_old()
        await self._queue.put(training)
        self.start()
        return training, False

    def get(self, training_id: str) -> Training:
        training = self._trainings.get(training_id)
        if training is None:
            raise TrainingNotFoundError(f"no training {training_id!r}")
        return training

    def list(self) -> list[Training]:
        return sorted(self._trainings.values(), key=lambda t: t.created_at, reverse=True)

    def _forget_old(self) -> None:
        finished = [t for t in self.list() if t.state in ("succeeded", "failed")]
        for old in finished[MAX_KEPT_TRAININGS:]:
            self._trainings.pop(old.training_id, None)

    # --- running ----------------------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            training = await self._queue.get()
            await self.run(training)

    async def run(self, training: Training) -> None:
        training.started_at = datetime.now(UTC)
        training.state, training.message = "waiting_for_sites", "starting"
        outcome = "failed"
        try:
            training.result = await self._run(training)
            training.state, outcome = "succeeded", "succeeded"
            training.message = f"version {training.result['version']} registered" + (
                f"; promotion: {training.result['promotion']['decision']}" if training.result.get("promotion") else ""
            )
        except (FederatedError, RegistryError, RegistryUnavailableError, ValueError, OSError) as exc:
            training.state, training.error, training.message = "failed", str(exc), f"failed: {exc}"
            log.warning("federated training %s failed: %s", training.training_id, exc)
        except Exception as exc:  # an unforeseen bug: recorded on the training, logged with its traceback
            training.state, training.error, training.message = "failed", f"{type(exc).__name__}: {exc}", "failed"
            log.exception("federated training %s failed", training.training_id)
        finally:
            training.finished_at = datetime.now(UTC)
            self.metrics.training_finished(outcome, (training.finished_at - training.started_at).total_seconds())

    async def _run(self, training: Training) -> dict[str, Any]:
        spec = training.spec
        production = await self.registry.production(spec.model_name)
        baseline = None
        if production is not None:
            baseline = await asyncio.to_thread(self.store.load, production.version, production.artifact_uri)

        def progress(state: TrainingState, message: str, record: RoundRecord | None = None) -> None:
            training.state, training.message = state, message
            if record is not None:
                training.rounds.append(record)
                self.metrics.round_finished(spec.strategy, record.duration_s, len(record.clients), record.failures)
            log.info("federated training %s: %s", training.training_id, message)

        result = await in_daemon_thread(lambda: self.runner.run(training.training_id, spec, baseline, progress))
        training.state, training.message = "registering", "exporting and registering the aggregated model"
        version = (await self.registry.latest_version(spec.model_name) or 0) + 1
        body_without_uri = registration_body(training, result, version)
        path = await asyncio.to_thread(
            self.store.export, spec.model_name, version, result, {"training": body_without_uri["lineage"]["parameters"]}
        )
        registered = await self.registry.register(spec.model_name, {**body_without_uri, "artifact_uri": path.as_uri()})
        decision: PromotionDecision | None = None
        if self.promote:
            decision = await self.registry.promote(
                spec.model_name,
                registered.version,
                reason=f"federated training {training.training_id} ({training.reason})",
                actor=self.actor,
            )
        return {
            "version": registered.version,
            "artifact_uri": registered.artifact_uri,
            "metrics": body_without_uri["metrics"],
            "promotion": None
            if decision is None
            else {
                "promoted": decision.promoted,
                "decision": decision.decision,
                "previous_version": decision.previous_version,
            },
        }


def registration_body(training: Training, result: FederationResult, version: int) -> dict[str, Any]:
    """The registry's version body: contract fields (docs/telemetry.md) and the federated lineage."""
    spec = training.spec
    metrics: dict[str, Any] = {
        **result.metrics,
        "policy_metric": failure_model.POLICY_METRIC,
        "evaluated_on": "held-out devices of every site, pooled from per-bin counts (metrics_from_counts)",
        "evaluation_windows_per_site": dict(result.evaluation_sites),
    }
    if result.baseline is not None:
        metrics["baseline"] = result.baseline
    samples_per_client: dict[str, list[int]] = {}
    for record in result.rounds:
        for site, count in record.samples.items():
            samples_per_client.setdefault(site, []).append(count)
    parameters = {
        "trained_by": "federated",
        "training_id": training.training_id,
        "reason": training.reason,
        "strategy": spec.strategy,
        "proximal_mu": spec.proximal_mu if spec.strategy == "fedprox" else None,
        "model_kind": result.model_kind,
        "rounds": len(result.rounds),
        "local_epochs": spec.local_epochs,
        "learning_rate": spec.learning_rate,
        "batch_size": spec.batch_size,
        "min_fit_clients": spec.min_fit_clients,
        "min_available_clients": spec.min_available_clients,
        "round_timeout_s": spec.round_timeout_s,
        "clients_per_round": [len(record.clients) for record in result.rounds],
        "sample_counts_per_round": [dict(record.samples) for record in result.rounds],
        "failures_per_round": [record.failures for record in result.rounds],
        "samples_per_client": {site: counts[-1] for site, counts in samples_per_client.items()},
        "sites": sorted(samples_per_client),
        "normalisation_windows": result.normalisation_windows,
        "round_history": [record.as_dict() for record in result.rounds],
    }
    started = training.started_at or datetime.now(UTC)
    return {
        "version": version,
        "signature": failure_model.signature_description(),
        "metrics": failure_model.finite_metrics(metrics),
        "reference_stats": result.reference_stats,
        "lineage": {"dataset_snapshot_id": None, "parent_version": None, "parameters": parameters},
        "train_started_at": started.isoformat(),
        "train_duration_s": round(result.duration_s, 3),
    }
