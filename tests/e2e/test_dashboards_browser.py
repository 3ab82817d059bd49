"""The three dashboards in a real headless browser, on real data made through the services' own APIs.

A fleet of real processes (two echo services: ``checkout``, which the autoscaler manages, and
``tracking``, which the chaos service breaks), the real model server on a small trained
champion, a throwaway TMS database in PostgreSQL and a ``redis-server`` of the test's own. The
autoscaler, the optimizer and the chaos service run over real HTTP on free ports, in an event
loop on a thread of their own, so the browser (blocking calls) never stops them. The data:

- autoscaler: the loop decides every 0.5 s on a wave of real requests until it forecasts, a
  ``POST /scale`` adds replicas and the loop takes them back (CPU under the scale-down threshold);
- optimizer: a useless index rolled back and a useful one kept (measured on the database), a
  cache change measured on Redis under a Zipf workload, the bottlenecks ranked;
- chaos: a gentle latency experiment that completes and a harsh one that aborts and rolls back.

Then Debian's Chromium opens each ``/dashboard``: no console error, every chart holds data
(``data-points`` > 0), the page's script and stylesheet came from the service itself (nothing
from elsewhere), the header links the sibling dashboards; a full-page PNG of each goes to
``$TMSOPS_SCREENSHOTS`` or ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from support.model_server import model_server
from support.net import free_port, served
from support.redis_server import redis_server
from support.registry import register_champions
from support.services import require_service
from support.tms_db import tms_database

from actuators.autoscaler.service import build_app as autoscaler_app
from actuators.optimizer.service import build_app as optimizer_app
from chaos.service import build_app as chaos_app
from tmsops.auth import service_token
from tmsops.fleet.supervisor import Fleet
from tmsops.settings import AutoscalerSettings, ChaosSettings, FleetConfig, FleetService, OptimizerSettings

pytestmark = pytest.mark.xdist_group("dashboards-browser")

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ECHO = ["{python}", "-m", "tmsops.fleet.echo"]
FINAL = {"completed", "deviated", "aborted", "failed"}
SERVICES = ("autoscaler", "optimizer", "chaos")
SCALE_REASON = "expected sale traffic"
SETUP_DEADLINE_S = 180.0
WIDTH = 1280
T = TypeVar("T")


def screenshot_dir() -> Path:
    directory = Path(os.environ.get("TMSOPS_SCREENSHOTS") or REPO / "test-artifacts" / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


async def wait_for(check: Callable[[], Awaitable[T | None]], deadline_s: float, what: str) -> T:
    """Poll ``check`` until it answers something other than None; fail after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while (value := await check()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {deadline_s:.0f} s for {what}")
        await asyncio.sleep(0.25)
    return value


@dataclass
class Platform:
    """The three services on a fleet, in an event loop on a thread of its own.

    The optimizer and the chaos service start first and make their data while the models train
    and the model server starts; then the autoscaler starts on that model server.
    """

    tmp: Path
    dsn: str
    redis_url: str
    ports: dict[str, int] = field(default_factory=lambda: {name: free_port() for name in SERVICES})
    urls: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="services", daemon=True)
        self.stack = AsyncExitStack()
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = asyncio.Event()  # the load generators end on their own (a cancelled Redis call can hang)
        self.tokens: dict[str, dict[str, str]] = {}

    def run(self, work: Coroutine[Any, Any, T], timeout_s: float = SETUP_DEADLINE_S) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout_s)

    def __enter__(self) -> Platform:
        self.thread.start()
        try:
            self.run(self._start())
            self.early = asyncio.run_coroutine_threadsafe(self._early_stories(), self.loop)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the services and the event loop; a second call does nothing."""
        if not self.thread.is_alive():
            return
        try:
            self.run(self._stop(), timeout_s=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)

    def start_autoscaler(self, model_server: str) -> None:
        """Start the autoscaler on ``model_server``, tell its story, and wait for the others' to end."""
        self.run(self._serve("autoscaler", self._autoscaler_app(model_server)))
        self.run(self._autoscaler_story())
        self.early.result(SETUP_DEADLINE_S)

    async def _start(self) -> None:
        services = {
            "checkout": FleetService(command=ECHO, port=free_port(), max_replicas=4, cpu_request="100m"),
            "tracking": FleetService(command=ECHO, port=free_port(), max_replicas=2, cpu_request="100m"),
        }
        self.fleet = Fleet(FleetConfig(services=services, usage_interval=0.25), state_dir=self.tmp / "fleet")
        await self.fleet.start()
        self.stack.push_async_callback(self.fleet.stop)
        nowhere = f"http://127.0.0.1:{free_port()}"  # they need no model server for this
        optimization = {
            "database": {"dsn": self.dsn},
            "cache": {"redisUrl": self.redis_url, "sampleWindow": "1s", "sampleRate": 1.0},
        }
        settings = OptimizerSettings(
            state_dir=self.tmp / "optimizer", optimization=optimization, model_server_url=nowhere, ports=self.ports
        )
        await self._serve("optimizer", optimizer_app(settings, target=self.fleet, sample_usage=False))
        safety = {"blastRadiusLimit": 100}
        chaos = ChaosSettings(state_dir=self.tmp / "chaos", safety=safety, model_server_url=nowhere, ports=self.ports)
        await self._serve("chaos", chaos_app(chaos, target=self.fleet))

    def _autoscaler_app(self, model_server: str) -> FastAPI:
        scaling = {
            "mode": "forecastAndScale",
            "services": ["checkout"],
            "interval": "0.5s",
            "forecastStep": "0.5s",
            "stabilizationWindow": "3s",
            "maxReplicas": 4,
        }
        settings = AutoscalerSettings(
            state_dir=self.tmp / "autoscaler", scaling=scaling, model_server_url=model_server, ports=self.ports
        )
        return autoscaler_app(settings, target=self.fleet)

    async def _serve(self, name: str, app: FastAPI) -> None:
        self.urls[name] = await self.stack.enter_async_context(served(app, self.ports[name]))
        self.tokens[name] = {"Authorization": f"Bearer {service_token(app.state.tokens, 'dashboard-test')}"}

    async def _stop(self) -> None:
        self.stopping.set()
        if self.tasks:
            _, late = await asyncio.wait(self.tasks, timeout=10)
            for task in late:
                task.cancel()
        await self.stack.aclose()

    async def _early_stories(self) -> None:
        self.tasks.append(asyncio.create_task(cache_traffic(self.redis_url, self.stopping)))
        await asyncio.gather(self._optimizer_story(), self._chaos_story())

    @contextlib.asynccontextmanager
    async def client(self, name: str) -> AsyncIterator[httpx.AsyncClient]:
        async with httpx.AsyncClient(base_url=self.urls[name], headers=self.tokens[name], timeout=120) as client:
            yield client

    async def _autoscaler_story(self) -> None:
        """Forecasts, a manual scale-up through the API and the loop's own scale-down, then more forecasts."""
        self.tasks.append(asyncio.create_task(wave(self._port("checkout"), self.stopping)))
        async with self.client("autoscaler") as client:
            await asyncio.sleep(5)
            body = {"service": "checkout", "action": "set", "replicas": 3, "reason": SCALE_REASON}
            answer = await client.post("/scale", json=body)
            assert answer.status_code == 200, answer.text

            async def told() -> bool | None:
                [checkout] = (await client.get("/dashboard", headers={"Accept": "application/json"})).json()["services"]
                down = [d for d in checkout["decisions"] if d["source"] == "loop" and d["desired"] < d["current"]]
                forecasts = len(checkout["forecast_history_p50"]) >= 12 and checkout["forecast_p50"]
                return True if forecasts and any(d["applied"] for d in down) else None

            await wait_for(told, 120, "forecasts and the loop's own scale-down")

    async def _optimizer_story(self) -> None:
        """A useless index (rolled back), a useful one (kept), the bottlenecks, a cache change."""
        async with self.client("optimizer") as client:
            statuses = []
            for table, column in (("customers", "region"), ("tracking_events", "shipment_id")):
                body = {"indexes": [{"table": table, "columns": [column]}]}
                answer = await client.post("/optimization/database", json=body)
                assert answer.status_code == 200, answer.text
                statuses.append(answer.json()["applied"][0]["status"])
            assert statuses == ["rolled_back", "kept"], statuses
            assert (await client.get("/analysis/bottlenecks")).status_code == 200
            cache = await client.post("/optimization/cache", json={})
            assert cache.status_code == 200, cache.text
            assert cache.json()[0]["status"] in ("kept", "rolled_back"), cache.json()

    async def _chaos_story(self) -> None:
        """Latency on ``tracking``: a gentle one the steady state takes (completed), a harsh one it does not
        (aborted and rolled back)."""
        probe = {"type": "http", "name": "echo", "url": f"http://127.0.0.1:{self._port('tracking')}/echo"}
        async with self.client("chaos") as client:
            verdicts = []
            for name, latency_ms, limit_ms in (("gentle latency", 20, 2000), ("harsh latency", 600, 300)):
                body = {
                    "name": name,
                    "target": {"service": "tracking", "mode": "all"},
                    "faultType": "network_latency",
                    "parameters": {"latencyMs": latency_ms},
                    "duration": "3s",
                    "probeInterval": "0.3s",
                    "failureThreshold": 2,
                    "steadyState": {"probes": [{**probe, "maxLatencyMs": limit_ms}]},
                }
                verdicts.append(await run_experiment(client, body))
            assert verdicts == ["completed", "aborted"], verdicts

    def _port(self, service: str) -> int:
        return self.fleet.config.services[service].port


async def run_experiment(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    """Create and start an experiment; its final status."""
    created = await client.post("/experiments", json=body)
    assert created.status_code == 201, created.text
    experiment_id = created.json()["id"]
    started = await client.post(f"/experiments/{experiment_id}/start")
    assert started.status_code == 202, started.text

    async def finished() -> str | None:
        status = (await client.get(f"/experiments/{experiment_id}")).json()["experiment"]["status"]
        return str(status) if status in FINAL else None

    return await wait_for(finished, 60, f"experiment {body['name']!r} to end")


async def wave(port: int, stopping: asyncio.Event, period_s: float = 16.0) -> None:
    """Real requests to ``port``, at a rate that swings between 3 and 17 per second."""
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        while not stopping.is_set():
            rate = 10 + 7 * math.sin(2 * math.pi * (time.monotonic() - started) / period_s)
            with contextlib.suppress(httpx.HTTPError):
                await client.get("/echo")
            await asyncio.sleep(1 / rate)


async def cache_traffic(url: str, stopping: asyncio.Event, keys: int = 3000) -> None:
    """A cache-aside client: GET a Zipf-popular key, SET it on a miss."""
    client = aioredis.Redis.from_url(url)
    weights = [1 / (rank + 1) for rank in range(keys)]
    generator = random.Random(7)
    try:
        while not stopping.is_set():
            for key in generator.choices(range(keys), weights, k=50):
                if await client.get(f"shipment:{key}") is None:
                    await client.set(f"shipment:{key}", b"x" * 400)
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            require_service("headless Chromium", f"{path} is missing (Debian packages `chromium chromium-driver`)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={WIDTH},900"):
        options.add_argument(argument)
    options.add_argument("--force-device-scale-factor=1")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def platform(browser: WebDriver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("dashboards")
    with tms_database() as dsn, redis_server(tmp / "redis") as redis_url, Platform(tmp, dsn, redis_url) as running:
        uri = register_champions(tmp / "registry")
        with model_server(uri, tmp / "serve.log") as models:
            try:
                running.start_autoscaler(models)
                yield running
            finally:
                running.stop()  # before the model server: nothing calls it while it stops


@dataclass
class Page:
    charts: list[tuple[str, int]]
    errors: list[str]
    resources: list[str]
    links: dict[str, str]
    text: str


def open_dashboard(driver: WebDriver, base: str, name: str) -> Page:
    """Load ``base``/dashboard, wait for its script to draw, read what a test needs, save a screenshot."""
    driver.get_log("browser")  # what an earlier page logged is not this page's
    driver.get(f"{base}/dashboard")
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "updated").text.startswith("updated"))
    charts = driver.execute_script(
        "return [...document.querySelectorAll('svg.chart')].map(s => "
        "[s.closest('figure').querySelector('figcaption').textContent, Number(s.dataset.points)])"
    )
    page = Page(
        charts=[(title, points) for title, points in charts],
        errors=[entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"],
        resources=driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"),
        links={link.text: link.get_attribute("href") for link in driver.find_elements(By.CSS_SELECTOR, "header nav a")},
        text=driver.find_element(By.TAG_NAME, "body").text,
    )
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, height + 120)
    try:
        driver.save_screenshot(str(screenshot_dir() / f"{name}.png"))
    finally:
        driver.set_window_size(WIDTH, 900)
    return page


def check_page(page: Page, base: str, min_charts: int) -> None:
    assert page.errors == [], page.errors
    assert len(page.charts) >= min_charts, page.charts
    assert [title for title, points in page.charts if points <= 0] == [], page.charts
    assert {f"{base}/static/charts.js", f"{base}/static/dashboard.css"} <= set(page.resources), page.resources
    assert [url for url in page.resources if not url.startswith(base)] == [], "only this service's own files"


def test_the_autoscaler_dashboard_shows_forecasts_replicas_and_decisions(
    browser: WebDriver, platform: Platform
) -> None:
    base = platform.urls["autoscaler"]
    page = open_dashboard(browser, base, "autoscaler")
    check_page(page, base, min_charts=3)
    titles = [title for title, _ in page.charts]
    assert any("forecast" in title for title in titles) and any("Replicas" in title for title in titles), titles
    band = browser.find_element(By.CSS_SELECTOR, "polygon.band")
    assert int(band.get_attribute("data-points")) > 0
    marks = browser.execute_script("return [...document.querySelectorAll('path.mark title')].map(t => t.textContent)")
    assert any(SCALE_REASON in text for text in marks), marks
    assert SCALE_REASON in page.text and "applied" in page.text
    ports = platform.ports
    assert page.links["optimizer"] == f"http://127.0.0.1:{ports['optimizer']}/dashboard"
    assert page.links["chaos"] == f"http://127.0.0.1:{ports['chaos']}/dashboard"
    assert page.links["API docs"] == f"{base}/docs"

    # The page refreshes itself from the JSON form (every 5 s here): drawn again, still no error.
    stamp = browser.find_element(By.ID, "updated").text
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "updated").text != stamp)
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
    points = browser.execute_script(
        "return [...document.querySelectorAll('svg.chart')].map(s => Number(s.dataset.points))"
    )
    assert points and min(points) > 0


def test_the_optimizer_dashboard_shows_each_change_before_and_after(browser: WebDriver, platform: Platform) -> None:
    base = platform.urls["optimizer"]
    page = open_dashboard(browser, base, "optimizer")
    check_page(page, base, min_charts=2)
    bars = browser.execute_script(
        "return [...document.querySelectorAll('rect.bar')].map(r => [r.dataset.name, Number(r.dataset.value)])"
    )
    assert len(bars) >= 6 and {name for name, _ in bars} == {"before", "after"}, bars
    assert "kept" in page.text and "rolled back" in page.text
    assert "tracking_events (shipment_id)" in page.text


def test_the_chaos_dashboard_shows_the_timeline_probes_and_rollbacks(browser: WebDriver, platform: Platform) -> None:
    base = platform.urls["chaos"]
    page = open_dashboard(browser, base, "chaos")
    check_page(page, base, min_charts=5)
    marks = browser.execute_script("return [...document.querySelectorAll('.mark title')].map(t => t.textContent)")
    assert any("FAILED" in text for text in marks) and any("passed" in text for text in marks)
    assert any(text.startswith("rolled back") for text in marks) and any(text.startswith("aborted") for text in marks)
    assert "aborted" in page.text and "completed" in page.text
