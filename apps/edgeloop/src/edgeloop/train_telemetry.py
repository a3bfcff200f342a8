"""``edgeloop train --telemetry``: centralised training of the failure model on sites' histories.

It reads the labelled windows of every given ``SiteHistory`` file, holds out the windows of some machines for
evaluation (``edgeloop_common.telemetry.model.is_held_out``: by device, the same machines a federated training
holds out), trains the logistic regression (or the small MLP), picks the alert threshold on the training windows,
evaluates on the held-out ones, exports the SavedModel as ``OUT/NAME/VERSION/`` and, with a registry, registers
the version (``policy_metric = pr_auc``) and asks the registry to promote it. With a production version already
there, the production model is scored on the same held-out windows (``metrics.baseline``), so the gate compares
the two on one set. :func:`train_centralised` is the same for programs (the demo, the bench).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

import numpy as np
from edgeloop_common.telemetry.features import HORIZON_READINGS, WINDOW_READINGS, LabelledWindows, concatenate
from edgeloop_common.telemetry.history import SiteHistory

Log = Callable[[str], None]


@dataclass(frozen=True)
class TelemetryTrainingResult:
    model_name: str
    version: int
    path: Path
    kind: str
    metrics: dict[str, Any]  # held-out figures (pr_auc, precision, recall, threshold, ...) and counts
    reference_stats: dict[str, Any]
    parameters: dict[str, Any]
    duration_s: float
    registered: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None
    history: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Split:
    train: LabelledWindows
    held_out: LabelledWindows
    evaluation_set_id: str  # a hash of the held-out windows: the same machines and readings give the same id
    site_features: dict[str, np.ndarray]  # every window's features, per site (for the per-site drift reference)


def load_split(histories: Sequence[Path], *, eval_fraction: float, seed: int, stride: int = 5) -> Split:
    """Training and held-out windows of every history file (held out by machine, ``is_held_out``)."""
    from edgeloop_common.telemetry.model import split_windows

    train: list[LabelledWindows] = []
    held_out: list[LabelledWindows] = []
    site_features: dict[str, list[np.ndarray]] = {}
    for path in histories:
        if not path.is_file():
            raise FileNotFoundError(f"history file {path} does not exist")
        history = SiteHistory(path)
        try:
            site_train, site_eval = split_windows(history, eval_fraction=eval_fraction, seed=seed, stride=stride)
            sites = sorted({site for site, _ in history.devices()})
        finally:
            history.close()
        train.append(site_train)
        held_out.append(site_eval)
        name = sites[0] if len(sites) == 1 else path.stem  # a history is one site's
        site_features.setdefault(name, []).extend([site_train.features, site_eval.features])
    evaluation = concatenate(held_out)
    digest = hashlib.sha256(evaluation.features.tobytes() + evaluation.labels.tobytes()).hexdigest()[:16]
    return Split(
        train=concatenate(train),
        held_out=evaluation,
        evaluation_set_id=f"evalset-telemetry-{digest}",
        site_features={site: np.concatenate(parts) for site, parts in site_features.items()},
    )


def train_centralised(
    histories: Sequence[Path],
    out: Path,
    *,
    model_name: str = "machine-failure",
    kind: str = "logistic",
    epochs: int = 20,
    eval_fraction: float = 0.25,
    seed: int = 0,
    version: int | None = None,
    register_url: str | None = None,
    promote: bool = True,
    log: Log = print,
) -> TelemetryTrainingResult:
    from edgeloop_common.telemetry import model as failure_model
    from edgeloop_trainer.export import staged_version

    started = time.perf_counter()
    if kind not in failure_model.MODEL_KINDS:
        raise ValueError(f"model kind must be one of {', '.join(failure_model.MODEL_KINDS)}, got {kind!r}")
    split = load_split(histories, eval_fraction=eval_fraction, seed=seed)
    train, held_out, evaluation_set_id = split.train, split.held_out, split.evaluation_set_id
    log(
        f"windows: {len(train.labels)} for training ({int(train.labels.sum())} before a failure), "
        f"{len(held_out.labels)} held out ({int(held_out.labels.sum())} before a failure) "
        f"from {len(histories)} site histories"
    )
    if len(train.labels) == 0 or train.labels.sum() == 0:
        raise ValueError("the training windows hold no failure: nothing to learn (longer histories, more machines)")
    if len(held_out.labels) == 0 or held_out.labels.sum() == 0:
        raise ValueError("the held-out machines never failed: no figure to evaluate (raise --eval-fraction)")
    network = failure_model.build_model(
        "mlp" if kind == "mlp" else "logistic", normalization_from=train.features, seed=seed
    )

    def on_epoch(epoch: int, logs: dict[str, float]) -> None:
        if epoch == 1 or epoch == epochs or epoch % 5 == 0:
            log(f"epoch {epoch}/{epochs}: loss {logs.get('loss', float('nan')):.4f}")

    history = failure_model.fit(network, train, epochs=epochs, seed=seed, on_epoch=on_epoch)
    # The alert threshold is chosen on the training windows (F1-best there), then judged on held-out machines.
    threshold = failure_model.evaluate(failure_model.predict(network, train.features), train.labels)["threshold"]
    figures = failure_model.evaluate(
        failure_model.predict(network, held_out.features), held_out.labels, threshold=threshold
    )
    log(
        f"held out: PR-AUC {figures['pr_auc']:.3f} (positive rate {figures['positive_rate']:.3f}), "
        f"precision {figures['precision']:.3f}, recall {figures['recall']:.3f} at threshold {threshold:.3f}"
    )
    metrics: dict[str, Any] = {
        "policy_metric": failure_model.POLICY_METRIC,
        **figures,
        "evaluation_set_id": evaluation_set_id,
        "train_windows": len(train.labels),
        "train_positives": int(train.labels.sum()),
    }
    parameters = {
        "trained_by": "edgeloop train --telemetry",
        "training": "centralised",
        "model_kind": kind,
        "epochs": epochs,
        "eval_fraction": eval_fraction,
        "seed": seed,
        "histories": [path.name for path in histories],
        "window_readings": WINDOW_READINGS,
        "horizon_readings": HORIZON_READINGS,
    }
    reference = failure_model.reference_stats(
        np.concatenate([train.features, held_out.features]), sites=split.site_features, seed=seed
    )
    with staged_version(out, model_name, version) as (chosen, staging):
        failure_model.export_savedmodel(
            network, staging, metadata={"metrics": metrics, "training": parameters}, model_name=model_name
        )
    path = out / model_name / str(chosen)
    duration = time.perf_counter() - started
    log(f"exported {model_name} version {chosen} to {path} in {duration:.1f}s")
    result = TelemetryTrainingResult(
        model_name=model_name,
        version=chosen,
        path=path,
        kind=kind,
        metrics=metrics,
        reference_stats=reference,
        parameters=parameters,
        duration_s=duration,
        history=history,
    )
    if register_url is None:
        return result
    registered, decision = register(register_url, result, held_out, promote=promote, log=log)
    return TelemetryTrainingResult(**{**result.__dict__, "registered": registered, "decision": decision})


def registration_body(result: TelemetryTrainingResult) -> dict[str, Any]:
    from edgeloop_common.telemetry import model as failure_model

    started_at = datetime.now(UTC) - timedelta(seconds=result.duration_s)
    return {
        "version": result.version,
        "artifact_uri": result.path.resolve().as_uri(),
        "signature": failure_model.signature_description(),
        "metrics": failure_model.finite_metrics(result.metrics),
        "reference_stats": result.reference_stats,
        "lineage": {"dataset_snapshot_id": None, "parent_version": None, "parameters": result.parameters},
        "train_started_at": started_at.isoformat(),
        "train_duration_s": round(result.duration_s, 3),
    }


def production_baseline(
    production: dict[str, Any], held_out: LabelledWindows, threshold: float
) -> dict[str, Any] | None:
    """The production version's figures on the candidate's held-out windows, when its export is readable here."""
    from edgeloop_common.telemetry import model as failure_model

    uri = urlparse(str(production.get("artifact_uri", "")))
    path = Path(unquote(uri.path))
    if uri.scheme != "file" or not (path / failure_model.KERAS_CHECKPOINT).is_file():
        return None
    previous = failure_model.load_keras(path)
    own_threshold = production.get("metrics", {}).get("threshold", threshold)
    figures = failure_model.evaluate(
        failure_model.predict(previous, held_out.features), held_out.labels, threshold=float(own_threshold)
    )
    return {"version": int(production["version"]), **failure_model.finite_metrics(figures)}


def register(
    registry_url: str,
    result: TelemetryTrainingResult,
    held_out: LabelledWindows,
    *,
    promote: bool,
    log: Log = print,
    actor: str = "edgeloop-train",
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Register the version (with a baseline of production on the same windows) and ask the gate to promote it."""
    import httpx
    from edgeloop_common.api_auth import service_auth
    from edgeloop_common.settings import CommonSettings
    from edgeloop_trainer.registration import RegistrationError, _call

    body = registration_body(result)
    name = quote(result.model_name, safe="")
    with httpx.Client(base_url=registry_url, timeout=30, auth=service_auth(CommonSettings())) as client:
        try:
            model = client.get(f"/v1/models/{name}")
        except httpx.HTTPError as exc:
            raise RegistrationError(f"registry unreachable at {registry_url}: {exc}") from exc
        production_version = model.json().get("production_version") if model.is_success else None
        if production_version is not None:
            production = client.get(f"/v1/models/{name}/versions/{production_version}")
            if production.is_success:
                baseline = production_baseline(production.json(), held_out, float(result.metrics["threshold"]))
                if baseline is not None:
                    body["metrics"]["baseline"] = baseline
                    log(
                        f"production version {production_version} on the same held-out windows: "
                        f"PR-AUC {baseline['pr_auc']:.3f}"
                    )
        version = _call(client, "POST", f"/v1/models/{name}/versions", body)
        log(f"registered {result.model_name} version {version['version']} in {registry_url}")
        if not promote:
            return version, None
        decision = _call(
            client,
            "POST",
            f"/v1/models/{name}/promotions",
            {
                "version": version["version"],
                "reason": "trained with edgeloop train --telemetry",
                "actor": actor,
                "force": False,
            },
        )
        log(f"{'promoted' if decision['promoted'] else 'not promoted'}: {decision['decision']}")
        return version, decision
