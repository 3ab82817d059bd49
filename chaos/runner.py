"""Running experiments: safety checks, injection, probing, abort, rollback, and the final verdict.

One run, in order:

1. the safety rules (:mod:`chaos.safety`) and the steady state before anything is injected;
2. the injection, written to the journal first, with a time-to-live of the experiment's
   duration plus a margin (:func:`ttl_margin_s`), so the target ends the fault by itself if
   this service dies;
3. a probe round every ``probeInterval`` (the first one interval after the injection); after
   ``failureThreshold`` failed rounds in a row the run aborts (unless ``safety.autoRollback`` is
   off: then failed rounds only count against the verdict);
4. the rollback, retried until the target confirms (:mod:`chaos.rollback`); if it is not
   confirmed by the end of the fault's time-to-live the experiment is ``failed``;
5. the steady state again: one round after a stop request or emergency stop, otherwise up to
   ``failureThreshold`` rounds, ``probeInterval`` apart, until one passes;
6. the status (see :mod:`chaos.journal`) and the resilience score (:mod:`chaos.score`).

A dry run does step 1 without reserving the service, asks the target to check the fault
(its own dry run), and injects nothing. Crash recovery (:meth:`Runner.recover`) reverts every
open injection of the journal at start-up and marks its experiment ``aborted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from chaos.errors import ExperimentConflict, JournalError
from chaos.experiment import Experiment, Resolution, fault_request, parse_experiment
from chaos.journal import ExperimentRecord, InjectionRecord, Journal, Record, Status, now
from chaos.probes import ProbeResult, ProbeRunner, failures, round_ok
from chaos.rollback import Rollbacks
from chaos.safety import SafetyController, check_steady_state
from chaos.score import experiment_score
from tmsops.errors import TmsopsError
from tmsops.targets.base import Target, TargetError
from tmsops.targets.model import FaultRequest
from tmsops.tracing import span

CONFIRM_GRACE_S = 5.0
STOP_WAIT_S = 30.0
SHUTDOWN_WAIT_S = 15.0

log = logging.getLogger("chaos.runner")


def ttl_margin_s(duration: timedelta) -> float:
    """The time-to-live margin over the duration: 10 %, between 1 s and 30 s."""
    return min(30.0, max(1.0, duration.total_seconds() * 0.1))


@dataclass
class Run:
    """One experiment in progress, and how it may end early."""

    record_id: str
    experiment: Experiment
    resolution: Resolution
    by: str | None
    reason: str | None = None
    cause: str | None = None
    injection: InjectionRecord | None = None
    failed_rounds: int = 0
    aborted: asyncio.Event = field(default_factory=asyncio.Event)
    rolled_back: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def abort(self, cause: str, reason: str) -> None:
        """End the run early; the first reason wins."""
        if self.reason is None:
            self.cause, self.reason = cause, reason
        self.aborted.set()


class DryRun(Record):
    """What a start would do: the replicas reached, the fault as planned, the steady state now."""

    experiment: str
    service: str
    running_replicas: list[str]
    reached_replicas: list[str]
    blast_radius_percent: float
    fault: dict[str, Any]
    steady_state: list[dict[str, Any]]


class Runner:
    def __init__(self, target: Target, journal: Journal, safety: SafetyController, probes: ProbeRunner) -> None:
        self.target = target
        self.journal = journal
        self.safety = safety
        self.probes = probes
        self.rollbacks = Rollbacks(target, journal)
        self.runs: dict[str, Run] = {}
        self.recovering: set[str] = set()

    # Starting.

    async def start(
        self, experiment_id: str, *, dry_run: bool = False, by: str | None = None
    ) -> ExperimentRecord | DryRun:
        """Check the rules and the steady state, then run in the background (or only rehearse, for a dry run)."""
        record = self.journal.get(experiment_id)
        if record.status is not Status.CREATED:
            raise ExperimentConflict(
                f"experiment {experiment_id} is {record.status}; create a new one to run it again",
                details={"status": record.status.value},
            )
        experiment = parse_experiment(record.spec)
        try:
            return await self._start(record, experiment, dry_run, by)
        except TmsopsError as refusal:
            self.journal.event(experiment_id, "refused", f"start refused: {refusal}", {"dryRun": dry_run})
            raise

    async def _start(
        self, record: ExperimentRecord, experiment: Experiment, dry_run: bool, by: str | None
    ) -> ExperimentRecord | DryRun:
        resolution = await self.safety.reserve(
            record.id, experiment, experiment.duration, self.target, hold=not dry_run
        )
        try:
            results = await self._round(record.id, experiment, "dry-run" if dry_run else "before", 0)
            check_steady_state(results)
            if dry_run:
                return await self._rehearse(record, experiment, resolution, results)
            started = self.journal.move(record.id, Status.RUNNING)
        except BaseException:
            if not dry_run:
                self.safety.release(resolution.service, record.id)
            raise
        run = Run(record.id, experiment, resolution, by)
        self.runs[record.id] = run
        run.task = asyncio.create_task(self._execute(run), name=f"experiment {record.id}")
        return started

    async def _rehearse(
        self, record: ExperimentRecord, experiment: Experiment, resolution: Resolution, results: list[ProbeResult]
    ) -> DryRun:
        request = fault_request(experiment, resolution, self._ttl_s(experiment), dry_run=True)
        planned = await self.target.inject(request)
        self.journal.event(record.id, "dry_run", f"dry run: would reach {', '.join(resolution.reached)}")
        return DryRun(
            experiment=record.id,
            service=resolution.service,
            running_replicas=resolution.running,
            reached_replicas=planned.replicas or resolution.reached,
            blast_radius_percent=round(resolution.percent, 2),
            fault=request.model_dump(mode="json", by_alias=True),
            steady_state=[_result_view(result) for result in results],
        )

    # Running.

    async def _execute(self, run: Run) -> None:
        """The run in the background: a trace of its own (linked to the request that started it) when tracing."""
        attributes = {"tmsops.experiment.id": run.record_id, "tmsops.service": run.resolution.service}
        with span("chaos.experiment", attributes, new_trace=True) as traced:
            status: Status = Status.FAILED
            reason: str | None = "internal error"
            try:
                status, reason = await self._inject_watch_and_roll_back(run)
            except asyncio.CancelledError:
                reason = "cancelled at shutdown before the end; the next start reverts what is left"
                raise
            except Exception as error:
                log.exception("experiment %s failed", run.record_id)
                reason = f"internal error: {type(error).__name__}: {error}"
            finally:
                run.rolled_back.set()
                self._finish(run, status, reason)
                traced.set_attribute("tmsops.experiment.status", status.value)

    async def _inject_watch_and_roll_back(self, run: Run) -> tuple[Status, str | None]:
        if self.safety.engaged:
            return Status.ABORTED, "the emergency stop was engaged before the injection"
        request = fault_request(run.experiment, run.resolution, self._ttl_s(run.experiment))
        injection = self.journal.injecting(run.record_id, request)
        failed = await self._inject(run, injection, request)
        if failed is not None:
            return Status.FAILED, failed
        try:
            await self._watch(run)
        except Exception:
            self.rollbacks.start(injection)
            raise
        if not await self._roll_back(run):
            return Status.FAILED, "the target did not confirm the rollback before the fault's time-to-live ended"
        run.rolled_back.set()
        after_ok = await self._after(run)
        return _verdict(run, after_ok)

    async def _inject(self, run: Run, injection: InjectionRecord, request: FaultRequest) -> str | None:
        """Inject; the reason it failed, or None once the fault is in effect."""
        try:
            fault = await self.target.inject(request)
        except TargetError as error:
            self.journal.refused(injection.id, error.message)
            return f"the target refused the injection: {error.message}"
        except Exception as error:
            confirmed = await self._confirmed(injection, deadline_s=request.ttl_s + CONFIRM_GRACE_S)
            outcome = "any fault it made was reverted" if confirmed else "a fault it made may last until its TTL"
            return f"the injection failed ({type(error).__name__}: {error}); {outcome}"
        run.injection = self.journal.injected(injection.id, fault)
        if self.safety.engaged:
            run.abort("emergency", "the emergency stop was engaged during the injection")
        return None

    async def _watch(self, run: Run) -> None:
        """Probe every interval until the duration ends or the run is aborted."""
        experiment = run.experiment
        deadline = time.monotonic() + experiment.duration.total_seconds()
        interval = experiment.probe_interval.total_seconds()
        consecutive, number = 0, 0
        while (remaining := deadline - time.monotonic()) > 0:
            if await _wait(run.aborted, min(interval, remaining)) or time.monotonic() >= deadline:
                return
            if not experiment.steady_state.probes:
                continue
            number += 1
            results = await self._abortable_round(run, number)
            if results is None:
                return
            consecutive = 0 if round_ok(results) else consecutive + 1
            run.failed_rounds += 0 if round_ok(results) else 1
            if consecutive >= experiment.failure_threshold and self.safety.policy.auto_rollback:
                reason = f"the steady state failed {consecutive} rounds in a row: {failures(results)}"
                run.abort("probes", reason)
                return

    async def _abortable_round(self, run: Run, number: int) -> list[ProbeResult] | None:
        """One probe round during the fault, or None if the run is aborted first."""
        probing = asyncio.create_task(self.probes.round(run.experiment.steady_state.probes))
        aborting = asyncio.create_task(run.aborted.wait())
        await asyncio.wait({probing, aborting}, return_when=asyncio.FIRST_COMPLETED)
        aborting.cancel()
        if not probing.done():
            probing.cancel()
            return None
        results = probing.result()
        self.journal.probe_results(run.record_id, "during", number, results)
        return results

    async def _roll_back(self, run: Run) -> bool:
        """Start the rollback and wait for the confirmation until the fault's TTL has ended (plus a grace)."""
        injection = run.injection
        assert injection is not None and injection.expires_at is not None
        left_s = max(0.0, (injection.expires_at - now()).total_seconds())
        return await self._confirmed(injection, deadline_s=left_s + CONFIRM_GRACE_S)

    async def _confirmed(self, injection: InjectionRecord, *, deadline_s: float) -> bool:
        """Whether the rollback of ``injection`` is confirmed within ``deadline_s`` (it goes on after)."""
        task = self.rollbacks.start(injection)
        done, _ = await asyncio.wait({task}, timeout=deadline_s)
        return bool(done) and not task.cancelled() and task.exception() is None

    async def _after(self, run: Run) -> bool:
        """The steady state after the rollback: rounds until one passes (one round after a stop)."""
        experiment = run.experiment
        if not experiment.steady_state.probes:
            return True
        attempts = 1 if run.cause in ("stop", "emergency", "shutdown") else experiment.failure_threshold
        for attempt in range(1, attempts + 1):
            results = await self._round(run.record_id, experiment, "after", attempt)
            if round_ok(results):
                return True
            if attempt < attempts:
                await asyncio.sleep(experiment.probe_interval.total_seconds())
        return False

    async def _round(self, record_id: str, experiment: Experiment, phase: str, number: int) -> list[ProbeResult]:
        results = await self.probes.round(experiment.steady_state.probes)
        self.journal.probe_results(record_id, phase, number, results)
        return results

    def _finish(self, run: Run, status: Status, reason: str | None) -> None:
        try:
            self.journal.move(run.record_id, status, reason)
        except JournalError:
            log.exception("experiment %s: the final status %s was not recorded", run.record_id, status)
        self.journal.set_score(run.record_id, experiment_score(self.journal.probes(run.record_id)))
        self.safety.release(run.resolution.service, run.record_id)
        self.runs.pop(run.record_id, None)

    def _ttl_s(self, experiment: Experiment) -> float:
        return experiment.duration.total_seconds() + ttl_margin_s(experiment.duration)

    # Stopping.

    async def stop(self, experiment_id: str, by: str | None) -> ExperimentRecord:
        """Abort a running experiment, and answer once it has ended (or after STOP_WAIT_S)."""
        run = self.runs.get(experiment_id)
        if run is None:
            status = self.journal.get(experiment_id).status
            raise ExperimentConflict(f"experiment {experiment_id} is not running (it is {status})")
        run.abort("stop", f"stopped by {by or 'an operator'}")
        if run.task is not None:
            await asyncio.wait({run.task}, timeout=STOP_WAIT_S)
        return self.journal.get(experiment_id)

    async def emergency_stop(self, by: str | None, reason: str) -> dict[str, Any]:
        """Engage the stop, abort every run, revert every open injection; answer once all are confirmed."""
        started = time.perf_counter()
        engaged = self.safety.engage(by, reason)
        waiting = [
            self._abort_now(run, f"emergency stop by {by or 'an operator'}: {reason}") for run in self.runs.values()
        ]
        open_injections = self.journal.injections(open_only=True)
        orphans = [self.rollbacks.start(item) for item in open_injections if item.experiment_id not in self.runs]
        if waiting or orphans:
            _, pending = await asyncio.wait({*waiting, *orphans}, timeout=STOP_WAIT_S)
            for task in pending:
                if task not in orphans:
                    task.cancel()
        still_open = self.journal.injections(open_only=True)
        return {
            "engaged": engaged,
            "confirmed": not still_open,
            "openInjections": [item.model_dump(mode="json", by_alias=True) for item in still_open],
            "durationMs": round((time.perf_counter() - started) * 1000, 2),
        }

    def _abort_now(self, run: Run, reason: str) -> asyncio.Task[Any]:
        """Abort ``run``, start its rollback at once; a task that ends when the rollback is confirmed."""
        run.abort("emergency", reason)
        if run.injection is not None:
            self.rollbacks.start(run.injection)
        return asyncio.create_task(run.rolled_back.wait())

    async def close(self) -> None:
        """Abort every run (rolling back) at shutdown; what is not confirmed is left to the next start."""
        for run in list(self.runs.values()):
            run.abort("shutdown", "the chaos service is shutting down")
        tasks = [run.task for run in self.runs.values() if run.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT_S)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.rollbacks.close()

    # Crash recovery.

    async def recover(self) -> list[str]:
        """Revert what the journal shows injected and not reverted; mark running experiments aborted."""
        running = self.journal.experiments(status=[Status.RUNNING.value], limit=100_000)
        for record in running:
            self.safety.busy.setdefault(record.service, record.id)
            self.recovering.add(record.id)
        open_injections = self.journal.injections(open_only=True)
        if open_injections:
            self.journal.event(None, "recovery", f"reverting {len(open_injections)} faults left by the last run")
        await asyncio.gather(*(self.rollbacks.start(item) for item in open_injections))
        for record in running:
            self._recovered(record)
        return [record.id for record in running]

    def _recovered(self, record: ExperimentRecord) -> None:
        reason = "the chaos service restarted in the middle of the run; its faults were reverted at start-up"
        with contextlib.suppress(JournalError):
            self.journal.move(record.id, Status.ABORTED, reason)
        self.journal.set_score(record.id, experiment_score(self.journal.probes(record.id)))
        self.safety.release(record.service, record.id)
        self.recovering.discard(record.id)


def _verdict(run: Run, after_ok: bool) -> tuple[Status, str | None]:
    if run.reason is not None:
        return Status.ABORTED, run.reason
    if run.failed_rounds or not after_ok:
        during = f"{run.failed_rounds} probe rounds failed during the fault" if run.failed_rounds else ""
        after = "" if after_ok else "the steady state did not hold after the rollback"
        return Status.DEVIATED, "; ".join(part for part in (during, after) if part)
    return Status.COMPLETED, None


async def _wait(event: asyncio.Event, timeout_s: float) -> bool:
    """Whether ``event`` was set within ``timeout_s``."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)
    return event.is_set()


def _result_view(result: ProbeResult) -> dict[str, Any]:
    return {
        "probe": result.probe,
        "type": result.type,
        "ok": result.ok,
        "value": result.value,
        "detail": result.detail,
        "durationMs": result.duration_ms,
    }
