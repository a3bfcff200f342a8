"""Settings of the drift service: ``EDGELOOP_DRIFT_*`` plus the shared ``EDGELOOP_*`` ones.

The defaults are those measured by ``bench/drift.py`` to raise an alarm within
100 samples of a strong shift and none over 100,000 stationary samples
(docs/drift.md, "Benchmark").
"""

from __future__ import annotations

from edgeloop_common.settings import CommonSettings
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_FEATURES = (
    "confidence,score:*,brightness_mean,contrast_std,sharpness_laplacian_var,"
    "saturation_mean,red_green_mean,blue_yellow_mean,width,height"
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_DRIFT_", extra="ignore")

    http_host: str = Field("127.0.0.1", description="HTTP bind address.")
    http_port: int = Field(8085, description="HTTP port.")

    registry_url: str = Field(
        "http://127.0.0.1:8083",
        description="Model registry base URL, for each version's reference_stats; empty: always use the first "
        "full window as the reference.",
    )
    registry_timeout_s: float = Field(5.0, gt=0, description="Timeout of one registry request.")
    reference_retry_s: float = Field(
        60.0, ge=0, description="Wait before asking the registry again for a version it had no reference for."
    )

    features: str = Field(
        DEFAULT_FEATURES,
        description="Features compared with the reference, comma separated; shell patterns allowed (score:*).",
    )
    window_size: int = Field(200, ge=10, description="Live samples per (model, version, site) window.")
    check_every: int = Field(25, ge=1, description="Compare the window with the reference every this many samples.")
    min_reference_samples: int = Field(20, ge=2, description="A feature with fewer reference values is not tested.")
    psi_threshold: float = Field(0.2, gt=0, description="PSI above this (and above sampling noise) is drift.")
    psi_bins: int = Field(10, ge=2, description="PSI bins, at the reference's quantiles.")
    psi_epsilon: float = Field(1e-4, gt=0, lt=0.01, description="Smallest bin fraction (empty bins are raised to it).")
    psi_noise_alpha: float = Field(
        1e-7,
        gt=0,
        lt=1,
        description="PSI must also exceed what sampling noise reaches with this probability "
        "(chi-square bound for the window and reference sizes): small references are noisy.",
    )
    ks_alpha: float = Field(
        1e-7,
        gt=0,
        lt=1,
        description="KS p-value below this is drift. Per check: a window is checked thousands of times "
        "a day, so this is far below 0.01.",
    )

    adwin_delta: float = Field(0.005, gt=0, lt=1, description="ADWIN confidence on labeled correctness.")
    adwin_clock: int = Field(4, ge=1, description="ADWIN looks for a change every this many labels.")

    debounce_s: float = Field(
        300.0,
        ge=0,
        description="After an alarm, the same (model, site, test, feature) raises no new DriftDetected, and the "
        "same (model, site) no new TrainingRequested, for this long.",
    )
    request_training: bool = Field(True, description="Publish TrainingRequested(reason=drift) with each alarm.")

    alarm_history: int = Field(500, ge=1, description="Recent alarms kept for GET /v1/drift.")
    max_streams: int = Field(1000, ge=1, description="(model, version, site) windows kept; the idlest go first.")
    prediction_memory: int = Field(
        100_000, ge=0, description="Sample ids remembered with their model version, to attribute labels."
    )
    metric_site_limit: int = Field(
        20, ge=0, description='Sites with their own Prometheus label value; later ones share site="other".'
    )

    # Sensor features of the failure model (docs/telemetry.md, "Drift on readings").
    telemetry_features: str = Field("*", description="Telemetry features compared, comma separated; patterns allowed.")
    telemetry_window_size: int = Field(200, ge=10, description="Sampled scored windows per (model, version, site).")
    telemetry_check_every: int = Field(25, ge=1, description="Compare the telemetry window every this many samples.")
    telemetry_sample_every: int = Field(
        30, ge=1, description="Take every this many scored windows of a device (30: windows that do not overlap)."
    )

    consumer_group: str = Field("drift", description="Kafka consumer group.")

    common: CommonSettings = Field(default_factory=CommonSettings)
