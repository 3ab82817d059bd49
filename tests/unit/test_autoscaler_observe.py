"""The observer dates each demand rate at the middle of the window it was counted over."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from actuators.autoscaler.observe import Observer
from tmsops.targets.model import ServiceStatus, ServiceUsage

pytestmark = pytest.mark.anyio


class CountingTarget:
    """The two reads the observer makes of a target, with a request counter the test advances."""

    def __init__(self) -> None:
        self.answered = 0

    async def service(self, name: str) -> ServiceStatus:
        return ServiceStatus(name=name, replicas=1, ready_replicas=1, min_replicas=1, max_replicas=4)

    async def usage(self, name: str) -> ServiceUsage:
        return ServiceUsage(service=name, at=datetime.now(UTC), replicas=[], requests_total=self.answered)


async def test_a_rate_is_dated_at_the_middle_of_its_window_so_each_step_holds_its_own_demand() -> None:
    target = CountingTarget()
    observer = Observer(target)  # type: ignore[arg-type]  # the two Target methods the observer calls
    first, _ = await observer.observe("svc")
    assert first.demand is None  # one read: no rate yet
    target.answered = 40
    second, _ = await observer.observe("svc")

    assert second.demand is not None and second.demand > 0
    assert second.demand_at is not None and first.at < second.demand_at < second.at
    assert second.demand_at == pytest.approx((first.at + second.at) / 2, abs=1e-3)
