"""ModelClient against scripted HTTP answers (httpx.MockTransport: a fake at the protocol boundary)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from tmsops.errors import PermanentError, TemporaryError
from tmsops.model_client import (
    CircuitOpenError,
    ModelClient,
    ModelRequestError,
    ModelServerError,
    ModelServerUnavailable,
    SeriesIn,
)

pytestmark = pytest.mark.anyio
URL = "http://models.test"
SERIES = SeriesIn(id="svc/cpu", values=[1.0, 2.0, 3.0], start=datetime(2026, 1, 5, tzinfo=UTC), step_s=300)
FORECAST = {"id": "svc/cpu", "timestamps": None, "p10": [1.0], "p50": [2.0], "p90": [3.0], "model": "f", "version": "7"}
DETECTION = {"id": "svc/cpu", "scores": [0.1, 0.9], "anomalies": [1], "threshold": 0.8, "model": "d", "version": "3"}
UNPROCESSABLE = {
    "error": {
        "code": "validation_error",
        "message": "series.0: too short",
        "details": {"errors": [{"field": "series.0", "message": "values: too short"}]},
    }
}


class Script:
    """A fake model server: answers requests from a list of responses (the last one repeats)."""

    def __init__(self, *answers: httpx.Response | Callable[[httpx.Request], httpx.Response]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer(request) if callable(answer) else answer

    def client(self, **options: Any) -> ModelClient:
        options = {"backoff_s": 0.001, "max_backoff_s": 0.01, **options}
        return ModelClient(URL, transport=httpx.MockTransport(self), **options)


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def ok(body: Any) -> httpx.Response:
    return httpx.Response(200, json=body)


async def test_forecast_sends_the_series_and_returns_typed_results() -> None:
    script = Script(ok([FORECAST]))
    async with script.client() as client:
        [result] = await client.forecast([SERIES], horizon=1)
    sent = json.loads(script.requests[0].content)
    assert script.requests[0].url.path == "/forecast"
    assert sent["series"][0]["horizon"] == 1 and sent["series"][0]["start"].startswith("2026-01-05T00:00:00")
    assert (result.p50, result.model, result.version) == ([2.0], "f", "7")


async def test_detect_returns_typed_results() -> None:
    script = Script(ok([DETECTION]))
    async with script.client() as client:
        [result] = await client.detect([SERIES])
    assert "horizon" not in json.loads(script.requests[0].content)["series"][0]
    assert (result.anomalies, result.version) == ([1], "3")


async def test_no_series_means_no_request() -> None:
    script = Script(ok([]))
    async with script.client() as client:
        assert await client.forecast([]) == [] and await client.detect([]) == []
    assert script.requests == []


async def test_temporary_failures_are_retried() -> None:
    script = Script(refuse, httpx.Response(503), httpx.Response(429), httpx.Response(502), ok([FORECAST]))
    async with script.client(retries=4) as client:
        assert (await client.forecast([SERIES]))[0].version == "7"
    assert len(script.requests) == 5


async def test_exhausted_retries_say_the_server_is_down_and_that_retrying_helps() -> None:
    script = Script(refuse)
    async with script.client(retries=2) as client:
        with pytest.raises(ModelServerUnavailable) as caught:
            await client.detect([SERIES])
    assert len(script.requests) == 3
    assert isinstance(caught.value, TemporaryError) and caught.value.retryable
    assert URL in str(caught.value) and "down" in str(caught.value) and "retrying later" in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_retry_after_is_carried_by_the_error() -> None:
    script = Script(httpx.Response(503, headers={"Retry-After": "7"}))
    async with script.client(retries=0) as client:
        with pytest.raises(ModelServerUnavailable) as caught:
            await client.forecast([SERIES])
    assert caught.value.retry_after == 7 and caught.value.retry_after_given


async def test_retry_after_as_a_date_is_understood() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    script = Script(httpx.Response(503, headers={"Retry-After": later}))
    async with script.client(retries=0) as client:
        with pytest.raises(ModelServerUnavailable) as caught:
            await client.forecast([SERIES])
    assert 30 < caught.value.retry_after <= 60


async def test_a_long_retry_after_is_capped_by_max_backoff() -> None:
    script = Script(httpx.Response(503, headers={"Retry-After": "3600"}), ok([FORECAST]))
    async with script.client(retries=1, max_backoff_s=0.01) as client:
        assert await client.forecast([SERIES])
    assert len(script.requests) == 2


async def test_a_refused_request_is_not_retried_and_names_the_field() -> None:
    script = Script(httpx.Response(422, json=UNPROCESSABLE))
    async with script.client(retries=5) as client:
        with pytest.raises(ModelRequestError) as caught:
            await client.forecast([SERIES])
    error = caught.value
    assert len(script.requests) == 1 and isinstance(error, PermanentError) and not error.retryable
    assert (error.status, error.code) == (422, "validation_error")
    assert [item.field for item in error.fields] == ["series.0"] and "series.0: values: too short" in str(error)


async def test_a_refusal_without_the_error_format_keeps_its_text() -> None:
    script = Script(httpx.Response(404, text="Not Found"))
    async with script.client() as client:
        with pytest.raises(ModelRequestError) as caught:
            await client.model_info()
    assert (caught.value.status, caught.value.code, caught.value.fields) == (404, "http_404", [])
    assert "Not Found" in str(caught.value)


async def test_a_server_error_is_permanent_and_not_retried() -> None:
    body = {"error": {"code": "internal_error", "message": "boom", "details": {}}}
    script = Script(httpx.Response(500, json=body))
    async with script.client(retries=3) as client:
        with pytest.raises(ModelServerError) as caught:
            await client.forecast([SERIES])
    assert len(script.requests) == 1 and caught.value.code == "internal_error"


async def test_an_answer_of_the_wrong_shape_is_a_server_error() -> None:
    script = Script(ok([{"id": "x"}]), ok([FORECAST, FORECAST]))
    async with script.client() as client:
        with pytest.raises(ModelServerError, match="schema"):
            await client.forecast([SERIES])
        with pytest.raises(ModelServerError, match="2 results for 1 series"):
            await client.forecast([SERIES])


async def test_model_info_returns_the_servers_document() -> None:
    script = Script(ok({"ready": True, "models": []}))
    async with script.client() as client:
        assert await client.model_info() == {"ready": True, "models": []}
    assert script.requests[0].url.path == "/model-info"


async def test_ready_never_raises() -> None:
    for answer, expected in ((refuse, False), (httpx.Response(503), False), (httpx.Response(200), True)):
        async with Script(answer).client() as client:
            assert await client.ready() is expected


async def test_the_breaker_opens_after_consecutive_failed_calls_and_then_fails_fast() -> None:
    script = Script(refuse)
    async with script.client(retries=1, breaker_failures=3, breaker_reset_s=60) as client:
        for _ in range(3):
            assert client.breaker_state == "closed"
            with pytest.raises(ModelServerUnavailable) as caught:
                await client.forecast([SERIES])
            assert not isinstance(caught.value, CircuitOpenError)
        assert client.breaker_state == "open" and len(script.requests) == 6
        with pytest.raises(CircuitOpenError) as caught:
            await client.model_info()
    assert len(script.requests) == 6 and 0 < caught.value.retry_after <= 60


async def test_refused_requests_do_not_open_the_breaker() -> None:
    script = Script(httpx.Response(422, json=UNPROCESSABLE))
    async with script.client(breaker_failures=2) as client:
        for _ in range(4):
            with pytest.raises(ModelRequestError):
                await client.forecast([SERIES])
        assert client.breaker_state == "closed"


async def test_a_server_that_answers_resets_the_failure_count() -> None:
    script = Script(refuse, ok([FORECAST]), refuse)
    async with script.client(retries=0, breaker_failures=2) as client:
        with pytest.raises(ModelServerUnavailable):
            await client.forecast([SERIES])
        await client.forecast([SERIES])
        with pytest.raises(ModelServerUnavailable):
            await client.forecast([SERIES])
        assert client.breaker_state == "closed"


async def test_half_open_lets_exactly_one_trial_through_and_its_success_closes() -> None:
    release = asyncio.Event()
    seen: list[httpx.Request] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return refuse(request)
        await release.wait()
        return ok([FORECAST])

    options: dict[str, Any] = {"retries": 0, "breaker_failures": 1, "breaker_reset_s": 0}
    async with ModelClient(URL, transport=httpx.MockTransport(answer), **options) as client:
        with pytest.raises(ModelServerUnavailable):
            await client.forecast([SERIES])
        assert client.breaker_state == "half_open"
        trial = asyncio.create_task(client.forecast([SERIES]))
        while len(seen) < 2:
            await asyncio.sleep(0)
        with pytest.raises(CircuitOpenError):
            await client.forecast([SERIES])
        release.set()
        assert (await trial)[0].version == "7"
        assert client.breaker_state == "closed" and len(seen) == 2


async def test_a_failed_trial_reopens_the_breaker() -> None:
    script = Script(refuse)
    async with script.client(retries=0, breaker_failures=1, breaker_reset_s=0.2) as client:
        with pytest.raises(ModelServerUnavailable):
            await client.forecast([SERIES])
        while client.breaker_state == "open":
            await asyncio.sleep(0.02)
        with pytest.raises(ModelServerUnavailable) as caught:
            await client.forecast([SERIES])
        assert not isinstance(caught.value, CircuitOpenError)
        assert client.breaker_state == "open"
        with pytest.raises(CircuitOpenError):
            await client.forecast([SERIES])
    assert len(script.requests) == 2


async def test_a_cancelled_trial_frees_the_trial_slot() -> None:
    hang = asyncio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/model-info":
            raise httpx.ConnectError("refused", request=request)
        await hang.wait()
        return ok([FORECAST])

    options: dict[str, Any] = {"retries": 0, "breaker_failures": 1, "breaker_reset_s": 0}
    async with ModelClient(URL, transport=httpx.MockTransport(answer), **options) as client:
        with pytest.raises(ModelServerUnavailable):
            await client.model_info()
        trial = asyncio.create_task(client.forecast([SERIES]))
        await asyncio.sleep(0.01)
        trial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trial
        hang.set()
        assert (await client.forecast([SERIES]))[0].version == "7"
        assert client.breaker_state == "closed"


def test_a_url_without_a_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="http://"):
        ModelClient("localhost:3000")
