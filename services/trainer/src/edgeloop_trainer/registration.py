"""``edgeloop train --register URL``: register a version trained by hand in the registry, like the service does.

The body is the one the trainer service sends (docs/learning-loop.md): the
figures of the held-out split, its ``evaluation_set_id``, the drift reference
measured on the held-out images, the training parameters as lineage.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from edgeloop_common.api_auth import service_auth
from edgeloop_common.images import InvalidImageError, inspect_image
from edgeloop_common.reference_stats import compute_reference_stats
from edgeloop_common.settings import CommonSettings

from edgeloop_trainer import export
from edgeloop_trainer.dataset import load_split
from edgeloop_trainer.training import TrainingResult, serving_scores


class RegistrationError(Exception):
    """The registry could not be reached or refused the version; the message says why."""


def registration_body(
    result: TrainingResult,
    data_dir: Path,
    *,
    eval_fraction: float,
    seed: int,
    batch_size: int,
) -> dict[str, Any]:
    recorded = export.read_metadata(result.path)
    split = load_split(data_dir, eval_fraction, seed)  # the same split train_classifier held out
    files = [sample.path for sample in split.evaluation]
    scores, class_names = serving_scores(result.path, files, batch_size)
    records = []
    for path, row in zip(files, scores, strict=True):
        try:
            image_stats = inspect_image(path.read_bytes()).stats
        except InvalidImageError:
            image_stats = {}
        records.append({"scores": dict(zip(class_names, map(float, row), strict=True)), "image_stats": image_stats})
    eval_lines = sorted(
        f"{hashlib.sha256(sample.path.read_bytes()).hexdigest()}:{split.class_names[sample.label]}"
        for sample in split.evaluation
    )
    metrics = dict(result.metrics)
    metrics["per_class"] = {
        name: {**figures, "support": figures["eval_samples"]} for name, figures in result.metrics["per_class"].items()
    }
    metrics["train_counts"] = {name: f["train_samples"] for name, f in result.metrics["per_class"].items()}
    metrics["eval_counts"] = {name: f["eval_samples"] for name, f in result.metrics["per_class"].items()}
    metrics["evaluation_set_id"] = "evalset-" + hashlib.sha256("\n".join(eval_lines).encode()).hexdigest()[:16]
    started_at = datetime.now(UTC) - timedelta(seconds=result.duration_s)
    return {
        "version": result.version,
        "artifact_uri": result.path.resolve().as_uri(),
        "signature": {
            "name": export.SIGNATURE_NAME,
            "inputs": {export.INPUT_NAME: "DT_STRING"},
            "outputs": {export.SCORES_OUTPUT: "DT_FLOAT", export.CLASSES_OUTPUT: "DT_STRING"},
        },
        "metrics": metrics,
        "reference_stats": compute_reference_stats(records),
        "lineage": {
            "dataset_snapshot_id": None,
            "parent_version": None,
            "parameters": {
                **recorded["training"],
                "image_size": recorded["image_size"],
                "backbone": recorded.get("backbone"),
                "eval_fraction": eval_fraction,
                "warm_start": False,
                "trained_by": "edgeloop train",
            },
        },
        "train_started_at": started_at.isoformat(),
        "train_duration_s": round(result.duration_s, 3),
    }


def register_result(
    registry_url: str,
    result: TrainingResult,
    data_dir: Path,
    *,
    promote: bool,
    eval_fraction: float,
    seed: int,
    batch_size: int,
    actor: str = "edgeloop-train",
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """POST the version, then (``promote``) ask the registry's policy to promote it; the answers, as JSON."""
    body = registration_body(
        result,
        data_dir,
        eval_fraction=eval_fraction,
        seed=seed,
        batch_size=batch_size,
    )
    name = quote(result.model_name, safe="")
    with httpx.Client(base_url=registry_url, timeout=30, auth=service_auth(CommonSettings())) as client:
        version = _call(client, "POST", f"/v1/models/{name}/versions", body)
        if not promote:
            return version, None
        decision = _call(
            client,
            "POST",
            f"/v1/models/{name}/promotions",
            {"version": version["version"], "reason": "trained with edgeloop train", "actor": actor, "force": False},
        )
        return version, decision


def _call(client: httpx.Client, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        response = client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise RegistrationError(f"registry unreachable at {client.base_url}: {exc}") from exc
    if not response.is_success:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise RegistrationError(f"registry refused {method} {path} ({response.status_code}): {detail}")
    answer: dict[str, Any] = response.json()
    return answer
