"""The shapes of the optimizer's read-only answers: overview, bottlenecks, recommendations.

Each part (database, cache, resources, network) is analysed on its own; a part whose system is
not configured or not reachable is listed under ``unavailable`` with the reason, and the
others are still answered.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from actuators.optimizer.cache.advisor import CacheReport
from actuators.optimizer.cache.stats import RedisStats
from actuators.optimizer.database.advisor import DatabaseAdvice
from actuators.optimizer.network import NetworkReport
from actuators.optimizer.resources import ResourceRecommendation

Part = Literal["database", "cache", "resources", "network"]


class Bottleneck(BaseModel):
    """Something that slows a service down; ``score`` (0..1) ranks them across parts."""

    part: Part
    service: str
    subject: str
    score: float
    detail: str
    recommendation: str | None = None


class Recommendations(BaseModel):
    database: DatabaseAdvice | None = None
    cache: CacheReport | None = None
    resources: list[ResourceRecommendation] = []
    network: list[NetworkReport] = []
    unavailable: dict[str, str] = {}


class ChangeCounts(BaseModel):
    kept: int = 0
    rolled_back: int = 0
    failed: int = 0
    dry_run: int = 0
    in_progress: int = 0


class Overview(BaseModel):
    time_range: str
    database: dict[str, Any] | None = None
    cache: RedisStats | None = None
    resources: list[dict[str, Any]] = []
    network: list[dict[str, Any]] = []
    changes: ChangeCounts = ChangeCounts()
    unavailable: dict[str, str] = {}
