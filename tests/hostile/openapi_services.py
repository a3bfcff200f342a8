"""Every service with an OpenAPI document, built in standalone mode (SQLite, its own in-process bus, folders under
the test's temporary directory) for the schemathesis sweep of ``test_hostile_openapi.py``.

What a service would reach outside itself is replaced where the sweep would otherwise wait on it or do real work:
the gateway gets a model client that scores by hash, the trainer an engine that refuses to train (a request is
queued and its run fails at once), the drift service a registry that has no versions. The edge agent and the
model server are the real ones: the agent against the real Mosquitto (its API only reads state), the model server
on the cached test model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from edgeloop_common.serving import BatchPrediction, ModelRoute
from edgeloop_common.settings import CommonSettings
from fastapi import FastAPI


class HashScoringModel:
    """A model client that answers every image at once, from its hash (the gateway's API, not a model, is tried)."""

    async def classify(self, route: ModelRoute, images: Sequence[bytes]) -> BatchPrediction:
        scores = []
        for image in images:
            first = hashlib.sha256(image).digest()[0] / 255.0
            scores.append({"cat": first, "dog": 1.0 - first})
        return BatchPrediction(model_name=route.model_name, model_version=route.version or 1, scores=scores)

    async def available(self, route: ModelRoute) -> bool:
        return True

    async def close(self) -> None:
        return None


class NoResults:
    async def send(self, site_id: str, device_id: str, payload: bytes, *, traceparent: str | None = None) -> None:
        return None

    async def ready(self) -> bool:
        return True


class RefusingEngine:
    """A training engine that refuses at once: a requested run fails instead of training for minutes."""

    def train(self, job: Any, progress: Any) -> Any:
        raise RuntimeError("training is off during the API sweep")

    def discard(self, model_name: str, version: int) -> bool:
        return False

    def remove_stale_staging(self) -> list[Path]:
        return []


def _no_versions_registry() -> Any:
    from edgeloop_drift.adapters.registry import RegistryReferences

    stand_in = FastAPI()

    @stand_in.get("/v1/models/{name}/versions/{version}")
    async def missing(name: str, version: int) -> Any:
        from fastapi.responses import JSONResponse

        return JSONResponse({"detail": "no such version"}, status_code=404)

    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=stand_in))
    return RegistryReferences("http://registry.invalid", client=client)


def _common(data_dir: Path, **overrides: Any) -> CommonSettings:
    return CommonSettings(mode="standalone", data_dir=data_dir, **overrides)


def registry(data_dir: Path, **_: Any) -> FastAPI:
    from edgeloop_registry.app import create_app
    from edgeloop_registry.settings import Settings

    return create_app(Settings(common=_common(data_dir)))


def ingest(data_dir: Path, **_: Any) -> FastAPI:
    from edgeloop_ingest.app import create_app
    from edgeloop_ingest.settings import Settings

    return create_app(Settings(mqtt_enabled=False, common=_common(data_dir)))


def gateway(data_dir: Path, **_: Any) -> FastAPI:
    from edgeloop_inference_gateway.app import create_app
    from edgeloop_inference_gateway.settings import Settings

    settings = Settings(mqtt_results=False, common=_common(data_dir))
    return create_app(settings, model_client=HashScoringModel(), results=NoResults())


def drift(data_dir: Path, **_: Any) -> FastAPI:
    from edgeloop_drift.app import create_app
    from edgeloop_drift.settings import Settings

    return create_app(Settings(common=_common(data_dir)), references=_no_versions_registry())


def trainer(data_dir: Path, **_: Any) -> FastAPI:
    from edgeloop_trainer.app import create_app
    from edgeloop_trainer.settings import Settings

    settings = Settings(
        registry_url="http://127.0.0.1:9",
        ingest_url="",
        model_base=data_dir / "models",
        models="catdog",
        common=_common(data_dir),
    )
    return create_app(settings, engine=RefusingEngine())


def deployer(data_dir: Path, **_: Any) -> FastAPI:
    from edgeloop_deployer.app import create_app
    from edgeloop_deployer.settings import Settings

    settings = Settings(
        target="local",
        local_models_root=data_dir / "node-groups",
        rollout_timeout_s=0.5,
        poll_interval_s=0.02,
        common=_common(data_dir),
    )
    return create_app(settings)


def edge(data_dir: Path, *, mqtt_broker: tuple[str, int], **_: Any) -> FastAPI:
    from edgeloop_edge.app import create_app
    from edgeloop_edge.settings import Settings

    site = f"sweep-{hashlib.sha256(str(data_dir).encode()).hexdigest()[:8]}"
    settings = Settings(
        site=site,
        mqtt_client_id=f"edge-{site}",
        mqtt_session_expiry_s=30,
        model_server_url="http://127.0.0.1:9",
        common=_common(data_dir, mqtt_host=mqtt_broker[0], mqtt_port=mqtt_broker[1]),
    )
    return create_app(settings)


def model_server(data_dir: Path, *, model_base: Path, model_name: str, **_: Any) -> FastAPI:
    from edgeloop_model_server.app import create_app

    from tests.model_fixtures import lite_server_settings

    return create_app(lite_server_settings(model_base, model_name))


@dataclass(frozen=True)
class SweptService:
    name: str
    build: Callable[..., FastAPI]
    needs: tuple[str, ...] = ()  # fixtures the factory takes beyond the data folder


SERVICES = (
    SweptService("registry", registry),
    SweptService("ingest", ingest),
    SweptService("inference-gateway", gateway),
    SweptService("drift", drift),
    SweptService("trainer", trainer),
    SweptService("deployer", deployer),
    SweptService("edge", edge, needs=("mqtt_broker",)),
    SweptService("model-server", model_server, needs=("model_base", "model_name")),
)
