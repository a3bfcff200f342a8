"""The gateway's settings: ``EDGELOOP_INFERENCE_GATEWAY_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from edgeloop_common.mining import MinerName
from edgeloop_common.serving import ModelServerProtocol
from edgeloop_common.settings import CommonSettings
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_INFERENCE_GATEWAY_", extra="ignore")

    http_host: str = Field("127.0.0.1", description="HTTP bind address.")
    http_port: int = 8082

    # The model server (TF Serving or `edgeloop model-server`).
    model_server_protocol: ModelServerProtocol = Field(
        "rest", description="rest or grpc, for classification and the failure model's scoring."
    )
    model_server_rest_url: str = Field(
        "http://127.0.0.1:8501", description="TF Serving REST base URL (also used by the :predict passthrough)."
    )
    model_server_grpc_target: str = Field("127.0.0.1:8500", description="TF Serving gRPC host:port.")
    request_timeout_s: float = Field(10.0, description="Timeout of one model server call.")
    connect_timeout_s: float = Field(2.0, description="Timeout to connect to the model server.")
    model_retries: int = Field(2, ge=0, description="Retries of a transient model server failure, per call.")
    retry_backoff_s: float = Field(0.2, description="First backoff between retries (doubles each time).")
    metadata_refresh_s: float = Field(
        5.0, description="How long a model's resolved version and signature are cached before asking again."
    )

    # Routing: which model and version serves which site.
    model_name: str = Field("edgeloop-classifier", description="Model that serves sites without a route.")
    model_version: str = Field("", description="Version number or label of model_name; empty: the latest.")
    site_routes: str = Field(
        "", description="Per-site routes: 'site-a=model:3,site-b=model:stable,site-c=model' (version or label)."
    )

    # Signature fallbacks, used only where the model's metadata does not tell.
    signature_name: str = "serving_default"
    input_name: str = Field("image_bytes", description="Fallback input name when the metadata has no string input.")
    scores_output: str = Field("scores", description="Preferred name of the per-class scores output.")
    classes_output: str = Field("classes", description="Preferred name of the class-names output.")

    # Dynamic batching.
    max_batch_size: int = Field(32, ge=1, description="Most images in one model call; 1 disables batching.")
    max_wait_ms: float = Field(5.0, ge=0.0, description="Longest a request waits for others to join its batch.")
    max_concurrent_batches: int = Field(2, ge=1, description="Model calls in flight at once, per model and version.")

    # Inputs.
    max_image_bytes: int = Field(20 * 1024 * 1024, description="Largest image accepted (HTTP 413 / dead letter).")
    blob_fetch_timeout_s: float = 10.0

    # Results to devices over MQTT.
    mqtt_results: bool = Field(True, description="Send each result to dt/edgeloop/{site}/{device}/result.")
    mqtt_qos: int = Field(1, ge=0, le=1)
    mqtt_protocol: Literal["5", "3.1.1"] = Field(
        "5",
        description="MQTT protocol version: 5 (results carry the trace's traceparent as a user property), or 3.1.1 "
        "for brokers without MQTT 5 (the embedded one).",
    )
    mqtt_ack_timeout_s: float = Field(5.0, description="How long a handler waits for the broker's PUBACK.")

    # Hard-example mining (edgeloop_common.mining): the verdict goes into InferenceCompleted.hard_example / _reason.
    hard_example_miner: MinerName = Field(
        "confidence", description="Which miner flags hard examples: none, confidence, entropy, cross_entropy or ibt."
    )
    hard_example_confidence_threshold: float = Field(
        0.8, ge=0.0, le=1.0, description="confidence: hard when the top score is below this."
    )
    hard_example_entropy_threshold: float = Field(
        0.7, ge=0.0, le=1.0, description="entropy: hard when the normalised entropy of the scores is above this."
    )
    hard_example_cross_entropy_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="cross_entropy (Sedna CrossEntropyFilter): hard when 1 - entropy is below this.",
    )
    hard_example_ibt_threshold_img: float = Field(
        0.5, ge=0.0, le=1.0, description="ibt (Sedna IBTFilter): hard when the share of uncertain classes >= 1 - this."
    )
    hard_example_ibt_threshold_box: float = Field(
        0.8, ge=0.0, le=1.0, description="ibt: a class is uncertain when max(score, 1 - score) is at most this."
    )

    # Sensor telemetry scored by the failure model (docs/telemetry.md, "Scoring").
    telemetry_scoring: bool = Field(True, description="Score TelemetryReceived with the failure model.")
    telemetry_model_name: str = Field("machine-failure", description="The failure model (its deployments route it).")
    telemetry_edge_sites: str = Field(
        "", description="Sites whose edge agent scores their telemetry, comma separated: not scored again here."
    )
    telemetry_max_batch: int = Field(256, ge=1, description="Most windows in one :predict call.")
    telemetry_max_wait_ms: float = Field(5.0, ge=0.0, description="Longest a window waits for others to join it.")
    telemetry_max_pending: int = Field(8192, ge=1, description="Windows queued for scoring before intake waits.")
    telemetry_alert_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Alert threshold for every version; unset: each version's registered one."
    )
    telemetry_default_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Threshold of a version whose registered one cannot be read."
    )
    telemetry_hysteresis: float = Field(
        0.1, ge=0.0, le=1.0, description="A device in alert re-arms once its probability is below threshold - this."
    )
    registry_url: str = Field(
        "http://127.0.0.1:8083", description="Model registry, for each failure-model version's alert threshold."
    )

    consumer_group: str = "inference-gateway"

    common: CommonSettings = Field(default_factory=CommonSettings)
