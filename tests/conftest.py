"""Fixtures every test directory shares."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``pytest.mark.anyio``) run on asyncio, like the services."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_tracing_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """An OTEL_* variable in a developer's shell would switch tracing on in every app a test builds."""
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
