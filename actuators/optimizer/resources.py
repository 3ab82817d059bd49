"""Right-sizing, the krr / VPA way: requests from a usage percentile plus a margin.

Per replica (see :mod:`actuators.optimizer.usage` for where the samples come from):

- CPU request = the ``cpuPercentile`` of CPU usage x (1 + ``margin``), scaled up by the
  forecast's predicted peak demand over the peak demand of the history when a forecast is
  given. No CPU limit is recommended (a limit throttles a service even on an idle node),
  unless one is set already: then it is kept, at least at the observed peak plus margin.
- memory request = limit = max(``memoryPercentile``, observed max) x (1 + ``margin``). When
  replicas restarted in the window, or memory reached :data:`OOM_NEAR` of the limit, the
  service is taken to have run out of memory: memory is raised to at least
  :data:`OOM_FACTOR` x the last limit (the observed max when there is none).
- at least :data:`MIN_CPU_CORES` and :data:`MIN_MEMORY_BYTES`; CPU rounded up to 5m, memory
  to whole MiB; fewer than ``min_samples`` samples is a "not enough data" answer.

:func:`apply_resources` journals a change before making it and keeps it only once the target
reports the new resources with every replica ready; :func:`rollback_resources` restores
what the journal's ``undo`` holds (at start-up, for what a crash left unfinished).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal

from actuators.optimizer.journal import Kind, Optimization, OptimizationJournal, Status
from actuators.optimizer.models import CamelModel
from actuators.optimizer.usage import UsageWindow
from tmsops.errors import PermanentError, TmsopsError
from tmsops.model_client import Forecast
from tmsops.settings import ResourceOptimization
from tmsops.targets.base import Target
from tmsops.targets.model import Resources, ServiceStatus, ServiceUsage
from tmsops.targets.quantities import format_cpu, format_memory

MIN_CPU_CORES = 0.010
MIN_MEMORY_BYTES = 32 * 2**20
CPU_STEP_CORES = 0.005
MEMORY_STEP_BYTES = 2**20
MIN_SAMPLES = 20
OOM_FACTOR = 1.5
OOM_NEAR = 0.95
MAX_FORECAST_FACTOR = 4.0
SETTLE_TIMEOUT = timedelta(minutes=5)
POLL_INTERVAL_S = 1.0
ACTION = "right_size"
RESOURCE_FIELDS = ("cpu_request", "cpu_limit", "memory_request", "memory_limit")

log = logging.getLogger("tmsops.optimizer")


class UnsafeResources(PermanentError):
    """Safe mode refuses the change (a memory limit below the usage seen); the message says why."""

    http_status = 409


class NotEnoughData(PermanentError):
    """The recommendation has no numbers to apply: too few usage samples."""

    http_status = 409


class RecommendationMismatch(PermanentError):
    """The recommendation, or the journal entry, is not for this service or this kind of change."""

    http_status = 422


class UsagePercentiles(CamelModel):
    """The per-replica usage the recommendation was computed from."""

    source: str
    samples: int
    replicas_seen: int
    cpu_percentile: float
    cpu_cores: float | None = None
    cpu_cores_max: float | None = None
    memory_percentile: float
    memory_bytes: int | None = None
    memory_bytes_max: int | None = None
    peak_demand_rps: float | None = None
    restarts: int = 0


class Savings(CamelModel):
    """Requests freed over all replicas (negative: more is needed); None when nothing was requested."""

    cpu_cores: float | None = None
    memory_bytes: int | None = None


class ResourceRecommendation(CamelModel):
    service: str
    enough_data: bool
    replicas: int
    current: Resources
    recommended: Resources | None
    usage: UsagePercentiles
    margin: float
    forecast_factor: float | None = None
    out_of_memory: bool = False
    savings: Savings | None = None
    reason: str


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), interpolated linearly between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * min(100.0, max(0.0, q)) / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def round_cpu(cores: float) -> float:
    """Up to a multiple of 5m, at least 10m."""
    steps = math.ceil(round(cores / CPU_STEP_CORES, 6))
    return max(MIN_CPU_CORES, round(steps * CPU_STEP_CORES, 3))


def round_memory(size: float) -> int:
    """Up to whole MiB, at least 32Mi."""
    return max(MIN_MEMORY_BYTES, math.ceil(size / MEMORY_STEP_BYTES) * MEMORY_STEP_BYTES)


def forecast_factor(predicted_peak_rps: float | None, demand: Sequence[float]) -> tuple[float | None, str]:
    """How much to scale CPU for the predicted peak: predicted over observed peak demand, in 1 .. 4."""
    if predicted_peak_rps is None:
        return None, ""
    observed = max(demand, default=0.0)
    if observed <= 0:
        return None, f"The forecast peak ({predicted_peak_rps:.3g} req/s) is ignored: the history holds no demand."
    ratio = predicted_peak_rps / observed
    factor = min(MAX_FORECAST_FACTOR, max(1.0, ratio))
    if ratio <= 1:
        text = f"The forecast peak {predicted_peak_rps:.3g} req/s is within the observed peak {observed:.3g} req/s."
    else:
        capped = f" (capped at x{MAX_FORECAST_FACTOR:g})" if ratio > MAX_FORECAST_FACTOR else ""
        text = (
            f"CPU scaled x{factor:.2f}{capped} for the forecast peak {predicted_peak_rps:.3g} req/s over the "
            f"observed peak {observed:.3g} req/s."
        )
    return factor, text


def forecast_peak(forecast: Forecast, quantile: Literal["p50", "p90"] = "p90") -> float | None:
    """The highest predicted demand of a forecast of the service's requests/s (its p90 by default)."""
    values = [value for value in getattr(forecast, quantile) if math.isfinite(value)]
    return max(values) if values else None


def recommend_resources(
    window: UsageWindow,
    current: Resources,
    replicas: int,
    policy: ResourceOptimization | None = None,
    *,
    predicted_peak_rps: float | None = None,
    min_samples: int = MIN_SAMPLES,
) -> ResourceRecommendation:
    """Requests (and limits) per replica for ``window.service`` from its usage; a pure function."""
    policy = policy or ResourceOptimization()
    cpu, memory = window.cpu_cores, window.memory_bytes
    stats = UsagePercentiles(
        source=window.source,
        samples=len(window.samples),
        replicas_seen=window.replicas_seen,
        cpu_percentile=policy.cpu_percentile,
        memory_percentile=policy.memory_percentile,
        peak_demand_rps=max(window.demand) if window.demand else None,
        restarts=window.restarts,
    )
    base = {"service": window.service, "replicas": replicas, "current": current, "margin": policy.margin}
    if len(window.samples) < min_samples:
        reason = (
            f"Not enough data: {len(window.samples)} usage samples of {window.service} ({window.source}), "
            f"{min_samples} needed; sample longer before right-sizing. {window.note}"
        )
        return ResourceRecommendation(**base, enough_data=False, recommended=None, usage=stats, reason=reason.strip())
    stats = stats.model_copy(
        update={
            "cpu_cores": percentile(cpu, policy.cpu_percentile),
            "cpu_cores_max": max(cpu),
            "memory_bytes": round(percentile(memory, policy.memory_percentile)),
            "memory_bytes_max": max(memory),
        }
    )
    factor, forecast_text = forecast_factor(predicted_peak_rps, window.demand)
    cpu_request, cpu_limit, cpu_text = _cpu(stats, current, policy, factor or 1.0)
    memory_size, oom, memory_text = _memory(stats, current, policy)
    recommended = Resources(
        cpu_request=cpu_request, cpu_limit=cpu_limit, memory_request=memory_size, memory_limit=memory_size
    )
    reason = " ".join(filter(None, [cpu_text, forecast_text, memory_text, window.note]))
    return ResourceRecommendation(
        **base,
        enough_data=True,
        recommended=recommended,
        usage=stats,
        forecast_factor=factor,
        out_of_memory=oom,
        savings=savings(current, recommended, replicas),
        reason=reason,
    )


def _cpu(
    stats: UsagePercentiles, current: Resources, policy: ResourceOptimization, factor: float
) -> tuple[float, float | None, str]:
    assert stats.cpu_cores is not None and stats.cpu_cores_max is not None
    wanted = stats.cpu_cores * (1 + policy.margin) * factor
    request = round_cpu(wanted)
    text = (
        f"CPU request {format_cpu(request)}: p{policy.cpu_percentile:g} of per-replica CPU "
        f"{_millicores(stats.cpu_cores)} + {policy.margin:.0%} margin"
    )
    if wanted < MIN_CPU_CORES:
        text += f", raised to the minimum {format_cpu(MIN_CPU_CORES)}"
    if current.cpu_limit is None:
        return request, None, text + "; no CPU limit (a limit throttles the service even when the node is idle)."
    limit = max(request, round_cpu(stats.cpu_cores_max * (1 + policy.margin) * factor))
    text += (
        f"; CPU limit {format_cpu(limit)} because one is set ({format_cpu(current.cpu_limit)}): kept at least at the "
        f"observed peak {_millicores(stats.cpu_cores_max)} + margin so it does not throttle; "
        "consider removing it, as krr advises."
    )
    return request, limit, text


def _memory(stats: UsagePercentiles, current: Resources, policy: ResourceOptimization) -> tuple[int, bool, str]:
    assert stats.memory_bytes is not None and stats.memory_bytes_max is not None
    observed = max(stats.memory_bytes, stats.memory_bytes_max)
    size = round_memory(observed * (1 + policy.margin))
    text = (
        f"Memory request = limit {format_memory(size)}: max(p{policy.memory_percentile:g} "
        f"{_mebibytes(stats.memory_bytes)}, observed max {_mebibytes(stats.memory_bytes_max)}) "
        f"+ {policy.margin:.0%} margin"
    )
    if observed * (1 + policy.margin) < MIN_MEMORY_BYTES:
        text += f", raised to the minimum {format_memory(MIN_MEMORY_BYTES)}"
    limit = current.memory_limit
    near_limit = limit is not None and stats.memory_bytes_max >= OOM_NEAR * limit
    if not (stats.restarts or near_limit):
        return size, False, text + "."
    signs = []
    if stats.restarts:
        signs.append(f"{stats.restarts} replica restart(s) in the window (taken as out-of-memory kills)")
    if near_limit and limit is not None:
        signs.append(f"memory reached {stats.memory_bytes_max / limit:.0%} of the {format_memory(limit)} limit")
    base = limit if limit is not None else stats.memory_bytes_max
    raised = round_memory(base * OOM_FACTOR)
    text += f". Out of memory: {' and '.join(signs)}"
    if raised > size:
        label = "last limit" if limit is not None else "observed max"
        text += f"; raised to {format_memory(raised)} ({OOM_FACTOR:g} x the {label})"
    return max(size, raised), True, text + "."


def savings(current: Resources, recommended: Resources, replicas: int) -> Savings:
    """Requests freed over ``replicas`` replicas; a field is None when the current request is not set."""
    cpu = None
    if current.cpu_request is not None and recommended.cpu_request is not None:
        cpu = round((current.cpu_request - recommended.cpu_request) * replicas, 6)
    memory = None
    if current.memory_request is not None and recommended.memory_request is not None:
        memory = (current.memory_request - recommended.memory_request) * replicas
    return Savings(cpu_cores=cpu, memory_bytes=memory)


def reversible_change(current: Resources, recommended: Resources) -> tuple[Resources, list[str]]:
    """The part of ``recommended`` that can be undone: a target cannot unset a field, so fields not
    set now are left out. Returns the change and the names of the fields left out."""
    kept: dict[str, Any] = {}
    left_out = []
    for name in RESOURCE_FIELDS:
        value = getattr(recommended, name)
        if value is None:
            continue
        if getattr(current, name) is None:
            left_out.append(name)
        else:
            kept[name] = value
    return Resources(**kept), left_out


def check_memory_safe(service: str, change: Resources, observed_max_bytes: int | None) -> None:
    """Refuse (UnsafeResources) a memory limit below the largest per-replica memory usage seen."""
    limit = change.memory_limit
    if limit is None or observed_max_bytes is None or limit >= observed_max_bytes:
        return
    raise UnsafeResources(
        f"safe mode: the memory limit {format_memory(limit)} of {service} is below the memory its replicas were "
        f"seen using ({format_memory(observed_max_bytes)}); the fleet or the kernel would kill them. Raise the limit, "
        "or turn optimization.resources.safeMode off to apply it anyway",
        details={"service": service, "memory_limit": limit, "observed_max_bytes": observed_max_bytes},
    )


async def apply_resources(
    target: Target,
    journal: OptimizationJournal,
    service: str,
    recommendation: ResourceRecommendation,
    *,
    dry_run: bool = False,
    safe_mode: bool = True,
    settle_timeout: timedelta = SETTLE_TIMEOUT,
    poll_interval_s: float = POLL_INTERVAL_S,
) -> Optimization:
    """Apply ``recommendation`` to ``service``: journalled first, kept once the target reports it.

    A dry run asks the target to check the change and journals a ``dry_run`` plan. A real run
    journals ``applying`` (``undo`` = the resources now), sets the resources, then ``measuring``
    until the target reports them with every replica ready (``kept``); if replicas restart or
    the target does not get there within ``settle_timeout``, the old resources are restored
    (``rolled_back``). A failed set is restored too (``failed``) and its error raised.

    In safe mode, fields not set now are left out (they could not be undone) and a memory
    limit below the usage seen is refused with UnsafeResources (409), before anything is
    journalled. NotEnoughData (409) and RecommendationMismatch (422) are refused likewise.
    """
    recommended = _applicable(service, recommendation)
    status = await target.service(service)
    usage = await target.usage(service)
    current = status.resources
    change, left_out = reversible_change(current, recommended) if safe_mode else (recommended, [])
    if safe_mode:
        seen = [recommendation.usage.memory_bytes_max or 0, *(replica.memory_bytes for replica in usage.replicas)]
        check_memory_safe(service, change, max(seen))
    reason = recommendation.reason
    if left_out:
        reason += f" Safe mode left out {', '.join(left_out)}: not set now, so the change could not be undone."
    before = {"resources": _dump(current), "readyReplicas": status.ready_replicas, "usage": _usage(usage)}
    entry: dict[str, Any] = {"change": _dump(change), "undo": _dump(current), "before": before, "reason": reason}
    if dry_run:
        planned = await target.set_resources(service, change, dry_run=True)
        optimization = journal.begin(Kind.RESOURCES, service, service, ACTION, status=Status.DRY_RUN, **entry)
        return journal.update(optimization.id, after={"resources": _dump(planned.resources)})
    optimization = journal.begin(Kind.RESOURCES, service, service, ACTION, **entry)
    try:
        await target.set_resources(service, change)
    except Exception as error:
        await _restore_after_failure(target, journal, optimization, error)
        raise
    journal.update(optimization.id, status=Status.MEASURING)
    try:
        return await _settle(target, journal, optimization, change, status, settle_timeout, poll_interval_s)
    except BaseException as error:  # the target went away or the request was cancelled: no change left unjudged
        with contextlib.suppress(TmsopsError):
            await rollback_resources(
                target, journal.get(optimization.id), journal, reason=f"waiting for the change failed ({error!r})"
            )
        raise


async def rollback_resources(
    target: Target, optimization: Optimization, journal: OptimizationJournal | None = None, *, reason: str = ""
) -> ServiceStatus:
    """Restore the resources in ``optimization.undo``; with ``journal``, mark it ``rolled_back``.

    Only a change that may be in place (``applying``, ``measuring``, ``kept``) is restored; for
    any other status nothing is changed and the service's status is returned. A field the
    change set that was not set before cannot be unset by a target: it is logged and left.
    """
    if optimization.kind != Kind.RESOURCES:
        raise RecommendationMismatch(
            f"optimization {optimization.id} is a {optimization.kind.value} change, not a resources change",
            details={"optimization": optimization.id},
        )
    if optimization.status not in (Status.APPLYING, Status.MEASURING, Status.KEPT):
        return await target.service(optimization.service)
    undo = Resources.model_validate(optimization.undo)
    unset = [
        name
        for name in Resources.model_validate(optimization.change).model_fields_set
        if name not in undo.model_fields_set
    ]
    if unset:
        log.warning(
            "optimization %d: %s of %s were not set before and cannot be unset; left as they are",
            optimization.id,
            ", ".join(unset),
            optimization.service,
        )
    restored = await target.set_resources(optimization.service, undo)
    if journal is not None:
        text = reason or "rolled back"
        if unset:
            text += f"; {', '.join(unset)} left as set (a target cannot unset them)"
        journal.update(
            optimization.id, status=Status.ROLLED_BACK, after={"resources": _dump(restored.resources)}, reason=text
        )
    return restored


def _applicable(service: str, recommendation: ResourceRecommendation) -> Resources:
    if recommendation.service != service:
        raise RecommendationMismatch(
            f"the recommendation is for {recommendation.service!r}, not {service!r}",
            details={"service": service, "recommendation": recommendation.service},
        )
    if recommendation.recommended is None:
        raise NotEnoughData(f"nothing to apply to {service}: {recommendation.reason}", details={"service": service})
    return recommendation.recommended


async def _restore_after_failure(
    target: Target, journal: OptimizationJournal, optimization: Optimization, error: Exception
) -> None:
    """After a failed set: restore ``undo`` and mark ``failed``; if restoring fails too, leave the entry
    unfinished, so start-up recovery rolls it back."""
    problem = getattr(error, "message", None) or str(error) or type(error).__name__
    try:
        await target.set_resources(optimization.service, Resources.model_validate(optimization.undo))
    except Exception as restore_error:
        text = getattr(restore_error, "message", None) or str(restore_error)
        journal.update(optimization.id, reason=f"setting resources failed: {problem}; restoring failed too: {text}")
        log.error("optimization %d: restoring %s failed: %s", optimization.id, optimization.service, text)
        return
    journal.update(optimization.id, status=Status.FAILED, reason=f"setting resources failed: {problem}; restored")


async def _settle(
    target: Target,
    journal: OptimizationJournal,
    optimization: Optimization,
    change: Resources,
    before: ServiceStatus,
    timeout: timedelta,
    poll_interval_s: float,
) -> Optimization:
    """Wait until the target reports ``change`` with every replica ready; roll back on restarts or timeout."""
    restarts_before = {pod.id: pod.restarts for pod in before.pods}
    deadline = time.monotonic() + timeout.total_seconds()
    problem = f"the target did not report the new resources with every replica ready within {timeout}"
    while True:
        status = await target.service(optimization.service)
        restarted = [pod.id for pod in status.pods if pod.restarts > restarts_before.get(pod.id, pod.restarts)]
        if restarted:
            problem = f"replicas restarted after the change ({', '.join(restarted)}): out of memory?"
            break
        if _reports(status, change):
            after = {"resources": _dump(status.resources), "readyReplicas": status.ready_replicas}
            return journal.update(optimization.id, status=Status.KEPT, after=after)
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(poll_interval_s)
    await rollback_resources(target, optimization, journal, reason=f"{problem}; rolled back")
    return journal.get(optimization.id)


def _reports(status: ServiceStatus, change: Resources) -> bool:
    """The target shows every field of ``change`` (CPU to the millicore) and every replica is ready."""
    for name in change.model_fields_set:
        wanted, actual = getattr(change, name), getattr(status.resources, name)
        if wanted is None:
            continue
        if actual is None or not math.isclose(float(actual), float(wanted), abs_tol=0.0005):
            return False
    return status.ready_replicas >= status.replicas and all(pod.ready for pod in status.pods)


def _dump(resources: Resources) -> dict[str, Any]:
    return resources.model_dump(exclude_none=True)


def _usage(usage: ServiceUsage) -> dict[str, Any]:
    return {"cpuCores": usage.cpu_cores, "memoryBytes": usage.memory_bytes, "replicas": len(usage.replicas)}


def _millicores(cores: float) -> str:
    return f"{cores * 1000:.1f}m"


def _mebibytes(size: float) -> str:
    return f"{size / 2**20:.1f}Mi"
