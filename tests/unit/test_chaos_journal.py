"""The journal's state machines (experiments and injections) and the resilience score, on a real SQLite store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chaos.errors import ExperimentNotFound, JournalError
from chaos.journal import Journal, Status
from chaos.probes import ProbeResult
from chaos.score import experiment_score, service_score
from tmsops.state import make_engine
from tmsops.targets.model import Fault, FaultRequest, FaultState, NetworkLatency

SPEC = {"name": "e", "target": {"service": "echo"}, "faultType": "network_latency", "weight": 1}


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(make_engine(f"sqlite:///{tmp_path / 'state.db'}"))


def request(service: str = "echo") -> FaultRequest:
    return FaultRequest(service=service, fault=NetworkLatency(latency_ms=100), ttl_s=11, replicas=["echo-1"])


def fault(fault_id: str = "f1") -> Fault:
    at = datetime.now(UTC)
    return Fault(
        id=fault_id,
        service="echo",
        fault=NetworkLatency(latency_ms=100),
        replicas=["echo-1"],
        injected_at=at,
        expires_at=at + timedelta(seconds=11),
        state=FaultState.ACTIVE,
    )


def test_an_experiment_moves_one_way(journal: Journal) -> None:
    record = journal.create(SPEC, kind="experiment", created_by="tok_1")
    assert record.status is Status.CREATED and record.service == "echo" and record.started_at is None
    with pytest.raises(JournalError, match="is created; it cannot become completed"):
        journal.move(record.id, Status.COMPLETED)
    running = journal.move(record.id, Status.RUNNING)
    assert running.started_at is not None and running.ended_at is None
    aborted = journal.move(record.id, Status.ABORTED, "stopped by tester")
    assert aborted.reason == "stopped by tester" and aborted.ended_at is not None
    for status in Status:
        with pytest.raises(JournalError):
            journal.move(record.id, status)
    messages = [event.message for event in journal.events(record.id)]
    assert messages == [
        "experiment 'e' created",
        "created -> running",
        "running -> aborted: stopped by tester",
    ]
    with pytest.raises(ExperimentNotFound):
        journal.get("exp-missing")


def test_an_injection_is_written_before_and_confirmed_after(journal: Journal) -> None:
    record = journal.create(SPEC, kind="experiment", created_by=None)
    injecting = journal.injecting(record.id, request())
    assert injecting.state == "injecting" and injecting.fault_id is None
    assert injecting.request["fault"] == {"type": "network_latency", "latencyMs": 100.0, "jitterMs": 0.0}
    assert [item.id for item in journal.injections(open_only=True)] == [injecting.id]
    active = journal.injected(injecting.id, fault())
    assert active.state == "active" and active.fault_id == "f1" and active.expires_at is not None
    journal.revert_attempt(active.id, "TargetUnavailable: the fleet cannot be reached")
    journal.revert_attempt(active.id, None)
    reverted = journal.reverted(active.id, "reverted")
    assert reverted.state == "reverted" and reverted.target_state == "reverted"
    assert reverted.revert_attempts == 2 and reverted.error == "TargetUnavailable: the fleet cannot be reached"
    assert reverted.revert_requested_at is not None and reverted.reverted_at is not None
    assert journal.injections(open_only=True) == []
    with pytest.raises(JournalError, match="is reverted; it cannot become reverted"):
        journal.reverted(active.id, "reverted")


def test_a_refused_injection_is_failed_and_an_unknown_one_can_be_reverted_by_matching(journal: Journal) -> None:
    record = journal.create(SPEC, kind="adhoc", created_by=None)
    refused = journal.refused(journal.injecting(record.id, request()).id, "no dependency 'postgres'")
    assert refused.state == "failed" and refused.error == "no dependency 'postgres'"
    with pytest.raises(JournalError, match="is failed; it cannot become active"):
        journal.injected(refused.id, fault())
    orphan = journal.injecting(record.id, request())
    matched = journal.reverted(orphan.id, "reverted", fault_id="f9")
    assert matched.fault_id == "f9" and matched.state == "reverted"


def test_open_injections_survive_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    first = Journal(make_engine(url))
    record = first.create(SPEC, kind="experiment", created_by=None)
    first.move(record.id, Status.RUNNING)
    first.injected(first.injecting(record.id, request()).id, fault("f2"))
    again = Journal(make_engine(url))
    assert [(item.fault_id, item.state) for item in again.injections(open_only=True)] == [("f2", "active")]
    assert [item.id for item in again.experiments(status=["running"])] == [record.id]


@dataclass
class Evaluated:
    probe: str
    ok: bool
    weight: float
    phase: str


def test_the_resilience_score_is_weighted_probe_success() -> None:
    results = [
        Evaluated("latency", True, 2, "before"),  # the gate before the start is not scored
        Evaluated("latency", True, 2, "during"),
        Evaluated("latency", False, 2, "during"),
        Evaluated("errors", True, 1, "during"),
        Evaluated("errors", True, 1, "after"),
    ]
    assert experiment_score(results) == pytest.approx(100 * (2 * 0.5 + 1 * 1.0) / 3, abs=0.01)
    assert experiment_score([Evaluated("latency", True, 1, "before")]) is None
    assert experiment_score([]) is None
    assert service_score([(50.0, 1), (100.0, 3), (None, 5)]) == 87.5
    assert service_score([(None, 1)]) is None


def test_probe_results_are_kept_in_order_with_their_phase(journal: Journal) -> None:
    record = journal.create(SPEC, kind="experiment", created_by=None)
    journal.probe_results(record.id, "during", 1, [ProbeResult("p", "http", False, "status 503", 12.0, 3.1, 2)])
    journal.probe_results(record.id, "after", 1, [ProbeResult("p", "http", True, "status 200", float("nan"))])
    stored = journal.probes(record.id)
    assert [(item.phase, item.ok, item.value, item.weight) for item in stored] == [
        ("during", False, 12.0, 2.0),
        ("after", True, None, 1.0),
    ]
    assert experiment_score(stored) == 50.0
