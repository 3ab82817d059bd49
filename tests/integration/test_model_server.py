"""The model server as a real ``bentoml serve`` process, called over HTTP.

Both endpoints with real trained champions (answers compared with the same models
loaded in the test process), ``/metrics``, ``/model-info``, the probes, the OpenAPI
document, ``POST /reload`` and every kind of bad input: each is a 4xx in the project's
error format naming the field, and the server keeps answering afterwards.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.model_server import model_server
from support.registry import CONTEXT, HORIZON

pytestmark = pytest.mark.xdist_group("model-server")

FORECASTER, DETECTOR = "load-forecaster", "anomaly-detector"
TOKEN = "test-token"  # what the model_server_url fixture in conftest.py sets
SMALL_BODY_LIMIT = 4096  # the limited server's max_body_bytes (the settings' minimum is 1024)
SMALL_MAX_SERIES = 2
START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
TIMEOUT_S = 60.0


# --- helpers ------------------------------------------------------------------------------


def wave(n: int, *, base: float = 100.0, scale: float = 20.0, phase: int = 0) -> list[float]:
    """A daily sine at 5-minute steps with a small deterministic ripple, rounded to keep bodies small."""
    return [
        round(base + scale * math.sin(2 * math.pi * (i + phase) / 288) + 0.7 * math.sin(1.3 * i), 3) for i in range(n)
    ]


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def post(base: str, path: str, body: Any = None, *, raw: bytes | None = None, **kwargs: Any) -> httpx.Response:
    """One request on a fresh connection (a refused request may leave its connection closed)."""
    if raw is not None:
        headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
        return httpx.post(f"{base}{path}", content=raw, headers=headers, timeout=TIMEOUT_S, **kwargs)
    return httpx.post(f"{base}{path}", json=body, timeout=TIMEOUT_S, **kwargs)


def assert_error(response: httpx.Response, status: int, code: str, field: str | None, phrase: str) -> dict[str, Any]:
    """The project's error body ``{"error": {"code", "message", "details"}}`` with ``field`` named."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code
    assert phrase in error["message"], error["message"]
    if field is not None:
        fields = [item["field"] for item in error["details"]["errors"]]
        assert field in fields, fields
        assert error["message"].startswith(f"{field}: ")
    return error


def assert_still_serving(base: str) -> None:
    assert httpx.get(f"{base}/livez", timeout=TIMEOUT_S).status_code == 200
    response = post(base, "/forecast", {"series": [{"id": "after", "values": wave(CONTEXT)}]})
    assert response.status_code == 200, response.text
    [result] = response.json()
    assert result["id"] == "after"
    assert len(result["p50"]) == HORIZON


def request_count(base: str, endpoint: str, status: int) -> float:
    """``bentoml_service_request_total`` for one endpoint and status, from ``/metrics``."""
    response = httpx.get(f"{base}/metrics", timeout=TIMEOUT_S)
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        if family.name != "bentoml_service_request":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "bentoml_service_request_total"
                and labels.get("endpoint") == endpoint
                and labels.get("http_response_code") == str(status)
            ):
                return sample.value
    return 0.0


def wait_for_count(base: str, endpoint: str, status: int, expected: float) -> float:
    """The counter once it reached ``expected`` (it is written as the response finishes)."""
    deadline = time.monotonic() + 10
    value = request_count(base, endpoint, status)
    while value < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        value = request_count(base, endpoint, status)
    return value


def local_forecast(model: Any, values: list[float], stamps: list[datetime]) -> pd.DataFrame:
    """The champion forecaster's own pyfunc answer for one series (columns p10, p50, p90, timestamp)."""
    frame = pd.DataFrame({"series_id": "s", "timestamp": [iso(s) for s in stamps], "value": values})
    return model.predict(None, frame)


def assert_quantiles_ordered(result: dict[str, Any], steps: int) -> None:
    for key in ("p10", "p50", "p90"):
        assert len(result[key]) == steps
        assert all(math.isfinite(v) for v in result[key])
    for low, mid, high in zip(result["p10"], result["p50"], result["p90"], strict=True):
        assert low <= mid <= high


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def champions(champion_registry: str) -> dict[str, Any]:
    """The champion models of the registry, loaded in the test process for reference answers."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=champion_registry)
    models = {}
    for name in (FORECASTER, DETECTOR):
        version = client.get_model_version_by_alias(name, "champion")
        location = client.get_model_version_download_uri(name, version.version)
        models[name] = mlflow.pyfunc.load_model(location).unwrap_python_model()
    return models


@pytest.fixture(scope="module")
def limited_server_url(champion_registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second server with a small body limit and max_series, and no reload token."""
    log: Path = tmp_path_factory.mktemp("limited-model-server") / "serve.log"
    with model_server(
        champion_registry,
        log,
        reload_interval_s="0",
        max_body_bytes=str(SMALL_BODY_LIMIT),
        max_series=str(SMALL_MAX_SERIES),
    ) as base:
        yield base


# --- the happy paths ----------------------------------------------------------------------


def test_forecast_from_start_and_step(model_server_url: str, champions: dict[str, Any]) -> None:
    values = wave(60)
    body = {"series": [{"id": "gateway/rps", "values": values, "start": iso(START), "step_s": 300}]}
    response = post(model_server_url, "/forecast", body)

    assert response.status_code == 200, response.text
    [result] = response.json()
    assert result["id"] == "gateway/rps"
    assert (result["model"], result["version"]) == (FORECASTER, "1")
    # 60 values from 08:00 every 5 minutes: the last is 12:55, the forecast starts at 13:00.
    expected_times = [START + timedelta(minutes=5 * (60 + k)) for k in range(HORIZON)]
    assert [datetime.fromisoformat(t) for t in result["timestamps"]] == expected_times
    assert result["timestamps"][0] == "2026-03-02T13:00:00Z"
    assert_quantiles_ordered(result, HORIZON)
    assert all(low < high for low, high in zip(result["p10"], result["p90"], strict=True))  # a real spread

    stamps = [START + timedelta(minutes=5 * i) for i in range(60)]
    local = local_forecast(champions[FORECASTER], values, stamps)
    for key in ("p10", "p50", "p90"):
        assert result[key] == pytest.approx(local[key].tolist(), rel=1e-6)


def test_forecast_from_timestamps_with_a_shorter_horizon(model_server_url: str, champions: dict[str, Any]) -> None:
    stamps = [datetime(2026, 3, 2, 6, 0, tzinfo=UTC) + timedelta(seconds=60 * i) for i in range(CONTEXT + 2)]
    values = wave(CONTEXT + 2, base=40.0, scale=5.0, phase=100)
    body = {"series": [{"id": "cpu", "values": values, "timestamps": [iso(s) for s in stamps], "horizon": 3}]}
    response = post(model_server_url, "/forecast", body)

    assert response.status_code == 200, response.text
    [result] = response.json()
    assert result["id"] == "cpu"
    # The step is the spacing of the given timestamps (one minute); 50 points from 06:00 end at 06:49.
    assert result["timestamps"] == ["2026-03-02T06:50:00Z", "2026-03-02T06:51:00Z", "2026-03-02T06:52:00Z"]
    assert_quantiles_ordered(result, 3)
    local = local_forecast(champions[FORECASTER], values, stamps)
    for key in ("p10", "p50", "p90"):
        assert result[key] == pytest.approx(local[key].tolist()[:3], rel=1e-6)


def test_detect_scores_every_point(model_server_url: str, champions: dict[str, Any]) -> None:
    values = wave(400)
    values[350] += 150.0
    response = post(model_server_url, "/detect", {"series": [{"id": "orders/latency", "values": values}]})

    assert response.status_code == 200, response.text
    [result] = response.json()
    assert result["id"] == "orders/latency"
    assert (result["model"], result["version"]) == (DETECTOR, "1")
    detector = champions[DETECTOR]
    assert result["threshold"] == pytest.approx(detector.threshold)
    scores = result["scores"]
    assert len(scores) == len(values)
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert result["anomalies"] == [i for i, score in enumerate(scores) if score >= result["threshold"]]
    assert max(range(len(scores)), key=scores.__getitem__) == 350  # the spike scores highest
    assert scores == pytest.approx(detector.score(np.asarray(values)).tolist(), rel=1e-6, abs=1e-9)


def test_many_series_in_one_request(model_server_url: str) -> None:
    series = [
        {"id": "plain", "values": wave(CONTEXT)},
        {"id": "longer", "values": wave(200, base=10.0, scale=3.0), "start": iso(START), "step_s": 60},
        {"id": "short-horizon", "values": wave(CONTEXT + 5, phase=50), "horizon": 2},
        {"id": "high", "values": wave(100, base=5000.0, scale=800.0, phase=7)},
    ]
    response = post(model_server_url, "/forecast", {"series": series})

    assert response.status_code == 200, response.text
    results = response.json()
    assert [r["id"] for r in results] == ["plain", "longer", "short-horizon", "high"]
    assert [len(r["p50"]) for r in results] == [HORIZON, HORIZON, 2, HORIZON]
    assert results[0]["timestamps"] is None
    assert results[1]["timestamps"][0] == iso(START + timedelta(seconds=60 * 200))
    for result, item in zip(results, series, strict=True):
        assert_quantiles_ordered(result, len(result["p50"]))
        alone = post(model_server_url, "/forecast", {"series": [item]}).json()[0]
        for key in ("p10", "p50", "p90"):
            assert result[key] == pytest.approx(alone[key], rel=1e-6)
    # Different levels give different forecasts: the series were not mixed up.
    assert results[3]["p50"][0] > 1000 > results[0]["p50"][0] > results[1]["p50"][0]

    detect = post(model_server_url, "/detect", {"series": [{"id": f"s{n}", "values": wave(n)} for n in (1, 30, 300)]})
    assert detect.status_code == 200, detect.text
    assert [(r["id"], len(r["scores"])) for r in detect.json()] == [("s1", 1), ("s30", 30), ("s300", 300)]


# --- observability and administration ------------------------------------------------------


def test_metrics_count_the_requests(model_server_url: str) -> None:
    ok_before = request_count(model_server_url, "/forecast", 200)
    refused_before = request_count(model_server_url, "/detect", 422)
    for n in range(3):
        assert post(model_server_url, "/forecast", {"series": [{"values": wave(CONTEXT + n)}]}).status_code == 200
    assert post(model_server_url, "/detect", {"series": []}).status_code == 422

    assert wait_for_count(model_server_url, "/forecast", 200, ok_before + 3) == ok_before + 3
    assert wait_for_count(model_server_url, "/detect", 422, refused_before + 1) == refused_before + 1
    response = httpx.get(f"{model_server_url}/metrics", timeout=TIMEOUT_S)
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE bentoml_service_request_total counter" in response.text
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"bentoml_service_request", "bentoml_service_request_duration_seconds"} <= names


def test_model_info(model_server_url: str) -> None:
    response = httpx.get(f"{model_server_url}/model-info", timeout=TIMEOUT_S)
    assert response.status_code == 200
    info = response.json()
    assert info["ready"] is True
    assert info["last_error"] is None
    assert info["reload_interval_s"] == 1.0
    assert info["forecast"] == {"context": 48, "horizon": 6}
    models = {model["name"]: model for model in info["models"]}
    assert set(models) == {FORECASTER, DETECTOR}
    for model in models.values():
        assert model["version"] == "1"
        assert model["aliases"] == ["champion"]
        trained = datetime.fromisoformat(model["trained_at"])
        assert trained.tzinfo is not None
        assert trained <= datetime.fromisoformat(model["registered_at"])
        assert isinstance(model["metrics"], dict)
    # register_champions logs this metric on the run of both models; only the forecaster's keys are shown.
    assert models[FORECASTER]["metrics"] == {"forecast.champion.mase": 0.5}
    assert models[DETECTOR]["metrics"] == {}


def test_probes(model_server_url: str) -> None:
    assert httpx.get(f"{model_server_url}/livez", timeout=TIMEOUT_S).status_code == 200
    assert httpx.get(f"{model_server_url}/readyz", timeout=TIMEOUT_S).status_code == 200


def test_openapi_document(model_server_url: str) -> None:
    response = httpx.get(f"{model_server_url}/docs.json", timeout=TIMEOUT_S)
    assert response.status_code == 200
    document = response.json()
    assert "post" in document["paths"]["/forecast"]
    assert "post" in document["paths"]["/detect"]
    assert "get" in document["paths"]["/model-info"]
    assert "post" in document["paths"]["/reload"]
    schema = document["paths"]["/forecast"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["series"]
    assert schema["properties"]["series"]["minItems"] == 1
    series = document["components"]["schemas"]["ForecastSeries"]
    assert series["required"] == ["values"]
    assert {"id", "values", "timestamps", "start", "step_s", "horizon"} <= set(series["properties"])


def test_reload_requires_the_token(model_server_url: str) -> None:
    missing = post(model_server_url, "/reload")
    assert_error(missing, 401, "unauthorized", None, "bearer token")
    for header in ("Bearer wrong-token", "Bearer", f"Basic {TOKEN}", f"Bearer {TOKEN}x"):
        wrong = post(model_server_url, "/reload", headers={"Authorization": header})
        assert_error(wrong, 401, "unauthorized", None, "bearer token")

    right = post(model_server_url, "/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200, right.text
    assert right.json() == {"loaded": {FORECASTER: "1", DETECTOR: "1"}}
    assert_still_serving(model_server_url)


# --- bad input ----------------------------------------------------------------------------

FULL = ", ".join(str(v) for v in wave(CONTEXT))
TIMESTAMPS = [iso(START + timedelta(minutes=5 * i)) for i in range(CONTEXT)]

# (endpoint, body: a JSON-able object or raw text, field named, phrase in the message)
BAD_JSON: dict[str, tuple[str, Any, str, str]] = {
    "empty series list (forecast)": ("/forecast", {"series": []}, "series", "at least 1 item"),
    "empty series list (detect)": ("/detect", {"series": []}, "series", "at least 1 item"),
    "no series field": ("/forecast", {}, "series", "Field required"),
    "series is null": ("/detect", {"series": None}, "series", "valid array"),
    "empty values (forecast)": ("/forecast", {"series": [{"values": []}]}, "series.0.values", "at least 1 item"),
    "empty values (detect)": ("/detect", {"series": [{"values": []}]}, "series.0.values", "at least 1 item"),
    "NaN": ("/forecast", f'{{"series": [{{"values": [{FULL}, NaN]}}]}}', "series.0.values.48", "finite number"),
    "Infinity": ("/detect", '{"series": [{"values": [1.0, Infinity]}]}', "series.0.values.1", "finite number"),
    "-Infinity": ("/forecast", f'{{"series": [{{"values": [-Infinity, {FULL}]}}]}}', "series.0.values.0", "finite"),
    "1e999": ("/detect", '{"series": [{"values": [1e999]}]}', "series.0.values.0", "finite number"),
    "shorter than the context": (
        "/forecast",
        {"series": [{"values": wave(CONTEXT - 1)}]},
        "series.0",
        f"values: the model needs at least {CONTEXT} points, got {CONTEXT - 1}",
    ),
    "a later series too short": (
        "/forecast",
        {"series": [{"values": wave(CONTEXT)}, {"values": wave(3)}]},
        "series.1",
        f"at least {CONTEXT} points, got 3",
    ),
    "horizon over the model's": (
        "/forecast",
        {"series": [{"values": wave(CONTEXT), "horizon": HORIZON + 1}]},
        "series.0",
        f"horizon: at most {HORIZON} steps, got {HORIZON + 1}",
    ),
    "horizon zero": (
        "/forecast",
        {"series": [{"values": wave(CONTEXT), "horizon": 0}]},
        "series.0.horizon",
        "greater than or equal to 1",
    ),
    "series is a string": ("/forecast", {"series": "abc"}, "series", "valid array"),
    "values is a string": ("/detect", {"series": [{"values": "1, 2, 3"}]}, "series.0.values", "valid array"),
    "values are words": ("/detect", {"series": [{"values": ["high", "low"]}]}, "series.0.values.0", "valid number"),
    "a series is not an object": ("/detect", {"series": [[1.0, 2.0]]}, "series.0", "should be an object"),
    "values missing": ("/forecast", {"series": [{"id": "x"}]}, "series.0.values", "Field required"),
    "extra field in a series": (
        "/forecast",
        {"series": [{"values": wave(CONTEXT), "colour": "red"}]},
        "series.0.colour",
        "Extra inputs are not permitted",
    ),
    "id too long": ("/detect", {"series": [{"id": "x" * 513, "values": [1.0]}]}, "series.0.id", "at most 512"),
    "fewer timestamps than values": (
        "/forecast",
        {"series": [{"values": wave(CONTEXT), "timestamps": TIMESTAMPS[:-1]}]},
        "series.0",
        f"timestamps: {CONTEXT - 1} given for {CONTEXT} values",
    ),
    "repeated timestamp": (
        "/forecast",
        {"series": [{"values": wave(CONTEXT), "timestamps": [*TIMESTAMPS[:10], TIMESTAMPS[9], *TIMESTAMPS[11:]]}]},
        "series.0",
        "timestamps: must strictly increase",
    ),
    "decreasing timestamps": (
        "/detect",
        {"series": [{"values": [1.0, 2.0, 3.0], "timestamps": TIMESTAMPS[:3][::-1]}]},
        "series.0",
        "timestamps: must strictly increase",
    ),
    "a timestamp that is no time": (
        "/detect",
        {"series": [{"values": [1.0], "timestamps": ["yesterday"]}]},
        "series.0.timestamps.0",
        "valid datetime",
    ),
    "start without step_s": (
        "/forecast",
        {"series": [{"values": wave(CONTEXT), "start": iso(START)}]},
        "series.0",
        "start and step_s: give both",
    ),
    "step_s without start": (
        "/detect",
        {"series": [{"values": [1.0], "step_s": 60}]},
        "series.0",
        "start and step_s: give both",
    ),
    "step_s zero": (
        "/detect",
        {"series": [{"values": [1.0], "start": iso(START), "step_s": 0}]},
        "series.0.step_s",
        "greater than 0",
    ),
    "not JSON": ("/forecast", "series: [1, 2, 3]", "", "Invalid JSON"),
    "truncated JSON": ("/detect", '{"series": [{"values": [1.0, 2.0', "", "Invalid JSON"),
    "a JSON list": ("/forecast", "[]", "", "should be an object"),
    "too many series (forecast)": (
        "/forecast",
        {"series": [{"values": [1.0]}] * 1025},
        "series",
        "at most 1024 series per request, got 1025",
    ),
    "too many series (detect)": (
        "/detect",
        {"series": [{"values": [1.0]}] * 1025},
        "series",
        "at most 1024 series per request, got 1025",
    ),
}


@pytest.mark.parametrize("case", list(BAD_JSON))
def test_bad_input_is_a_422_naming_the_field(model_server_url: str, case: str) -> None:
    path, body, field, phrase = BAD_JSON[case]
    if isinstance(body, str):
        response = post(model_server_url, path, raw=body.encode())
    else:
        response = post(model_server_url, path, body)
    assert_error(response, 422, "validation_error", field, phrase)
    assert_still_serving(model_server_url)


def test_wrong_content_types(model_server_url: str) -> None:
    """Form bodies are read as forms (no series list in them); pickles are refused outright."""
    form = httpx.post(f"{model_server_url}/forecast", data={"series": "abc"}, timeout=TIMEOUT_S)
    assert form.request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert_error(form, 422, "validation_error", "series", "valid list")

    multipart = httpx.post(
        f"{model_server_url}/detect", data={"series": "abc"}, files={"note": ("note.txt", b"x")}, timeout=TIMEOUT_S
    )
    assert multipart.request.headers["content-type"].startswith("multipart/form-data")
    assert_error(multipart, 422, "validation_error", "series", "valid list")

    text = post(model_server_url, "/forecast", raw=b"1, 2, 3", headers={"content-type": "text/plain"})
    assert_error(text, 422, "validation_error", "", "Invalid JSON")

    pickle = post(
        model_server_url, "/forecast", raw=b"\x80\x04N.", headers={"content-type": "application/vnd.bentoml+pickle"}
    )
    assert_error(pickle, 415, "unsupported_media_type", None, "not allowed")
    assert_still_serving(model_server_url)


def test_chunked_body_without_content_length(model_server_url: str) -> None:
    body = json.dumps({"series": [{"id": "chunked", "values": wave(CONTEXT)}]}).encode()
    chunks = (body[i : i + 100] for i in range(0, len(body), 100))
    response = httpx.post(
        f"{model_server_url}/forecast", content=chunks, headers={"content-type": "application/json"}, timeout=TIMEOUT_S
    )
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == 200, response.text
    assert response.json()[0]["id"] == "chunked"


# --- the limits of the settings (a second server with small ones) ---------------------------


def padded(body: dict[str, Any], size: int) -> bytes:
    """``body`` as JSON followed by spaces up to exactly ``size`` bytes."""
    text = json.dumps(body).encode()
    assert len(text) <= size
    return text + b" " * (size - len(text))


def test_body_at_the_limit_is_accepted_and_one_byte_more_refused(limited_server_url: str) -> None:
    body = {"series": [{"id": "edge", "values": wave(CONTEXT)}]}
    at_limit = post(limited_server_url, "/forecast", raw=padded(body, SMALL_BODY_LIMIT))
    assert at_limit.status_code == 200, at_limit.text
    assert at_limit.json()[0]["id"] == "edge"

    over = post(limited_server_url, "/forecast", raw=padded(body, SMALL_BODY_LIMIT + 1))
    assert_error(over, 413, "payload_too_large", None, f"over the limit of {SMALL_BODY_LIMIT} bytes")
    assert_still_serving(limited_server_url)


def test_chunked_body_over_the_limit_is_refused(limited_server_url: str) -> None:
    body = padded({"series": [{"values": [1.0, 2.0]}]}, 3 * SMALL_BODY_LIMIT)
    for path in ("/forecast", "/detect"):
        chunks = (body[i : i + 1000] for i in range(0, len(body), 1000))
        response = httpx.post(
            f"{limited_server_url}{path}",
            content=chunks,
            headers={"content-type": "application/json"},
            timeout=TIMEOUT_S,
        )
        assert "content-length" not in response.request.headers
        assert_error(response, 413, "payload_too_large", None, f"over the limit of {SMALL_BODY_LIMIT} bytes")
    assert_still_serving(limited_server_url)


def test_max_series_setting(limited_server_url: str) -> None:
    series = [{"id": str(n), "values": wave(CONTEXT, phase=n)} for n in range(SMALL_MAX_SERIES + 1)]
    allowed = post(limited_server_url, "/forecast", {"series": series[:SMALL_MAX_SERIES]})
    assert allowed.status_code == 200, allowed.text
    assert [r["id"] for r in allowed.json()] == ["0", "1"]

    too_many = post(limited_server_url, "/forecast", {"series": series})
    phrase = f"at most {SMALL_MAX_SERIES} series per request, got {SMALL_MAX_SERIES + 1}"
    assert_error(too_many, 422, "validation_error", "series", phrase)
    assert_still_serving(limited_server_url)


def test_reload_without_a_configured_token_is_forbidden(limited_server_url: str) -> None:
    response = post(limited_server_url, "/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert_error(response, 403, "forbidden", None, "reload is disabled")
    info = httpx.get(f"{limited_server_url}/model-info", timeout=TIMEOUT_S).json()
    assert info["reload_interval_s"] == 0.0
    assert {model["version"] for model in info["models"]} == {"1"}
