"""A site's Flower client: trains the global model on the site's own windows, evaluates it on its held-out devices.

Runs where the history lives (``edgeloop federated client --site S --history PATH --server HOST:PORT``). What it
sends: weights (``fit``), its training-window count, its last-epoch loss; moments and histograms of its training
features (``get_properties``, see ``edgeloop_federated.site``); per-bin counts of the held-out scores (``evaluate``).
Never a reading, a window or a label.

Flower's legacy ``start_client`` (grpc-bidi) is used: the client is a plain process dialling the server, the same
process model as the rest of EdgeLoop (see docs/telemetry.md, "Federated learning", for why not SuperNode).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from edgeloop_common.telemetry import model as failure_model
from edgeloop_common.telemetry.history import SiteHistory

from edgeloop_federated.site import SiteWindows, feature_histograms, feature_moments, site_windows

log = logging.getLogger(__name__)

STAGE_MOMENTS = "moments"
STAGE_HISTOGRAMS = "histograms"


def encode_array(values: np.ndarray, dtype: str) -> bytes:
    return np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def decode_array(payload: object, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(payload, bytes):
        raise ValueError(f"expected bytes, got {type(payload).__name__}")
    return np.frombuffer(payload, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).astype(dtype)


def proximal_model(base: Any, mu: float, anchors: list[np.ndarray]) -> Any:
    """``base`` with FedProx's proximal term, mu/2 * ||w - w_global||^2, added to its loss (same variables)."""
    import keras

    class ProximalModel(keras.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(base.inputs, base.outputs, name=base.name)
            self.anchors = [keras.ops.convert_to_tensor(a) for a in anchors]

        def compute_loss(
            self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None, **kw: Any
        ) -> Any:
            loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, **kw)
            drift = [
                keras.ops.sum(keras.ops.square(w - a))
                for w, a in zip(self.trainable_weights, self.anchors, strict=True)
            ]
            return loss + (mu / 2.0) * keras.ops.sum(keras.ops.stack(drift))

    return ProximalModel()


@dataclass
class SiteClientConfig:
    site_id: str
    history: Path
    held_out_fraction: float = 0.25
    split_seed: int = 0


class SiteTrainer:
    """The site's side, without the transport: what the Flower client calls (tests call it directly too)."""

    def __init__(self, config: SiteClientConfig) -> None:
        self.config = config
        history = SiteHistory(config.history)
        try:
            self.windows: SiteWindows = site_windows(
                history, config.site_id, held_out_fraction=config.held_out_fraction, seed=config.split_seed
            )
        finally:
            history.close()
        if len(self.windows.train.labels) == 0:
            raise ValueError(f"site {config.site_id}: no training windows in {config.history}")
        self._models: dict[str, Any] = {}
        log.info(
            "site %s: %d training windows (%d devices), %d held-out windows (%d devices)",
            config.site_id,
            len(self.windows.train.labels),
            len(self.windows.train_devices),
            len(self.windows.held_out.labels),
            len(self.windows.held_out_devices),
        )

    def model(self, kind: str) -> Any:
        if kind not in self._models:
            self._models[kind] = failure_model.build_model(kind)  # type: ignore[arg-type]
        return self._models[kind]

    def properties(self, config: dict[str, Any]) -> dict[str, Any]:
        features = self.windows.train.features
        stage = config.get("stage")
        if stage == STAGE_MOMENTS:
            moments = feature_moments(features)
            return {
                "site": self.config.site_id,
                "n": moments["n"],
                "sum": encode_array(moments["sum"], "float64"),
                "sum_squares": encode_array(moments["sum_squares"], "float64"),
            }
        if stage == STAGE_HISTOGRAMS:
            rows, columns = int(config["edges_rows"]), int(config["edges_columns"])
            edges = decode_array(config["edges"], "float64", (rows, columns))
            return {"site": self.config.site_id, "counts": encode_array(feature_histograms(features, edges), "int64")}
        return {"site": self.config.site_id}

    def fit(self, weights: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        kind = str(config.get("model_kind", "logistic"))
        model = self.model(kind)
        model.set_weights(weights)
        mu = float(config.get("proximal_mu", 0.0))
        trained = proximal_model(model, mu, [w.numpy() for w in model.trainable_weights]) if mu > 0 else model
        started = time.perf_counter()
        history = failure_model.fit(
            trained,
            self.windows.train,
            epochs=int(config.get("local_epochs", 5)),
            batch_size=int(config.get("batch_size", 128)),
            learning_rate=float(config.get("learning_rate", 0.01)),
            seed=int(config.get("seed", 0)) + int(config.get("round", 0)),
        )
        loss = history.get("loss", [float("nan")])[-1]
        log.info(
            "site %s: round %s fitted in %.2fs, loss %.4f",
            self.config.site_id,
            config.get("round"),
            time.perf_counter() - started,
            loss,
        )
        return model.get_weights(), len(self.windows.train.labels), {"site": self.config.site_id, "loss": float(loss)}

    def evaluate(self, weights: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
        kind = str(config.get("model_kind", "logistic"))
        model = self.model(kind)
        model.set_weights(weights)
        held = self.windows.held_out
        probabilities = failure_model.predict(model, held.features)
        counts = failure_model.score_counts(
            probabilities, held.labels, bins=int(config.get("bins", failure_model.DEFAULT_BINS))
        )
        clipped = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
        truth = held.labels.astype(np.float64)
        loss = float(-np.mean(truth * np.log(clipped) + (1 - truth) * np.log(1 - clipped))) if len(truth) else 0.0
        # the training windows' counts too: the alert threshold is chosen there (F1-best), then judged held out
        train = self.windows.train
        train_counts = failure_model.score_counts(
            failure_model.predict(model, train.features),
            train.labels,
            bins=int(config.get("bins", failure_model.DEFAULT_BINS)),
        )
        return (
            loss,
            len(held.labels),
            {
                "site": self.config.site_id,
                "counts": encode_array(counts, "int64"),
                "train_counts": encode_array(train_counts, "int64"),
            },
        )


def flower_client(trainer: SiteTrainer) -> Any:
    """The Flower ``Client`` of a site (a NumPyClient over ``trainer``)."""
    from flwr.client import NumPyClient

    class SiteClient(NumPyClient):  # type: ignore[misc]
        def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
            return trainer.properties(config)

        def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
            return [np.asarray(w) for w in trainer.model(str(config.get("model_kind", "logistic"))).get_weights()]

        def fit(
            self, parameters: list[np.ndarray], config: dict[str, Any]
        ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            return trainer.fit(parameters, config)

        def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
            return trainer.evaluate(parameters, config)

    return SiteClient().to_client()


def run_site_client(
    config: SiteClientConfig,
    server_address: str,
    *,
    once: bool = False,
    retry_s: float = 2.0,
    connect_timeout_s: float | None = None,
) -> None:
    """Serve trainings from ``server_address`` until stopped (``once``: leave after the first training).

    Between trainings no server listens; the client keeps dialling (Flower's own retry, then ours), so a site's
    client is started once and takes part in every training the cloud runs.
    """
    from flwr.client import start_client

    trainer = SiteTrainer(config)
    client = flower_client(trainer)
    while True:
        try:
            start_client(server_address=server_address, client=client, insecure=True, max_wait_time=connect_timeout_s)
        except Exception as exc:  # a server that went away mid-training: dial again (once: the training is over)
            if once:
                raise
            log.warning("site %s: connection to %s ended (%s); dialling again", config.site_id, server_address, exc)
        if once:
            return
        time.sleep(retry_s)
