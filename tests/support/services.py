"""What a test does when a service it needs is not on this machine."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def require_service(name: str, reason: str) -> NoReturn:
    """Skip the test because ``name`` is unavailable, or fail if TMSOPS_REQUIRE_SERVICES=1 (as in CI)."""
    if os.environ.get("TMSOPS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name} is required (TMSOPS_REQUIRE_SERVICES=1) but {reason}", pytrace=False)
    pytest.skip(f"{name} unavailable: {reason}")
