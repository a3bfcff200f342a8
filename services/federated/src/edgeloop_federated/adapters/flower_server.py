"""The cloud side of a federated training: one Flower server (gRPC) for the training, FedAvg or FedProx.

Flower's own server pieces do the work: ``start_grpc_server`` (the Fleet API the site clients dial),
``SimpleClientManager``, ``Server.fit_round`` / ``evaluate_round`` and the ``FedAvg`` / ``FedProx`` strategies. Around
them, in order:

1. wait until ``min_available_clients`` sites are connected (else the training fails with that reason);
2. federated analytics: each site's feature moments (the model's normalisation) and histograms (the drift
   reference), through ``get_properties``;
3. ``rounds`` rounds: each site fits the global model on its windows, the strategy averages the answers weighted by
   window counts; a site that fails or does not answer within ``round_timeout_s`` is left out of the round, and a
   round with fewer than ``min_fit_clients`` answers fails the training; after each round every site evaluates the
   aggregated model on its held-out windows and returns per-bin counts, which the server sums into PR-AUC,
   precision, recall and the threshold (``metrics_from_counts``);
4. production's model (if any) is evaluated the same way on the same windows: the gate's baseline.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
from edgeloop_common.telemetry import model as failure_model
from edgeloop_common.telemetry.features import FEATURE_NAMES

from edgeloop_federated.adapters.flower_client import STAGE_HISTOGRAMS, STAGE_MOMENTS, decode_array, encode_array
from edgeloop_federated.ports import (
    Baseline,
    FederatedError,
    FederationResult,
    Progress,
    RoundRecord,
    TrainingSpec,
)
from edgeloop_federated.site import histogram_edges, pooled_normalisation, reference_from_histograms

log = logging.getLogger(__name__)

GRPC_MAX_MESSAGE_LENGTH = 64 * 1024 * 1024


def _reason(failure: object) -> str:
    if isinstance(failure, BaseException):
        return f"{type(failure).__name__}: {failure}" if str(failure) else type(failure).__name__
    _, res = failure  # type: ignore[misc]
    return f"status {res.status.code.name}: {res.status.message}"


def _strategy(spec: TrainingSpec, bins: int) -> Any:
    """A Flower strategy (FedAvg or FedProx) that also records each round and pools the evaluation counts."""
    from flwr.common import EvaluateIns, FitIns
    from flwr.server.strategy import FedAvg, FedProx

    base = FedProx if spec.strategy == "fedprox" else FedAvg

    class RecordingStrategy(base):  # type: ignore[misc, valid-type]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.record: RoundRecord | None = None
            self.evaluation_kind = spec.model_kind
            self.evaluation: dict[str, Any] | None = None
            self.evaluation_sites: dict[str, int] = {}

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[Any, Any]]:
            pairs = super().configure_fit(server_round, parameters, client_manager)
            config = {
                "round": server_round,
                "model_kind": spec.model_kind,
                "local_epochs": spec.local_epochs,
                "learning_rate": spec.learning_rate,
                "batch_size": spec.batch_size,
                "seed": spec.seed,
            }
            return [(client, FitIns(ins.parameters, {**ins.config, **config})) for client, ins in pairs]

        def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> Any:
            record = self.record
            if record is not None:
                for _, res in results:
                    site = str(res.metrics.get("site", "?"))
                    record.clients.append(site)
                    record.samples[site] = int(res.num_examples)
                record.failures = len(failures)
                record.failure_reasons = [_reason(f) for f in failures]
                total = sum(int(res.num_examples) for _, res in results)
                if total:
                    record.train_loss = (
                        sum(float(res.metrics.get("loss", 0.0)) * res.num_examples for _, res in results) / total
                    )
            if len(results) < spec.min_fit_clients:
                raise FederatedError(
                    f"round {server_round}: {len(results)} site(s) answered, fewer than min_fit_clients "
                    f"{spec.min_fit_clients} ({'; '.join(_reason(f) for f in failures) or 'no failure reported'})"
                )
            return super().aggregate_fit(server_round, results, failures)

        def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[Any, Any]]:
            pairs = super().configure_evaluate(server_round, parameters, client_manager)
            config = {"round": server_round, "model_kind": self.evaluation_kind, "bins": bins}
            return [(client, EvaluateIns(ins.parameters, {**ins.config, **config})) for client, ins in pairs]

        def aggregate_evaluate(self, server_round: int, results: list[Any], failures: list[Any]) -> Any:
            counts = np.zeros((2, bins), np.int64)
            train_counts = np.zeros((2, bins), np.int64)
            sites: dict[str, int] = {}
            for _, res in results:
                counts += decode_array(res.metrics["counts"], "int64", (2, bins))
                train_counts += decode_array(res.metrics["train_counts"], "int64", (2, bins))
                sites[str(res.metrics.get("site", "?"))] = int(res.num_examples)
            self.evaluation_sites = sites
            self.evaluation = None
            if results:
                # as the centralised training does: the threshold F1-best on the training windows, judged held out
                threshold = failure_model.metrics_from_counts(train_counts)["threshold"]
                figures = failure_model.metrics_from_counts(counts, threshold=threshold)
                self.evaluation = failure_model.finite_metrics(figures)
            if self.evaluation is not None:
                self.evaluation["sites"] = len(sites)
                self.evaluation["failures"] = len(failures)
            total = sum(res.num_examples for _, res in results)
            loss = sum(res.loss * res.num_examples for _, res in results) / total if total else None
            return loss, {}

    return RecordingStrategy(
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=spec.min_fit_clients,
        min_evaluate_clients=spec.min_fit_clients,
        # Flower's sampling waits (up to a day) for this many: the per-round minimum, not the one before round 1
        # (``run`` waits for that itself, with the training's connect timeout)
        min_available_clients=spec.min_fit_clients,
        accept_failures=True,
        **({"proximal_mu": spec.proximal_mu} if spec.strategy == "fedprox" else {}),
    )


def moment_rows(mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Two rows whose mean and population variance are exactly ``mean`` and ``variance``: adapting the model's
    normalisation on them sets it to the pooled moments (the layer adapts on rows, and the cloud has no rows)."""
    std = np.sqrt(np.asarray(variance, np.float64))
    return np.stack([mean - std, mean + std]).astype(np.float32)


class FlowerFederation:
    """Runs one training at a time on ``address`` (``host:port`` the site clients dial)."""

    def __init__(self, address: str, *, bins: int = failure_model.DEFAULT_BINS) -> None:
        self.address = address
        self.bins = bins

    def run(
        self, training_id: str, spec: TrainingSpec, baseline: Baseline | None, progress: Progress
    ) -> FederationResult:
        from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.server import Server, SimpleClientManager
        from flwr.server.superlink.fleet.grpc_bidi.grpc_server import start_grpc_server

        started = time.perf_counter()
        manager = SimpleClientManager()
        strategy = _strategy(spec, self.bins)
        server = Server(client_manager=manager, strategy=strategy)
        try:
            grpc_server = start_grpc_server(
                client_manager=manager, server_address=self.address, max_message_length=GRPC_MAX_MESSAGE_LENGTH
            )
        except Exception as exc:  # the port is taken or the address is wrong: the training cannot start
            raise FederatedError(f"cannot listen on {self.address}: {exc}") from exc
        try:
            progress("waiting_for_sites", f"waiting for {spec.min_available_clients} site(s) on {self.address}")
            if not manager.wait_for(spec.min_available_clients, timeout=int(spec.connect_timeout_s)):
                raise FederatedError(
                    f"{manager.num_available()} site(s) connected within {spec.connect_timeout_s:g}s, "
                    f"fewer than min_available_clients {spec.min_available_clients}"
                )
            # 1. normalisation and drift reference from the sites' sums (federated analytics)
            moments = self._properties(manager, {"stage": STAGE_MOMENTS}, spec)
            width = len(FEATURE_NAMES)
            mean, variance, windows = pooled_normalisation(
                [
                    {
                        "n": int(p["n"]),
                        "sum": decode_array(p["sum"], "float64", (width,)),
                        "sum_squares": decode_array(p["sum_squares"], "float64", (width,)),
                    }
                    for p in moments
                ]
            )
            edges = histogram_edges(mean, variance)
            histograms = self._properties(
                manager,
                {
                    "stage": STAGE_HISTOGRAMS,
                    "edges": encode_array(edges, "float64"),
                    "edges_rows": edges.shape[0],
                    "edges_columns": edges.shape[1],
                },
                spec,
            )
            shape = (width, edges.shape[1] + 1)
            per_site = {
                str(p.get("site", index)): decode_array(p["counts"], "int64", shape)
                for index, p in enumerate(histograms)
            }
            counts = np.sum(list(per_site.values()), axis=0)
            reference = reference_from_histograms(counts, edges, mean, variance, per_site=per_site)
            initial = failure_model.build_model(
                spec.model_kind, normalization_from=moment_rows(mean, variance), seed=spec.seed
            )
            server.parameters = ndarrays_to_parameters([np.asarray(w) for w in initial.get_weights()])
            progress("running", f"{len(moments)} site(s), {windows} training windows; normalisation pooled")

            # 2. the rounds
            records: list[RoundRecord] = []
            for number in range(1, spec.rounds + 1):
                self._enough_sites(manager, spec, f"round {number}")
                record = RoundRecord(round=number, started_at=datetime.now(UTC))
                strategy.record = record
                round_started = time.perf_counter()
                fitted = server.fit_round(server_round=number, timeout=spec.round_timeout_s)
                if fitted is None or fitted[0] is None:
                    raise FederatedError(f"round {number}: no site was selected or no weights came back")
                server.parameters = fitted[0]
                strategy.evaluation_kind = spec.model_kind
                self._enough_sites(manager, spec, f"round {number} evaluation")
                server.evaluate_round(server_round=number, timeout=spec.round_timeout_s)
                record.evaluation = strategy.evaluation
                record.duration_s = time.perf_counter() - round_started
                records.append(record)
                figure = (record.evaluation or {}).get("pr_auc")
                progress(
                    "running",
                    f"round {number}/{spec.rounds}: {len(record.clients)} site(s) answered, {record.failures} failed, "
                    f"held-out PR-AUC {figure if figure is None else round(figure, 4)}, {record.duration_s:.1f}s",
                    record,
                )
            final = records[-1].evaluation
            if final is None:
                raise FederatedError("the final model could not be evaluated: no site answered the evaluation")
            sites = dict(strategy.evaluation_sites)
            weights = parameters_to_ndarrays(server.parameters)

            # 3. production on the same held-out windows (the promotion gate's baseline)
            measured_baseline = None
            if baseline is not None:
                candidate_parameters = server.parameters
                server.parameters = ndarrays_to_parameters(baseline.weights)
                strategy.evaluation_kind = baseline.model_kind
                server.evaluate_round(server_round=spec.rounds + 1, timeout=spec.round_timeout_s)
                server.parameters = candidate_parameters
                if strategy.evaluation is not None and strategy.evaluation_sites == sites:
                    measured_baseline = {"version": baseline.version, **strategy.evaluation}
                else:
                    log.warning("training %s: production not measured on the same sites; no baseline", training_id)
            server.disconnect_all_clients(timeout=10)
        finally:
            grpc_server.stop(grace=1)
        return FederationResult(
            weights=weights,
            model_kind=spec.model_kind,
            rounds=records,
            metrics=final,
            evaluation_sites=sites,
            reference_stats=reference,
            normalisation_windows=windows,
            baseline=measured_baseline,
            duration_s=time.perf_counter() - started,
        )

    @staticmethod
    def _enough_sites(manager: Any, spec: TrainingSpec, what: str) -> None:
        """Flower's sampling would block on too few sites: wait for them here, with a timeout, or fail."""
        if manager.num_available() < spec.min_fit_clients and not manager.wait_for(
            spec.min_fit_clients, timeout=int(spec.connect_timeout_s)
        ):
            raise FederatedError(f"{what}: fewer than min_fit_clients {spec.min_fit_clients} sites connected")

    def _properties(self, manager: Any, config: dict[str, Any], spec: TrainingSpec) -> list[dict[str, Any]]:
        """Every connected site's answer to ``get_properties(config)``; sites that fail are left out."""
        from flwr.common import Code, GetPropertiesIns

        clients = list(manager.all().values())
        answers: list[dict[str, Any]] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(clients))) as pool:
            futures = [
                pool.submit(c.get_properties, GetPropertiesIns(config=config), spec.round_timeout_s, 0) for c in clients
            ]
            for future in concurrent.futures.as_completed(futures):
                try:
                    res = future.result()
                except Exception as exc:  # noqa: BLE001 -- a site that went away: logged; the others' sums still hold
                    log.warning("get_properties(%s) failed: %s", config.get("stage"), exc)
                    continue
                if res.status.code == Code.OK:
                    answers.append(dict(res.properties))
        if len(answers) < spec.min_fit_clients:
            raise FederatedError(
                f"{config.get('stage')}: {len(answers)} site(s) answered, fewer than {spec.min_fit_clients}"
            )
        return answers
