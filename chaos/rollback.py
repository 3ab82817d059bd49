"""Rollbacks that retry until the target confirms the fault is gone, one task per injection.

Confirmed means: ``revert`` answers the fault as ``reverted`` or ``expired`` (or nothing: the
target no longer has it), or the target's listing no longer shows the fault as active. Any
other answer or error is retried with a growing delay (50 ms doubling up to 2 s), forever: the
journal keeps the injection open, so a restart resumes the rollback if this process dies.

An injection whose fault id is unknown (the process died between writing the journal and the
target's answer, or the answer was lost) is matched on the target: the active faults of the
same service, fault type and parameters, injected from a few seconds before the journal
entry to :data:`MATCH_WINDOW` after it, whose id no other journal entry holds. Each match is
reverted; none means nothing was injected (``absent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from chaos.errors import JournalError
from chaos.journal import InjectionRecord, InjectionState, Journal
from tmsops.errors import TmsopsError
from tmsops.targets.base import Target, UnknownFault
from tmsops.targets.model import Fault, FaultState

RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0
CLOCK_SKEW = timedelta(seconds=5)
MATCH_WINDOW = timedelta(minutes=2)
GONE = (FaultState.REVERTED, FaultState.EXPIRED)

log = logging.getLogger("chaos.rollback")


class Rollbacks:
    """At most one rollback task per injection; ``start`` returns the running one if there is one."""

    def __init__(self, target: Target, journal: Journal) -> None:
        self.target = target
        self.journal = journal
        self._tasks: dict[int, asyncio.Task[str]] = {}

    def start(self, injection: InjectionRecord) -> asyncio.Task[str]:
        task = self._tasks.get(injection.id)
        if task is None or task.done():
            task = asyncio.create_task(self._confirm(injection.id), name=f"rollback {injection.id}")
            self._tasks[injection.id] = task
        return task

    @property
    def pending(self) -> int:
        return sum(not task.done() for task in self._tasks.values())

    async def close(self) -> None:
        """Stop retrying (the journal keeps what is not confirmed for the next start)."""
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _confirm(self, injection_id: int) -> str:
        """Revert until confirmed; the target's final word: ``reverted``, ``expired`` or ``absent``."""
        delay = RETRY_FIRST_S
        while True:
            injection = self.journal.injection(injection_id)
            if injection.state is InjectionState.REVERTED:
                return injection.target_state or "reverted"
            if injection.state is InjectionState.FAILED:
                return "absent"  # the target refused it: nothing was injected
            outcome, error = await self._attempt(injection)
            self.journal.revert_attempt(injection_id, error)
            if outcome is not None:
                with contextlib.suppress(JournalError):  # changed meanwhile: read it again and decide
                    fault_id = injection.fault_id or outcome[1]
                    return self.journal.reverted(injection_id, outcome[0], fault_id).target_state or outcome[0]
                continue
            log.warning("rollback of injection %s not confirmed yet (%s); retrying", injection_id, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _attempt(self, injection: InjectionRecord) -> tuple[tuple[str, str | None] | None, str | None]:
        """``((target state, fault id), None)`` when confirmed, else ``(None, why not)``."""
        try:
            if injection.fault_id is None:
                return await self._revert_matches(injection), None
            return (await self._revert(injection.fault_id, injection.service), injection.fault_id), None
        except _NotConfirmed as problem:
            return None, str(problem)
        except TmsopsError as error:
            return None, f"{type(error).__name__}: {error.message}"

    async def _revert(self, fault_id: str, service: str) -> str:
        try:
            fault = await self.target.revert(fault_id)
        except UnknownFault:
            return "absent"
        if fault is None:
            return "absent"
        if fault.state in GONE:
            return fault.state.value
        still = [item for item in await self.target.faults(service) if item.id == fault_id]
        if not still or still[0].state is not FaultState.ACTIVE:
            return still[0].state.value if still else "absent"
        raise _NotConfirmed(f"the target still lists fault {fault_id} as {still[0].state}")

    async def _revert_matches(self, injection: InjectionRecord) -> tuple[str, str | None]:
        matches = self._matching(injection, await self.target.faults(injection.service))
        states = [await self._revert(fault.id, injection.service) for fault in matches]
        if not matches:
            return "absent", None
        return ("reverted" if "reverted" in states else states[0]), matches[0].id

    def _matching(self, injection: InjectionRecord, faults: list[Fault]) -> list[Fault]:
        known = {item.fault_id for item in self.journal.injections() if item.fault_id}
        wanted = injection.request.get("fault")
        earliest = injection.requested_at - CLOCK_SKEW
        latest = injection.requested_at + MATCH_WINDOW
        return [
            fault
            for fault in faults
            if fault.state is FaultState.ACTIVE
            and fault.id not in known
            and earliest <= fault.injected_at <= latest
            and fault.fault.model_dump(mode="json", by_alias=True) == wanted
        ]


class _NotConfirmed(Exception):
    pass
