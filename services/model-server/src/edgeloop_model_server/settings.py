"""Settings of ``edgeloop model-server``, read from ``EDGELOOP_MODEL_SERVER_*`` variables.

Kept free of TensorFlow imports so ``edgeloop model-server --help`` is fast.
"""

from __future__ import annotations

from pathlib import Path

from edgeloop_common.settings import CommonSettings
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_MODEL_SERVER_", extra="ignore")

    http_host: str = Field("127.0.0.1", description="REST bind address (0.0.0.0 in a container).")
    http_port: int = Field(8501, description="REST port (TF Serving's --rest_api_port).")
    grpc_host: str = Field("127.0.0.1", description="gRPC bind address (0.0.0.0 in a container).")
    grpc_port: int = Field(8500, description="gRPC port (TF Serving's --port); 0 picks a free port.")
    model_name: str = Field("model", description="Name of the served model (TF Serving's MODEL_NAME).")
    model_base_path: Path = Field(
        Path("models"),
        description="Folder holding MODEL_NAME/VERSION/saved_model.pb, as the tensorflow/serving image's "
        "MODEL_BASE_PATH.",
    )
    model_dir: Path | None = Field(
        None,
        description="The model's own folder, holding VERSION/saved_model.pb (tensorflow_model_server's "
        "--model_base_path); wins over MODEL_BASE_PATH/MODEL_NAME when set.",
    )
    model_version_policy: str = Field(
        "latest:1", description="Which versions to serve: 'latest:N', 'all' or 'specific:1,2'."
    )
    version_labels: str = Field("", description="Version labels, e.g. 'stable=1,canary=2'.")
    model_config_file: Path | None = Field(
        None,
        description="TF Serving model config (model_config_list text format) for several models; "
        "replaces MODEL_NAME, MODEL_BASE_PATH, MODEL_VERSION_POLICY and VERSION_LABELS.",
    )
    poll_interval_s: float = Field(
        1.0, gt=0, description="How often the model folders are scanned for new or removed versions."
    )
    inference_threads: int = Field(4, ge=1, description="Threads running model calls off the event loop.")
    warmup: bool = Field(True, description="Run warm-up requests before a version becomes AVAILABLE.")
    unload_grace_s: float = Field(
        30.0, ge=0, description="Longest wait for in-flight requests before an old version is unloaded."
    )
    common: CommonSettings = Field(default_factory=CommonSettings)
