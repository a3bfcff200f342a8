"""The federated service's domain: what a training asks, what each round did, what a training produced; the
ports the service drives (a federation runner, the registry, the model store). No I/O frameworks here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

# The registry's client types live with its client in libs/common (shared with the trainer); named here too, as the
# ports this service's logic is written against.
from edgeloop_common.registry_client import PromotionDecision as PromotionDecision
from edgeloop_common.registry_client import RegisteredVersion as RegisteredVersion
from edgeloop_common.registry_client import RegistryError as RegistryError
from edgeloop_common.registry_client import RegistryUnavailableError as RegistryUnavailableError

StrategyName = Literal["fedavg", "fedprox"]
STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox")
TrainingState = Literal["queued", "waiting_for_sites", "running", "registering", "succeeded", "failed"]


class FederatedError(Exception):
    """A training could not run or finish; the message says why."""


class TrainingNotFoundError(Exception):
    """No training has this id."""


@dataclass(frozen=True)
class TrainingSpec:
    """How one federated training runs (defaults from the service's settings; a request may change some)."""

    model_name: str = "machine-failure"
    rounds: int = 5
    strategy: StrategyName = "fedavg"
    proximal_mu: float = 0.1  # FedProx's proximal weight (ignored by FedAvg)
    model_kind: Literal["logistic", "mlp"] = "logistic"
    local_epochs: int = 5
    learning_rate: float = 0.01
    batch_size: int = 128
    min_fit_clients: int = 2  # a round with fewer answers than this fails the training
    min_available_clients: int = 2  # sites connected before round 1 starts
    round_timeout_s: float = 120.0  # a site that has not answered by then is left out of the round
    connect_timeout_s: float = 300.0  # how long to wait for min_available_clients sites
    seed: int = 0


@dataclass
class RoundRecord:
    """One round as it went: who answered, with how many windows, who failed."""

    round: int
    started_at: datetime
    duration_s: float = 0.0
    clients: list[str] = field(default_factory=list)  # site ids that answered, in order of answer
    samples: dict[str, int] = field(default_factory=dict)  # site id -> training windows it fitted on
    failures: int = 0
    failure_reasons: list[str] = field(default_factory=list)
    train_loss: float | None = None  # sample-weighted mean of the sites' last-epoch loss
    evaluation: dict[str, Any] | None = None  # pooled held-out figures of the aggregated model, if evaluated

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "started_at": self.started_at.isoformat(),
            "duration_s": round(self.duration_s, 3),
            "clients": list(self.clients),
            "samples": dict(self.samples),
            "failures": self.failures,
            "failure_reasons": list(self.failure_reasons),
            "train_loss": self.train_loss,
            "evaluation": self.evaluation,
        }


@dataclass
class FederationResult:
    """What the federation produced: the aggregated model's weights and how it was made and measured."""

    weights: list[np.ndarray]
    model_kind: str
    rounds: list[RoundRecord]
    metrics: dict[str, Any]  # pooled held-out figures (metrics_from_counts) of the final model
    evaluation_sites: dict[str, int]  # site id -> held-out windows it evaluated on
    reference_stats: dict[str, Any]
    normalisation_windows: int
    baseline: dict[str, Any] | None = None  # production's figures on the same held-out windows, when measured
    duration_s: float = 0.0


class Progress(Protocol):
    def __call__(self, state: TrainingState, message: str, round_record: RoundRecord | None = None) -> None: ...


@dataclass(frozen=True)
class Baseline:
    """Production's model, evaluated beside the candidate on the same held-out windows (the gate compares them)."""

    version: int
    weights: list[np.ndarray]
    model_kind: str


class FederationRunner(Protocol):
    def run(
        self, training_id: str, spec: TrainingSpec, baseline: Baseline | None, progress: Progress
    ) -> FederationResult:
        """Blocking: wait for the sites, run the rounds, evaluate; raises FederatedError."""
        ...


class RegistryPort(Protocol):
    async def latest_version(self, model_name: str) -> int | None: ...

    async def production(self, model_name: str) -> RegisteredVersion | None: ...

    async def register(self, model_name: str, body: dict[str, Any]) -> RegisteredVersion: ...

    async def promote(self, model_name: str, version: int, *, reason: str, actor: str) -> PromotionDecision: ...


class ModelStore(Protocol):
    def export(self, model_name: str, version: int, result: FederationResult, metadata: dict[str, Any]) -> Path:
        """Write the SavedModel at ``<base>/<model>/<version>/`` (staged, then renamed); its folder."""
        ...

    def load(self, version: int, artifact_uri: str) -> Baseline | None:
        """Production's weights and kind from its export (None when the artifact is not readable here)."""
        ...
