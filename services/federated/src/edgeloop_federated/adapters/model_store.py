"""The model base: ``<base>/<model>/<version>/``, the TF Serving layout the model servers read (and the trainer
writes). The aggregated model is exported with the failure model's own ``export_savedmodel`` into a staging folder
beside the version's, then renamed, so a server polling the base never sees half a version."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
from edgeloop_common.telemetry import model as failure_model

from edgeloop_federated.ports import Baseline, FederatedError, FederationResult


class LocalModelStore:
    def __init__(self, base: Path) -> None:
        self.base = base

    def export(self, model_name: str, version: int, result: FederationResult, metadata: dict[str, Any]) -> Path:
        target = self.base / model_name / str(version)
        if target.exists():
            raise FederatedError(f"{target} exists already: version {version} of {model_name} was exported before")
        staging = self.base / model_name / f".staging-{version}-{uuid.uuid4().hex[:8]}"
        staging.parent.mkdir(parents=True, exist_ok=True)
        try:
            model = failure_model.build_model(result.model_kind)  # type: ignore[arg-type]
            model.set_weights(result.weights)
            failure_model.export_savedmodel(model, staging, metadata=metadata, model_name=model_name)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def load(self, version: int, artifact_uri: str) -> Baseline | None:
        parsed = urlparse(artifact_uri)
        path = Path(unquote(parsed.path)) if parsed.scheme in ("file", "") else None
        if path is None or not (path / failure_model.KERAS_CHECKPOINT).exists():
            return None  # not readable from here (another host's disk, an object store): no baseline
        model = failure_model.load_keras(path)
        return Baseline(
            version=version,
            weights=[np.asarray(w) for w in model.get_weights()],
            model_kind=failure_model.model_kind(model),
        )
