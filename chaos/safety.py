"""The safety controller: the rules checked before any fault is injected, and the emergency stop.

Rules, in the order they are checked (the first that fails refuses, naming itself):

1. ``emergencyStop`` (409): the emergency stop is engaged; an admin must re-arm first.
2. ``maxExperimentDuration`` (422): the duration is above ``safety.maxExperimentDuration``.
3. ``allowList`` / ``denyList`` (422): the service is not on the allow list (when one is set) or is
   on the deny list.
4. the service exists (404 from the target).
5. ``runningReplicas`` (422): the service has no running replica to inject into.
6. ``blastRadiusLimit`` (422): the replicas the fault reaches, as a percentage of the service's
   running replicas (at least one replica), are above ``safety.blastRadiusLimit``. A
   single-replica service is always at 100 %.
7. ``oneExperimentPerService`` (409): another experiment or ad hoc fault runs on the service.
8. ``steadyState`` (422): a probe of the hypothesis fails before anything is injected.

Rules 1 to 7 and the reservation of the service happen under one lock, so two starts on the
same service cannot both pass. The emergency stop's state is kept in the state store: a
restart does not re-arm it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from chaos.errors import EmergencyStopDisabled, EmergencyStopEngaged, SafetyRefusal, TargetBusy
from chaos.experiment import FaultChoice, Resolution, resolve
from chaos.journal import Journal, now
from chaos.probes import ProbeResult, failures
from tmsops.settings import SafetySettings
from tmsops.targets.base import Target

STOP_KEY = "emergency_stop"


@dataclass(frozen=True)
class SafetyPolicy:
    """The limits: from ``safety`` in the settings, plus the allow list (None: every service) and deny list."""

    max_duration: timedelta
    blast_radius_limit: float
    auto_rollback: bool = True
    emergency_stop_enabled: bool = True
    allow: frozenset[str] | None = None
    deny: frozenset[str] = frozenset()

    @classmethod
    def from_settings(
        cls, safety: SafetySettings, *, allow: Collection[str] | None = None, deny: Collection[str] = ()
    ) -> SafetyPolicy:
        return cls(
            max_duration=safety.max_experiment_duration,
            blast_radius_limit=safety.blast_radius_limit,
            auto_rollback=safety.auto_rollback,
            emergency_stop_enabled=safety.emergency_stop,
            allow=_allowed(allow if allow is not None else safety.allow_services),
            deny=frozenset(deny) | frozenset(safety.deny_services),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "maxExperimentDuration": self.max_duration.total_seconds(),
            "blastRadiusLimit": self.blast_radius_limit,
            "autoRollback": self.auto_rollback,
            "emergencyStop": self.emergency_stop_enabled,
            "allow": sorted(self.allow) if self.allow is not None else None,
            "deny": sorted(self.deny),
        }


# The rules, as pure functions: each raises the refusal that names it.


def check_stop(engaged: dict[str, Any] | None) -> None:
    if engaged:
        by = engaged.get("by") or "someone"
        message = f"the emergency stop was engaged at {engaged.get('at')} by {by}; an admin must POST /safety/rearm"
        raise EmergencyStopEngaged("emergencyStop", message, {"engaged": engaged})


def check_duration(policy: SafetyPolicy, duration: timedelta) -> None:
    if duration > policy.max_duration:
        message = (
            f"duration {duration.total_seconds():g} s is above maxExperimentDuration "
            f"{policy.max_duration.total_seconds():g} s"
        )
        raise SafetyRefusal("maxExperimentDuration", message, {"duration_s": duration.total_seconds()})


def check_lists(policy: SafetyPolicy, service: str) -> None:
    if policy.allow is not None and service not in policy.allow:
        allowed = ", ".join(sorted(policy.allow)) or "none"
        raise SafetyRefusal("allowList", f"service {service} is not on the allow list ({allowed})")
    if service in policy.deny:
        raise SafetyRefusal("denyList", f"service {service} is on the deny list")


def check_running(resolution: Resolution, wanted: int) -> None:
    if not resolution.running:
        raise SafetyRefusal("runningReplicas", f"service {resolution.service} has no running replica")
    if wanted > len(resolution.running):
        message = f"{wanted} replicas asked, service {resolution.service} runs {len(resolution.running)}"
        raise SafetyRefusal("runningReplicas", message)


def check_blast_radius(policy: SafetyPolicy, resolution: Resolution) -> None:
    if resolution.percent > policy.blast_radius_limit:
        message = (
            f"the fault reaches {len(resolution.reached)} of {len(resolution.running)} replicas of "
            f"{resolution.service} ({resolution.percent:.0f} %), above blastRadiusLimit {policy.blast_radius_limit:g} %"
        )
        details: dict[str, object] = {"percent": resolution.percent, "limit": policy.blast_radius_limit}
        raise SafetyRefusal("blastRadiusLimit", message, details)


def check_busy(busy: dict[str, str], service: str) -> None:
    holder = busy.get(service)
    if holder is not None:
        message = f"experiment {holder} is running on service {service}; stop it or wait for its end"
        raise TargetBusy("oneExperimentPerService", message, {"experiment": holder})


def check_steady_state(results: Sequence[ProbeResult]) -> None:
    failed = failures(results)
    if failed:
        raise SafetyRefusal("steadyState", f"the steady state does not hold before the start: {failed}")


class SafetyController:
    """Checks the rules, reserves services for running experiments, and holds the emergency stop."""

    def __init__(self, policy: SafetyPolicy, journal: Journal, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.journal = journal
        self.busy: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._rng = rng or random.Random()

    @property
    def engaged(self) -> dict[str, Any] | None:
        state = self.journal.read_state(STOP_KEY)
        return state if state and state.get("engaged") else None

    async def reserve(
        self, experiment_id: str, choice: FaultChoice, duration: timedelta, target: Target, *, hold: bool = True
    ) -> Resolution:
        """Check rules 1 to 7 and, when ``hold``, reserve the service for ``experiment_id``."""
        async with self._lock:
            check_stop(self.engaged)
            check_duration(self.policy, duration)
            check_lists(self.policy, choice.target.service)
            resolution = await self._resolve(choice, target)
            check_blast_radius(self.policy, resolution)
            check_busy(self.busy, resolution.service)
            if hold:
                self.busy[resolution.service] = experiment_id
            return resolution

    def release(self, service: str, experiment_id: str) -> None:
        if self.busy.get(service) == experiment_id:
            del self.busy[service]

    async def _resolve(self, choice: FaultChoice, target: Target) -> Resolution:
        status = await target.service(choice.target.service)
        resolution = resolve(choice, status, self._rng)
        wanted = int(choice.target.value or 0) if choice.target.mode == "fixed" else 0
        check_running(resolution, wanted)
        return resolution

    def engage(self, by: str | None, reason: str) -> dict[str, Any]:
        """Engage the emergency stop (refusing new faults); the caller reverts what runs."""
        if not self.policy.emergency_stop_enabled:
            raise EmergencyStopDisabled("the emergency stop is disabled by safety.emergencyStop: false")
        state = {"engaged": True, "at": now().isoformat(), "by": by, "reason": reason}
        self.journal.write_state(STOP_KEY, state)
        self.journal.event(None, "emergency_stop", f"emergency stop engaged by {by}: {reason}")
        return state

    def rearm(self, by: str | None) -> None:
        self.journal.write_state(STOP_KEY, {"engaged": False, "at": now().isoformat(), "by": by})
        self.journal.event(None, "rearm", f"re-armed by {by}")


def _allowed(services: Collection[str] | None) -> frozenset[str] | None:
    return frozenset(services) if services is not None else None
