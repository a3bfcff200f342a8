"""Every EdgeLoop service of the learning loop, in the test's process, on the distributed path.

Wired by :class:`edgeloop.system.System`, as the demo is, but with no bus given: each service builds and owns its
own :class:`~edgeloop_common.bus.kafka.KafkaBus` on the test's topic prefix, exactly as separate processes would;
each has its own fresh PostgreSQL schema. They run as uvicorn servers on free ports in the test's event loop and
call each other over HTTP (trainer -> registry and ingest, drift -> registry, gateway -> model server). The lite
model server runs on a thread of its own, serving every version of the model base the trainer exports into. The
deployer uses the Kubernetes target, into the test's namespace, for one node group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from edgeloop.system import System, SystemConfig
from edgeloop_common.settings import CommonSettings
from loop_first_model import FirstModelParameters
from loop_harness import EventRecorder, FreshSchemas

log = logging.getLogger("e2e.loop")

FAIL_READINESS_ANNOTATION = "edgeloop.io/fail-readiness"
DATABASES = ("registry", "ingest", "trainer", "deployer")


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
    """The loop's services (:class:`edgeloop.system.System`, no shared bus) plus the test's event recorder."""

    config: LoopConfig
    databases: FreshSchemas
    recorder: EventRecorder = field(init=False)
    system: System = field(init=False)

    def __post_init__(self) -> None:
        config = self.config
        self.recorder = EventRecorder(config.kafka_bootstrap, config.topic_prefix)
        training = config.training
        self.system = System(
            SystemConfig(
                model_name=config.model_name,
                model_base=config.model_base,
                common=self.common,
                topic_prefix=config.topic_prefix,
                ready_timeout_s=60,
                settings={
                    "model-server": {"inference_threads": 2},
                    "registry": {"promotion_margin": config.promotion_margin, "outbox_poll_interval_s": 0.2},
                    "ingest": {"mqtt_session_expiry_s": 30},  # the shared broker forgets this test's session soon
                    "inference-gateway": {
                        "hard_example_miner": "confidence",
                        "hard_example_confidence_threshold": 0.8,
                    },
                    "drift": {
                        "window_size": config.drift_window,
                        "check_every": config.drift_check_every,
                        "reference_retry_s": 1.0,
                        "debounce_s": 3600,
                        # The labeler answers the alarm; the trainer retrains once enough labels came in. A training
                        # requested by drift itself would start before any label of the new condition exists.
                        "request_training": False,
                    },
                    "trainer": {
                        "seed_data_dir": config.seed_dir,
                        "data_dir": config.work_dir / "trainer",
                        "retrain_every_labels": config.labels_per_training,
                        "warm_start": True,
                        "epochs": training.epochs,
                        "learning_rate": training.learning_rate,
                        "incremental_epochs": config.incremental_epochs,
                        "incremental_learning_rate": config.incremental_learning_rate,
                        "new_sample_weight": config.new_sample_weight,
                        "backbone": training.backbone,
                        "image_size": training.image_size,
                        "batch_size": training.batch_size,
                        "seed": training.seed,
                        "eval_fraction": training.eval_fraction,
                    },
                    "deployer": {
                        "target": "kubernetes",
                        "node_groups": config.site,
                        "namespace": config.namespace,
                        "kubeconfig": config.kubeconfig,
                        "rollout_timeout_s": config.rollout_timeout_s,
                        "poll_interval_s": 0.25,
                        "extra_pod_annotations": {
                            str(config.fail_readiness_version): {FAIL_READINESS_ANNOTATION: "true"}
                        },
                        "models_host_path": "/var/lib/edgeloop/models",  # no PersistentVolume on simulated nodes
                    },
                },
            )
        )

    @property
    def urls(self) -> dict[str, str]:
        return self.system.urls

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

    async def start(self) -> None:
        await self.system.start_model_server()
        await self.system.start(["registry"])
        await self.recorder.start()  # the registry's bus created the prefixed topics
        await self.system.start()

    async def stop(self) -> None:
        await self.system.stop()
        await self.recorder.stop()

    def trainer_settings(self, **overrides: Any) -> Any:
        return self.system.settings_for("trainer", **overrides)

    async def call(self, service: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.system.call(service, method, path, **kwargs)

    async def json(self, service: str, method: str, path: str, *, expect: int = 200, **kwargs: Any) -> Any:
        return await self.system.json(service, method, path, expect=expect, **kwargs)
