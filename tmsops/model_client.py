"""Typed async client of the model server (``POST /forecast``, ``POST /detect``, ``GET /model-info``).

Temporary failures (connection errors, timeouts, 429, 502, 503, 504) are retried with
exponential backoff and full jitter, honouring ``Retry-After``; a request the server
refuses (4xx) is never retried. A circuit breaker stops calling a server that failed
``breaker_failures`` calls in a row, for ``breaker_reset_s`` seconds, then lets one trial
call through. Forecast and detection are pure computations, so retrying a POST is safe.

The request and response bodies are redefined here: the core never imports ``serving``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Annotated, Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from tmsops.errors import PermanentError, TemporaryError

log = logging.getLogger("tmsops.model_client")

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
BreakerState = Literal["closed", "open", "half_open"]
Admission = Literal["call", "trial"]
Outcome = Literal["ok", "failed"]
RETRY_STATUSES = frozenset({429, 502, 503, 504})
T = TypeVar("T")


class SeriesIn(BaseModel):
    """One series to forecast or score: values oldest first, with timestamps, or start and step, or neither."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field("", max_length=512)
    values: list[FiniteFloat] = Field(min_length=1)
    timestamps: list[datetime] | None = None
    start: datetime | None = None
    step_s: float | None = Field(None, gt=0)


class Forecast(BaseModel):
    """p10/p50/p90 for the next steps of one series, and the model that made them."""

    id: str
    timestamps: list[datetime] | None
    p10: list[float]
    p50: list[float]
    p90: list[float]
    model: str
    version: str


class Detection(BaseModel):
    """Anomaly score of every point of one series, and the indices at or over the threshold."""

    id: str
    scores: list[float]
    anomalies: list[int]
    threshold: float
    model: str
    version: str


class FieldError(BaseModel):
    """One field of a request the server refused, and why."""

    field: str
    message: str


_FORECASTS = TypeAdapter(list[Forecast])
_DETECTIONS = TypeAdapter(list[Detection])
_FIELD_ERRORS = TypeAdapter(list[FieldError])


class ModelServerUnavailable(TemporaryError):
    """The model server is down, not ready or overloaded; retrying later may help.

    ``retry_after`` is the server's Retry-After when it sent one (``retry_after_given``), else 1 s.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, details: dict[str, object] | None = None
    ) -> None:
        super().__init__(message, retry_after=1.0 if retry_after is None else retry_after, details=details)
        self.retry_after_given = retry_after is not None


class CircuitOpenError(ModelServerUnavailable):
    """The circuit breaker is open: the call was refused without reaching the server."""


class ModelResponseError(PermanentError):
    """The model server answered with an error that a retry will not change."""

    def __init__(self, message: str, *, status: int, code: str, fields: Sequence[FieldError] = ()) -> None:
        super().__init__(message, details={"status": status, "code": code, "fields": [f.model_dump() for f in fields]})
        self.status = status
        self.code = code
        self.fields = list(fields)


class ModelRequestError(ModelResponseError):
    """The model server refused the request (4xx); ``fields`` names the bad fields."""


class ModelServerError(ModelResponseError):
    """The model server failed on the request (a 5xx other than 502/503/504) or answered nonsense."""


class _Temporary(Exception):
    """One attempt failed in a way a retry may fix; ``retry_after`` is the server's Retry-After."""

    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.retry_after = retry_after


class CircuitBreaker:
    """Consecutive-failure breaker: closed -> open -> half-open (one trial call) -> closed or open."""

    def __init__(self, failures: int, reset_s: float) -> None:
        self.threshold = failures
        self.reset_s = reset_s
        self.failures = 0
        self.opened_at: float | None = None
        self.trial_running = False

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return "closed"
        if self.trial_running or time.monotonic() - self.opened_at >= self.reset_s:
            return "half_open"
        return "open"

    def wait_s(self) -> float:
        """Seconds until a trial call may go through (0 when closed)."""
        if self.opened_at is None:
            return 0.0
        return max(self.reset_s - (time.monotonic() - self.opened_at), 0.0)

    def admit(self) -> Admission | None:
        """Whether a call may go out now, and as what; in half-open state only one trial at a time."""
        state = self.state
        if state == "closed":
            return "call"
        if state == "open" or self.trial_running:
            return None
        self.trial_running = True
        return "trial"

    def record(self, admission: Admission, outcome: Outcome | None) -> None:
        """Count a finished call; ``None`` means it ended without an outcome (cancelled)."""
        if admission == "trial":
            self.trial_running = False
        if outcome == "ok":
            self.failures, self.opened_at = 0, None
        elif outcome == "failed":
            self.failures += 1
            if admission == "trial" or self.failures >= self.threshold:
                self.opened_at = time.monotonic()


class ModelClient:
    """Async client of the model server; use as ``async with ModelClient(url) as client``."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        breaker_failures: int = 5,
        breaker_reset_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"model server URL must start with http:// or https://, got {base_url!r}")
        if retries < 0 or breaker_failures < 1:
            raise ValueError("retries must be >= 0 and breaker_failures >= 1")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._breaker = CircuitBreaker(breaker_failures, breaker_reset_s)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, transport=transport)

    async def __aenter__(self) -> ModelClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def breaker_state(self) -> BreakerState:
        return self._breaker.state

    async def forecast(self, series: Sequence[SeriesIn], horizon: int | None = None) -> list[Forecast]:
        """Quantile forecasts, one per series in the same order; ``horizon`` defaults to the model's."""
        if not series:
            return []
        items = [{**item.model_dump(mode="json"), "horizon": horizon} for item in series]
        body = await self._call("POST", "/forecast", json={"series": items})
        return _parse(_FORECASTS, body, len(series), "/forecast")

    async def detect(self, series: Sequence[SeriesIn]) -> list[Detection]:
        """Anomaly scores, one result per series in the same order."""
        if not series:
            return []
        items = [item.model_dump(mode="json") for item in series]
        body = await self._call("POST", "/detect", json={"series": items})
        return _parse(_DETECTIONS, body, len(series), "/detect")

    async def model_info(self) -> dict[str, Any]:
        """Names, versions and metrics of the loaded models, as the server reports them."""
        body = await self._call("GET", "/model-info")
        if not isinstance(body, dict):
            raise ModelServerError(f"{self.base_url}/model-info answered {body!r:.200}", status=200, code="bad_body")
        return body

    async def ready(self) -> bool:
        """Whether both models are loaded (``GET /readyz``); one request, no retry, no breaker, never raises."""
        try:
            response = await self._http.get("/readyz")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call through the breaker, with retries; returns the decoded JSON body."""
        admission = self._breaker.admit()
        if admission is None:
            raise self._circuit_open()
        outcome: Outcome | None = None
        try:
            body = await self._with_retries(method, path, **kwargs)
            outcome = "ok"
            return body
        except ModelRequestError:
            outcome = "ok"  # the server answered: it is up, the request was wrong
            raise
        except (ModelServerUnavailable, ModelServerError):
            outcome = "failed"
            raise
        finally:
            self._breaker.record(admission, outcome)

    async def _with_retries(self, method: str, path: str, **kwargs: Any) -> Any:
        attempt = 0
        while True:
            try:
                return await self._attempt(method, path, **kwargs)
            except _Temporary as failure:
                attempt += 1
                if attempt > self.retries:
                    raise self._unavailable(failure, attempt) from failure.__cause__
                delay = self._delay(attempt - 1, failure.retry_after)
                log.info("%s %s%s: %s; retry %d in %.2f s", method, self.base_url, path, failure, attempt, delay)
                await asyncio.sleep(delay)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """The server's Retry-After, else full-jitter exponential backoff; capped at max_backoff_s."""
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        return random.uniform(0.0, min(self.max_backoff_s, self.backoff_s * 2**attempt))

    async def _attempt(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise _Temporary(f"{type(error).__name__} {error}".strip()) from error
        except httpx.RequestError as error:
            raise ModelServerError(f"{self.base_url}{path}: {error}", status=0, code="bad_response") from error
        if response.status_code in RETRY_STATUSES:
            raise _Temporary(f"it answered {response.status_code}", _retry_after(response))
        if response.status_code >= 400:
            raise self._refused(path, response)
        try:
            return response.json()
        except ValueError as error:
            message = f"{self.base_url}{path} answered {response.status_code} with a body that is not JSON"
            raise ModelServerError(message, status=response.status_code, code="bad_body") from error

    def _unavailable(self, failure: _Temporary, attempts: int) -> ModelServerUnavailable:
        message = (
            f"the model server at {self.base_url} is down, not ready or overloaded "
            f"({failure}, {attempts} attempt{'s' if attempts > 1 else ''}); retrying later may help"
        )
        details: dict[str, object] = {"url": self.base_url, "attempts": attempts, "cause": str(failure)}
        return ModelServerUnavailable(message, retry_after=failure.retry_after, details=details)

    def _circuit_open(self) -> CircuitOpenError:
        wait = self._breaker.wait_s()
        message = (
            f"the model server at {self.base_url} is down or not ready: its last calls failed, so the "
            f"circuit breaker refuses calls for {wait:.1f} s more; retrying later may help"
        )
        return CircuitOpenError(message, retry_after=max(wait, 0.1), details={"url": self.base_url})

    def _refused(self, path: str, response: httpx.Response) -> ModelResponseError:
        status = response.status_code
        code, text, fields = _error_parts(response)
        named = "; ".join(f"{item.field or '(body)'}: {item.message}" for item in fields) or text
        kind, verb = (ModelRequestError, "refused") if status < 500 else (ModelServerError, "failed on")
        message = f"the model server {verb} {path} ({status} {code}): {named}"
        return kind(message, status=status, code=code, fields=fields)


def _error_parts(response: httpx.Response) -> tuple[str, str, list[FieldError]]:
    """(code, message, fields) of a ``{"error": {"code", "message", "details"}}`` body, or of any other body."""
    fallback: tuple[str, str, list[FieldError]] = (f"http_{response.status_code}", response.text[:500], [])
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return fallback
    details = error.get("details")
    raw = details.get("errors", []) if isinstance(details, dict) else []
    try:
        fields = _FIELD_ERRORS.validate_python(raw)
    except ValidationError:
        fields = []
    return code, message, fields


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max((moment - datetime.now(UTC)).total_seconds(), 0.0)


def _parse(adapter: TypeAdapter[list[T]], body: Any, expected: int, path: str) -> list[T]:
    try:
        results = adapter.validate_python(body)
    except ValidationError as error:
        message = f"the model server's {path} answer does not match the expected schema: {error}"
        raise ModelServerError(message, status=200, code="bad_body") from error
    if len(results) != expected:
        message = f"the model server's {path} answered {len(results)} results for {expected} series"
        raise ModelServerError(message, status=200, code="bad_body")
    return results
