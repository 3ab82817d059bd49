"""The typed form of ``params.yaml``: one object for the whole pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tmsops.errors import DataError
from training.detector import DetectorConfig
from training.forecaster import ForecasterConfig

Baseline = Literal["naive", "seasonal_naive", "autoets", "mstl"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrometheusSource(_Strict):
    url: str = "http://127.0.0.1:9090"
    queries: dict[str, str] = Field(default_factory=dict)
    lookback_days: float = Field(14, gt=0)
    step_s: float = Field(300, gt=0)


class DataParams(_Strict):
    source: Literal["generate", "nab", "csv", "prometheus"] = "generate"
    path: str | None = None
    labels: str | None = None
    prometheus: PrometheusSource = PrometheusSource()


class GeneratorParams(_Strict):
    seed: int = 42
    services: list[str] = Field(default_factory=lambda: ["gateway", "orders", "inventory", "payments"])
    days: int = Field(14, gt=0)
    step_s: int = Field(300, gt=0)
    start: str = "2026-01-05T00:00:00"
    incidents_per_service: int = Field(2, ge=0)


class ValidationParams(_Strict):
    max_gap_steps: float = Field(12, gt=1)
    min_step_ratio: float = Field(0.5, gt=0, le=1)


class SplitParams(_Strict):
    test_fraction: float = Field(0.2, gt=0, lt=1)


class EvaluationParams(_Strict):
    season: int = Field(288, gt=1)
    baselines: list[Literal["naive", "seasonal_naive", "autoets", "mstl"]] = [
        "naive",
        "seasonal_naive",
        "autoets",
        "mstl",
    ]


class RegistryParams(_Strict):
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    experiment: str = "tmsops-training"
    forecaster_name: str = "load-forecaster"
    detector_name: str = "anomaly-detector"


class Params(_Strict):
    data: DataParams = DataParams()
    generator: GeneratorParams = GeneratorParams()
    validation: ValidationParams = ValidationParams()
    split: SplitParams = SplitParams()
    forecaster: dict[str, float | int] = Field(default_factory=dict)
    detector: dict[str, float | int] = Field(default_factory=dict)
    evaluation: EvaluationParams = EvaluationParams()
    registry: RegistryParams = RegistryParams()

    def forecaster_config(self, **overrides: int) -> ForecasterConfig:
        return ForecasterConfig(**{**self.forecaster, **overrides})  # type: ignore[arg-type]

    def detector_config(self) -> DetectorConfig:
        return DetectorConfig(**self.detector)  # type: ignore[arg-type]


def load_params(path: Path) -> Params:
    """Read and check ``params.yaml``; a bad key or value names itself."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        params = Params.model_validate(raw)
        params.forecaster_config()
        params.detector_config()
    except FileNotFoundError as error:
        raise DataError(str(path), "parameters file not found") from error
    except yaml.YAMLError as error:
        raise DataError(str(path), f"not valid YAML ({error})") from error
    except ValidationError as error:
        raise DataError(str(path), f"invalid parameters: {error}") from error
    except TypeError as error:
        raise DataError(str(path), f"unknown forecaster or detector parameter ({error})") from error
    return params
