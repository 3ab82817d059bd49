"""The model server: ``bentoml serve serving.service:ModelServer`` (port 3000).

``POST /forecast`` and ``POST /detect`` take ``{"series": [...]}``; both are batchable,
so BentoML's adaptive batching merges the series of concurrent requests into one model
call. ``GET /model-info`` and ``POST /reload`` come from a small FastAPI app mounted
beside them. ``/livez``, ``/readyz`` (both models loaded), ``/metrics`` and the OpenAPI
document at ``/docs.json`` are BentoML's own. With an OTLP endpoint configured, requests are
traced in their callers' traces (:mod:`serving.tracing`).
"""

from __future__ import annotations

import hmac
import logging
from datetime import UTC, datetime
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.validators import ContentType
from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse, Response

from serving.champions import Champions, Loaded
from serving.errors import HttpConventions, error_body
from serving.schemas import (
    LIMITS,
    DetectBatch,
    DetectResult,
    ForecastBatch,
    ForecastResult,
    ForecastSeries,
)
from serving.settings import ServingSettings
from serving.tracing import bentoml_tracing

log = logging.getLogger("tmsops.serving")
admin = FastAPI(title="tmsops model server administration", docs_url=None, redoc_url=None, openapi_url=None)
# max_latency_ms is BentoML's deadline for a queued request (past it the request gets a 503),
# not the batching window: the window adapts to the traffic below that bound.
BATCH = {"batchable": True, "max_batch_size": 4096, "max_latency_ms": 5000}
JSON_LIST = ContentType("application/json")  # spares BentoML a JSON schema per response


@bentoml.service(name="tmsops-models", http={"port": 3000}, workers=1, threads=1, **bentoml_tracing(ServingSettings()))
@bentoml.asgi_app(admin, path="/")
class ModelServer:
    def __init__(self) -> None:
        self.settings = ServingSettings()
        LIMITS.max_points = self.settings.max_points
        LIMITS.max_series = self.settings.max_series
        self.champions = Champions(self.settings, on_change=self._apply_limits)
        try:
            self.champions.refresh()
        except Exception:  # not ready yet; /readyz says so and the poller keeps trying
            log.exception("no champion models loaded at start-up")
        self.champions.start_polling()

    def __is_ready__(self) -> bool:
        return self.champions.ready

    def _apply_limits(self) -> None:
        if forecaster := self.champions.forecaster:
            LIMITS.context = forecaster.model.forecaster.config.context
            LIMITS.horizon = forecaster.model.forecaster.config.horizon

    @bentoml.on_shutdown
    def _stop_polling(self) -> None:
        self.champions.stop()

    @bentoml.api(**BATCH)
    def forecast(self, series: ForecastBatch) -> Annotated[list[ForecastResult], JSON_LIST]:
        """p10/p50/p90 for the next steps of every series (one model call per batch)."""
        loaded = _required(self.champions.forecaster, "forecaster")
        model = loaded.model
        context = model.forecaster.config.context
        contexts = np.array([item.values[-context:] for item in series], dtype=np.float64)
        origins = np.array([_as_datetime64(item.last_time()) for item in series], dtype="datetime64[ns]")
        quantiles = model.forecast(contexts, origins)
        return [_forecast_result(item, quantiles[index], loaded) for index, item in enumerate(series)]

    @bentoml.api(**BATCH)
    def detect(self, series: DetectBatch) -> Annotated[list[DetectResult], JSON_LIST]:
        """Anomaly score of every point (causal), and the points at or over the threshold."""
        loaded = _required(self.champions.detector, "detector")
        threshold = float(loaded.model.threshold)
        results = []
        for item in series:
            scores = loaded.model.score(np.asarray(item.values, dtype=np.float64))
            anomalies = np.flatnonzero(scores >= threshold).tolist()
            results.append(
                DetectResult.model_construct(  # our own values: no second validation
                    id=item.id,
                    scores=scores.tolist(),
                    anomalies=anomalies,
                    threshold=threshold,
                    model=loaded.name,
                    version=loaded.version,
                )
            )
        return results

    @admin.get("/model-info")
    def model_info(self) -> JSONResponse:
        """Names, versions, aliases, training time and evaluation metrics of the loaded models."""
        models = [item.info for item in (self.champions.forecaster, self.champions.detector) if item]
        body: dict[str, Any] = {
            "ready": self.champions.ready,
            "models": models,
            "forecast": {"context": LIMITS.context, "horizon": LIMITS.horizon},
            "last_error": self.champions.last_error,
            "reload_interval_s": self.settings.reload_interval_s,
        }
        return JSONResponse(body)

    @admin.post("/reload")
    def reload(self, authorization: Annotated[str | None, Header()] = None) -> Response:
        """Load the current champions now (bearer token required)."""
        token = self.settings.reload_token
        if token is None:
            return _error(403, "reload is disabled: set TMSOPS_SERVING_RELOAD_TOKEN on the server")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.get_secret_value().encode()
        ):
            return _error(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        try:
            versions = self.champions.refresh()
        except Exception as error:
            return _error(503, f"the registry could not be read: {error}", retry_after=5)
        return JSONResponse({"loaded": versions})


ModelServer.add_asgi_middleware(  # type: ignore[attr-defined]
    HttpConventions, max_body_bytes=ServingSettings().max_body_bytes
)


def _required(loaded: Loaded | None, kind: str) -> Loaded:
    if loaded is None:
        raise bentoml.exceptions.ServiceUnavailable(f"no champion {kind} is loaded yet; retry later")
    return loaded


def _as_datetime64(moment: datetime | None) -> np.datetime64:
    if moment is None:
        return np.datetime64("1970-01-05T00:00")  # no timestamps given: a neutral Monday midnight
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return np.datetime64(moment, "ns")


def _forecast_result(item: ForecastSeries, quantiles: np.ndarray, loaded: Loaded) -> ForecastResult:
    steps = item.horizon or quantiles.shape[1]
    last, step = item.last_time(), item.step()
    stamps = [last + step * (k + 1) for k in range(steps)] if last is not None and step is not None else None
    return ForecastResult.model_construct(  # our own values: no second validation
        id=item.id,
        timestamps=stamps,
        p10=quantiles[0, :steps].tolist(),
        p50=quantiles[1, :steps].tolist(),
        p90=quantiles[2, :steps].tolist(),
        model=loaded.name,
        version=loaded.version,
    )


def _error(
    status: int, message: str, *, retry_after: int | None = None, headers: dict[str, str] | None = None
) -> Response:
    headers = {**(headers or {}), **({"Retry-After": str(retry_after)} if retry_after else {})}
    return Response(error_body(status, message), status_code=status, headers=headers, media_type="application/json")
