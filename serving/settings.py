"""The model server's settings, from ``TMSOPS_SERVING_*`` environment variables."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TMSOPS_SERVING_", extra="ignore")

    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    forecaster_name: str = "load-forecaster"
    detector_name: str = "anomaly-detector"
    alias: str = "champion"
    reload_interval_s: float = Field(30.0, ge=0, description="0 disables polling; POST /reload still works")
    reload_token: SecretStr | None = Field(None, description="bearer token that POST /reload requires")
    max_series: int = Field(1024, ge=1, description="series per request")
    max_points: int = Field(50_000, ge=1, description="values per series")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="request body size limit")
    otlp_endpoint: str | None = Field(
        None,
        pattern=r"^https?://[^/\s]+(/\S*)?$",
        description="OTLP/HTTP collector base URL for traces (unset: OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, else off)",
    )
    trace_sample_ratio: float = Field(1.0, ge=0, le=1, description="share of new traces kept; callers' are followed")
