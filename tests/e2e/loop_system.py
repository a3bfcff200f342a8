"""Every EdgeLoop service of the learning loop, in the test's process, on the distributed path.

Each service is its own FastAPI app built by its ``create_app(settings)`` with no bus given, so each builds and
owns its own :class:`~edgeloop_common.bus.kafka.KafkaBus` on the test's topic prefix, exactly as separate
processes would; each has its own fresh PostgreSQL schema. They run as uvicorn servers on free ports in the
test's event loop and call each other over HTTP (trainer -> registry and ingest, drift -> registry, gateway ->
model server). The lite model server runs on a thread of its own, serving every version of the model base the
trainer exports into. The deployer uses the Kubernetes target, into the test's namespace, for one node group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from edgeloop.demo import EmbeddedServer, wait_ready
from edgeloop_common.settings import CommonSettings
from loop_first_model import FirstModelParameters
from loop_harness import EventRecorder, FreshSchemas

log = logging.getLogger("e2e.loop")

FAIL_READINESS_ANNOTATION = "edgeloop.io/fail-readiness"
DATABASES = ("registry", "ingest", "trainer", "deployer")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class LoopConfig:
    """What the scenario sets; every threshold the loop depends on is a service setting here."""

    model_name: str
    site: str  # the device's site, and the KubeEdge node group of the same name
    topic_prefix: str
    kafka_bootstrap: str
    mqtt_host: str
    mqtt_port: int
    postgres_url: str
    work_dir: Path  # data folders and the model base
    seed_dir: Path  # the trainer's seed photos (what version 1 was trained on)
    namespace: str
    kubeconfig: Path
    training: FirstModelParameters
    incremental_epochs: int | None = None  # None: the backbone's default
    incremental_learning_rate: float | None = None
    new_sample_weight: int = 3
    promotion_margin: float = 0.02
    labels_per_training: int = 96
    drift_window: int = 20
    drift_check_every: int = 5
    rollout_timeout_s: float = 8.0
    fail_readiness_version: int = 3  # the deployer's pods of this version never become ready

    @property
    def model_base(self) -> Path:
        return self.work_dir / "models"


@dataclass
class DistributedLoop:
    config: LoopConfig
    databases: FreshSchemas
    recorder: EventRecorder = field(init=False)
    urls: dict[str, str] = field(default_factory=dict)
    _servers: list[EmbeddedServer] = field(default_factory=list)
    _exit: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __post_init__(self) -> None:
        self.recorder = EventRecorder(self.config.kafka_bootstrap, self.config.topic_prefix)

    def common(self, service: str) -> CommonSettings:
        database = self.databases.url(service) if service in self.databases.names else self.config.postgres_url
        return CommonSettings(
            mode="distributed",
            kafka_bootstrap_servers=self.config.kafka_bootstrap,
            mqtt_host=self.config.mqtt_host,
            mqtt_port=self.config.mqtt_port,
            database_url=database,
            data_dir=self.config.work_dir / "data" / service,
        )

    # -- start and stop ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.config.model_base.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._start_model_server)
        await self._serve("registry", self._registry_app())
        await self.recorder.start()  # the registry's bus created the prefixed topics
        await self._serve("ingest", self._ingest_app())
        await self._serve("inference-gateway", self._gateway_app())
        await self._serve("drift", self._drift_app())
        await self._serve("trainer", self._trainer_app())
        await self._serve("deployer", self._deployer_app())

    async def stop(self) -> None:
        for server in reversed(self._servers):
            await server.stop()
        await self.recorder.stop()
        await asyncio.to_thread(self._exit.close)

    async def _serve(self, name: str, app: Any) -> None:
        port = free_port()
        server = EmbeddedServer(name, app, "127.0.0.1", port)
        await server.start()
        self._servers.append(server)
        self.urls[name] = server.url
        await wait_ready(f"{server.url}/readyz", name, timeout_s=60)

    # -- the services -----------------------------------------------------------------------------------------

    def _start_model_server(self) -> None:
        from edgeloop_model_server.embedded import serve_in_thread
        from edgeloop_model_server.settings import Settings

        running = self._exit.enter_context(
            serve_in_thread(
                Settings(
                    http_host="127.0.0.1",
                    http_port=free_port(),
                    grpc_host="127.0.0.1",
                    grpc_port=free_port(),
                    model_name=self.config.model_name,
                    model_base_path=self.config.model_base,
                    model_version_policy="all",  # what is routed where is the gateway's choice
                    poll_interval_s=0.3,
                    inference_threads=2,
                    common=self.common("model-server"),
                )
            )
        )
        self.urls["model-server"] = running.rest_url
        self.urls["model-server-grpc"] = running.grpc_target

    def _registry_app(self) -> Any:
        from edgeloop_registry.app import create_app
        from edgeloop_registry.settings import Settings

        return create_app(
            Settings(
                promotion_margin=self.config.promotion_margin,
                outbox_poll_interval_s=0.2,
                topic_prefix=self.config.topic_prefix,
                common=self.common("registry"),
            )
        )

    def _ingest_app(self) -> Any:
        from edgeloop_ingest.app import create_app
        from edgeloop_ingest.settings import Settings

        return create_app(
            Settings(
                mqtt_client_id=f"e2e-ingest-{uuid.uuid4().hex[:8]}",
                mqtt_session_expiry_s=30,  # the shared broker forgets this test's session soon after
                topic_prefix=self.config.topic_prefix,
                common=self.common("ingest"),
            )
        )

    def _gateway_app(self) -> Any:
        from edgeloop_inference_gateway.app import create_app
        from edgeloop_inference_gateway.settings import Settings

        return create_app(
            Settings(
                model_server_rest_url=self.urls["model-server"],
                model_server_grpc_target=self.urls["model-server-grpc"],
                model_name=self.config.model_name,
                metadata_refresh_s=0.5,
                hard_example_miner="confidence",
                hard_example_confidence_threshold=0.8,
                topic_prefix=self.config.topic_prefix,
                common=self.common("inference-gateway"),
            )
        )

    def _drift_app(self) -> Any:
        from edgeloop_drift.app import create_app
        from edgeloop_drift.settings import Settings

        return create_app(
            Settings(
                registry_url=self.urls["registry"],
                window_size=self.config.drift_window,
                check_every=self.config.drift_check_every,
                reference_retry_s=1.0,
                debounce_s=3600,
                # The labeler answers the alarm; the trainer retrains once enough labels came in. A training
                # requested by drift itself would start before any label of the new condition exists.
                request_training=False,
                topic_prefix=self.config.topic_prefix,
                common=self.common("drift"),
            )
        )

    def trainer_settings(self, **overrides: Any) -> Any:
        from edgeloop_trainer.settings import Settings

        training = self.config.training
        values: dict[str, Any] = {
            "registry_url": self.urls["registry"],
            "ingest_url": self.urls["ingest"],
            "seed_data_dir": self.config.seed_dir,
            "data_dir": self.config.work_dir / "trainer",
            "model_base": self.config.model_base,
            "models": self.config.model_name,
            "retrain_every_labels": self.config.labels_per_training,
            "warm_start": True,
            "epochs": training.epochs,
            "learning_rate": training.learning_rate,
            "incremental_epochs": self.config.incremental_epochs,
            "incremental_learning_rate": self.config.incremental_learning_rate,
            "new_sample_weight": self.config.new_sample_weight,
            "backbone": training.backbone,
            "image_size": training.image_size,
            "batch_size": training.batch_size,
            "seed": training.seed,
            "eval_fraction": training.eval_fraction,
            "topic_prefix": self.config.topic_prefix,
            "common": self.common("trainer"),
        }
        values.update(overrides)
        return Settings(**values)

    def _trainer_app(self) -> Any:
        from edgeloop_trainer.app import create_app

        return create_app(self.trainer_settings())

    def _deployer_app(self) -> Any:
        from edgeloop_deployer.app import create_app
        from edgeloop_deployer.settings import Settings

        return create_app(
            Settings(
                target="kubernetes",
                node_groups=self.config.site,
                namespace=self.config.namespace,
                kubeconfig=self.config.kubeconfig,
                rollout_timeout_s=self.config.rollout_timeout_s,
                poll_interval_s=0.25,
                extra_pod_annotations={str(self.config.fail_readiness_version): {FAIL_READINESS_ANNOTATION: "true"}},
                models_host_path="/var/lib/edgeloop/models",  # no PersistentVolume on simulated nodes
                topic_prefix=self.config.topic_prefix,
                common=self.common("deployer"),
            )
        )

    # -- HTTP helpers -----------------------------------------------------------------------------------------

    async def call(self, service: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.urls[service], timeout=30.0) as client:
            return await client.request(method, path, **kwargs)

    async def json(self, service: str, method: str, path: str, *, expect: int = 200, **kwargs: Any) -> Any:
        response = await self.call(service, method, path, **kwargs)
        if response.status_code != expect:
            raise AssertionError(f"{service} {method} {path}: HTTP {response.status_code} {response.text[:500]}")
        return response.json()
