"""Schemathesis against a live service over real HTTP, for tests/integration/test_api_fuzz.py.

:func:`in_background` keeps an async context manager (a fleet, a uvicorn server) entered on an
event loop in a thread of its own, so that schemathesis (synchronous) can call the service from
the test's thread. :func:`fuzz` loads the service's OpenAPI document and runs schemathesis's
engine, the one behind ``st run`` (examples, coverage, fuzzing and stateful phases, positive
and negative data), with a fixed seed and derandomized generation; it counts every HTTP call
the engine makes and returns the failures as schemathesis reports them, with a curl command
that reproduces each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, TypeVar

import schemathesis
from schemathesis.config import OutputConfig, SchemathesisConfig
from schemathesis.core.failures import format_failures
from schemathesis.engine import events, from_schema
from schemathesis.hooks import GLOBAL_HOOK_DISPATCHER, HookContext

from support.net import threaded_http

T = TypeVar("T")
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 120.0
SEED = 20260301
# Positive data that the schema allows and the service refuses (the default expected statuses
# of schemathesis's positive_data_acceptance check, plus 422): for operations whose rules the
# schema cannot express (a count within the service's current bounds, one field against another).
ACCEPTS_OR_422 = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]


@contextmanager
def in_background(factory: Callable[[], AbstractAsyncContextManager[T]]) -> Iterator[T]:
    """Enter ``factory()`` on an event loop in a thread of its own; yields its value; exits it there after."""
    ready: concurrent.futures.Future[T] = concurrent.futures.Future()
    done = threading.Event()
    failure: list[BaseException] = []

    async def hold() -> None:
        try:
            async with factory() as value:
                ready.set_result(value)
                while not done.is_set():
                    await asyncio.sleep(0.05)
        except BaseException as error:
            if not ready.done():
                ready.set_exception(error)
            raise

    def run() -> None:
        try:
            asyncio.run(hold())
        except BaseException as error:  # raised in the test's thread below
            failure.append(error)

    def stop() -> None:
        done.set()
        thread.join(timeout=STOP_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError(f"the service did not stop within {STOP_TIMEOUT_S:.0f} s")

    thread = threading.Thread(target=run, name="fuzz-target", daemon=True)
    thread.start()
    try:
        value = ready.result(timeout=START_TIMEOUT_S)
    except BaseException:
        stop()
        raise
    try:
        yield value
    finally:
        stop()
        if failure:
            raise failure[0]


@dataclass
class FuzzResult:
    """The HTTP calls per operation and their total response time, the failures and errors reported."""

    calls: Counter[str] = field(default_factory=Counter)
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def summary(self) -> str:
        per_operation = ", ".join(
            f"{label} {count} in {self.seconds[label]:.1f} s" for label, count in sorted(self.calls.items())
        )
        return f"{self.total} calls ({per_operation})"

    def report(self) -> str:
        return "\n".join([self.summary(), *self.errors, *self.failures])


def fuzz(schema_url: str, config: dict[str, Any], *, token: str) -> FuzzResult:
    """Run schemathesis on the API whose OpenAPI document is at ``schema_url``, every request with
    ``Authorization: Bearer <token>`` (schemathesis also sends some without it, to check that it
    is needed). ``config`` is ``schemathesis.toml`` as a dict (generation, checks, operations...)."""
    headers = {"Authorization": f"Bearer {token}"}
    settings = SchemathesisConfig.from_dict({"seed": SEED, "headers": headers, **config})
    schema = schemathesis.openapi.from_url(schema_url, config=settings, timeout=60)
    result = FuzzResult()

    def count(context: HookContext, case: schemathesis.Case, response: schemathesis.Response) -> None:
        result.calls[case.operation.label] += 1
        result.seconds[case.operation.label] += response.elapsed

    schema.hooks.register_hook_with_name(count, "after_call")
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            result.failures.extend(_failures(event))
        elif isinstance(event, events.NonFatalError):
            result.errors.append(f"error in {event.label}: {event.info.title}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            result.errors.append(f"fatal error: {event.exception!r}")
    return result


def _failures(event: events.ScenarioFinished) -> Iterator[str]:
    recorder = event.recorder
    for case_id, checks in recorder.checks.items():
        found = [check.failure_info for check in checks if check.failure_info is not None]
        if not found:
            continue
        interaction = recorder.interactions.get(case_id)
        text = format_failures(
            case_id=None,
            response=interaction.response if interaction is not None else None,
            failures=[info.failure for info in found],
            curl=found[0].code_sample,
            config=OutputConfig(),
        )
        yield f"{event.phase.value} phase, {recorder.label}:{text}"


@contextmanager
def before_every_call(hook: Callable[[HookContext, schemathesis.Case, dict[str, Any]], None]) -> Iterator[None]:
    """``hook`` runs before schemathesis sends each test case while the block runs, in every phase,
    and may change it: the way to be sure that a generated value never goes out (a schema cannot
    have a ``before_call`` hook of its own). The extra requests some checks send (the same request
    without its token, for instance) copy a case the hook has already changed."""
    GLOBAL_HOOK_DISPATCHER.register_hook_with_name(hook, "before_call")
    try:
        yield
    finally:
        GLOBAL_HOOK_DISPATCHER.unregister(hook)


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def ok_server() -> Iterator[str]:
    """An HTTP server that answers 200 to GET and HEAD on every path; yields its base URL."""
    with threaded_http(_Ok) as url:
        yield url
