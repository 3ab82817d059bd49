"""Model reload on a running ``bentoml serve``: a new version takes the champion alias.

Each test has a private copy of the champion registry (tests/support/more_versions.py)
with a second version of both models registered as challengers, and its own server.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.model_server import model_server
from support.more_versions import copy_registry, move_alias, register_new_version
from support.registry import CONTEXT, HORIZON

pytestmark = pytest.mark.xdist_group("model-server")

FORECASTER, DETECTOR = "load-forecaster", "anomaly-detector"
NAMES = (FORECASTER, DETECTOR)
TOKEN = "reload-test-token"
RELOAD_DEADLINE_S = 30.0  # the issue: the running server answers with the new version within 30 s
ANSWERS_BEFORE_AND_AFTER = 5
TIMEOUT_S = 30.0

FORECAST_BODY = {"series": [{"id": "rps", "values": [100.0 + (i % 12) for i in range(CONTEXT)]}]}
DETECT_BODY = {"series": [{"id": "cpu", "values": [40.0 + (i % 7) for i in range(100)]}]}


class Caller(threading.Thread):
    """A client calling one endpoint back to back until stopped; every answer is recorded."""

    def __init__(self, base: str, path: str, body: dict[str, Any], model: str, points: int) -> None:
        super().__init__(name=f"caller{path.replace('/', '-')}", daemon=True)
        self.base, self.path, self.body, self.model, self.points = base, path, body, model, points
        self.versions: list[str] = []
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=TIMEOUT_S) as client:
            while not self.halt.is_set():
                try:
                    self.versions.append(self._call(client))
                except Exception as error:  # any failure at all is what the test looks for
                    self.failures.append(f"{type(error).__name__}: {error}")

    def _call(self, client: httpx.Client) -> str:
        response = client.post(self.path, json=self.body)
        if response.status_code != 200:
            raise AssertionError(f"{self.path} answered {response.status_code}: {response.text[:300]}")
        [result] = response.json()
        if result["model"] != self.model or len(result.get("p50") or result.get("scores")) != self.points:
            raise AssertionError(f"{self.path} answered an unexpected result: {str(result)[:300]}")
        return str(result["version"])

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=2 * TIMEOUT_S)
        assert not self.is_alive()


def wait_until(condition: Any, timeout_s: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails the test after ``timeout_s``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def registry_with_challengers(champion_registry: str, root: Path) -> str:
    uri = copy_registry(champion_registry, root)
    assert {name: register_new_version(uri, name) for name in NAMES} == {FORECASTER: "2", DETECTOR: "2"}
    return uri


def served_versions(base: str) -> dict[str, str]:
    forecast = httpx.post(f"{base}/forecast", json=FORECAST_BODY, timeout=TIMEOUT_S)
    detect = httpx.post(f"{base}/detect", json=DETECT_BODY, timeout=TIMEOUT_S)
    assert forecast.status_code == detect.status_code == 200, (forecast.text, detect.text)
    return {FORECASTER: forecast.json()[0]["version"], DETECTOR: detect.json()[0]["version"]}


def model_info(base: str) -> dict[str, dict[str, Any]]:
    response = httpx.get(f"{base}/model-info", timeout=TIMEOUT_S)
    assert response.status_code == 200
    info = response.json()
    assert info["ready"] is True
    assert info["last_error"] is None
    return {model["name"]: model for model in info["models"]}


def test_new_champion_is_served_within_30_s_and_no_request_fails(champion_registry: str, tmp_path: Path) -> None:
    uri = registry_with_challengers(champion_registry, tmp_path)
    with model_server(uri, tmp_path / "serve.log", reload_interval_s="2") as base:
        callers = [
            Caller(base, "/forecast", FORECAST_BODY, FORECASTER, HORIZON),
            Caller(base, "/detect", DETECT_BODY, DETECTOR, 100),
        ]
        for caller in callers:
            caller.start()
        try:
            wait_until(
                lambda: all(len(c.versions) >= ANSWERS_BEFORE_AND_AFTER for c in callers),
                TIMEOUT_S,
                "the callers got their first answers",
            )
            before = [len(c.versions) for c in callers]
            for name in NAMES:
                move_alias(uri, name, "2")
            took = wait_until(
                lambda: all(c.versions and c.versions[-1] == "2" for c in callers),
                RELOAD_DEADLINE_S,
                "the server answers with the new versions",
            )
            after = [len(c.versions) for c in callers]
            wait_until(
                lambda: all(
                    len(c.versions) >= n + ANSWERS_BEFORE_AND_AFTER for c, n in zip(callers, after, strict=True)
                ),
                TIMEOUT_S,
                "the callers got answers from the new versions",
            )
        finally:
            for caller in callers:
                caller.stop()

        assert took <= RELOAD_DEADLINE_S
        for caller, answered_before in zip(callers, before, strict=True):
            assert caller.failures == [], f"{caller.path}: {len(caller.failures)} failed, first: {caller.failures[0]}"
            # Every answer came from version 1 until the switch and from version 2 after it, never back.
            switch = caller.versions.index("2")
            assert switch >= answered_before
            assert set(caller.versions[:switch]) == {"1"}
            assert set(caller.versions[switch:]) == {"2"}
            assert len(caller.versions) - switch >= ANSWERS_BEFORE_AND_AFTER

        models = model_info(base)
        for name in NAMES:
            assert models[name]["version"] == "2"
            assert models[name]["aliases"] == ["challenger", "champion"]


def test_reload_applies_an_alias_move_at_once_when_polling_is_off(champion_registry: str, tmp_path: Path) -> None:
    uri = registry_with_challengers(champion_registry, tmp_path)
    with model_server(uri, tmp_path / "serve.log", reload_interval_s="0", reload_token=TOKEN) as base:
        info = httpx.get(f"{base}/model-info", timeout=TIMEOUT_S).json()
        assert info["reload_interval_s"] == 0.0
        assert served_versions(base) == {FORECASTER: "1", DETECTOR: "1"}

        for name in NAMES:
            move_alias(uri, name, "2")
        assert served_versions(base) == {FORECASTER: "1", DETECTOR: "1"}  # nothing polls the registry

        refused = httpx.post(f"{base}/reload", headers={"Authorization": "Bearer not-the-token"}, timeout=TIMEOUT_S)
        assert refused.status_code == 401
        assert served_versions(base) == {FORECASTER: "1", DETECTOR: "1"}

        reload = httpx.post(f"{base}/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT_S)
        assert reload.status_code == 200, reload.text
        assert reload.json() == {"loaded": {FORECASTER: "2", DETECTOR: "2"}}
        assert served_versions(base) == {FORECASTER: "2", DETECTOR: "2"}
        assert {name: model["aliases"] for name, model in model_info(base).items()} == {
            FORECASTER: ["challenger", "champion"],
            DETECTOR: ["challenger", "champion"],
        }

        # A rollback is the same move back.
        for name in NAMES:
            move_alias(uri, name, "1")
        reload = httpx.post(f"{base}/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT_S)
        assert reload.status_code == 200, reload.text
        assert reload.json() == {"loaded": {FORECASTER: "1", DETECTOR: "1"}}
        assert served_versions(base) == {FORECASTER: "1", DETECTOR: "1"}
        models = model_info(base)
        assert {name: (model["version"], model["aliases"]) for name, model in models.items()} == {
            FORECASTER: ("1", ["champion"]),
            DETECTOR: ("1", ["champion"]),
        }
