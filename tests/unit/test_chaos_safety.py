"""The safety rules, each refusal naming its rule and status, and the emergency stop kept in the state store."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from chaos.errors import EmergencyStopDisabled, EmergencyStopEngaged, SafetyRefusal, TargetBusy
from chaos.experiment import Resolution
from chaos.journal import Journal
from chaos.probes import ProbeResult
from chaos.safety import (
    SafetyController,
    SafetyPolicy,
    check_blast_radius,
    check_busy,
    check_duration,
    check_lists,
    check_running,
    check_steady_state,
    check_stop,
)
from tmsops.settings import SafetySettings
from tmsops.state import make_engine

SEED = SafetyPolicy.from_settings(SafetySettings())


def resolution(reached: int, running: int) -> Resolution:
    replicas = [f"echo-{index}" for index in range(1, running + 1)]
    return Resolution(service="echo", running=replicas, reached=replicas[:reached])


def refusal(rule: str, status: int, raised: pytest.ExceptionInfo[SafetyRefusal]) -> str:
    assert raised.value.rule == rule and raised.value.details["rule"] == rule
    assert raised.value.http_status == status
    assert raised.value.message.startswith(f"refused by safety rule {rule}: ")
    return raised.value.message


def test_the_seed_limits_are_the_defaults() -> None:
    assert SEED.max_duration == timedelta(minutes=30) and SEED.blast_radius_limit == 25
    assert SEED.auto_rollback and SEED.emergency_stop_enabled and SEED.allow is None


def test_a_duration_over_the_maximum_is_refused() -> None:
    check_duration(SEED, timedelta(minutes=30))
    with pytest.raises(SafetyRefusal) as raised:
        check_duration(SEED, timedelta(minutes=30, seconds=1))
    assert "1801 s is above maxExperimentDuration 1800 s" in refusal("maxExperimentDuration", 422, raised)


@pytest.mark.parametrize(
    ("reached", "running", "allowed"), [(1, 4, True), (2, 4, False), (1, 1, False), (2, 8, True), (3, 8, False)]
)
def test_the_blast_radius_is_a_share_of_running_replicas(reached: int, running: int, allowed: bool) -> None:
    if allowed:
        check_blast_radius(SEED, resolution(reached, running))
        return
    with pytest.raises(SafetyRefusal) as raised:
        check_blast_radius(SEED, resolution(reached, running))
    message = refusal("blastRadiusLimit", 422, raised)
    assert f"reaches {reached} of {running} replicas" in message and "above blastRadiusLimit 25 %" in message


def test_allow_and_deny_lists() -> None:
    policy = SafetyPolicy.from_settings(SafetySettings(), allow={"echo", "vault"}, deny={"vault"})
    check_lists(policy, "echo")
    with pytest.raises(SafetyRefusal) as raised:
        check_lists(policy, "billing")
    assert "not on the allow list (echo, vault)" in refusal("allowList", 422, raised)
    with pytest.raises(SafetyRefusal) as raised:
        check_lists(policy, "vault")
    refusal("denyList", 422, raised)
    check_lists(SEED, "anything")


def test_a_service_without_enough_running_replicas_is_refused() -> None:
    with pytest.raises(SafetyRefusal) as raised:
        check_running(resolution(0, 0), 0)
    assert "has no running replica" in refusal("runningReplicas", 422, raised)
    with pytest.raises(SafetyRefusal) as raised:
        check_running(resolution(2, 2), 3)
    assert "3 replicas asked, service echo runs 2" in refusal("runningReplicas", 422, raised)


def test_a_busy_service_is_a_conflict() -> None:
    check_busy({"other": "exp-1"}, "echo")
    with pytest.raises(TargetBusy) as raised:
        check_busy({"echo": "exp-1"}, "echo")
    assert "experiment exp-1 is running on service echo" in refusal("oneExperimentPerService", 409, raised)


def test_a_failing_probe_before_the_start_is_refused_naming_it() -> None:
    passed = ProbeResult("health", "http", True, "status 200 in 3 ms")
    check_steady_state([passed])
    check_steady_state([])
    with pytest.raises(SafetyRefusal) as raised:
        check_steady_state([passed, ProbeResult("errors", "prometheus", False, "0.4 is outside 0 ± 0.1")])
    assert "does not hold before the start: errors: 0.4 is outside" in refusal("steadyState", 422, raised)


def test_the_emergency_stop_refuses_until_rearmed_and_survives_a_restart(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    controller = SafetyController(SEED, Journal(engine))
    check_stop(controller.engaged)
    controller.engage("tok_1", "pager went off")
    restarted = SafetyController(SEED, Journal(engine))
    with pytest.raises(EmergencyStopEngaged) as raised:
        check_stop(restarted.engaged)
    assert "an admin must POST /safety/rearm" in refusal("emergencyStop", 409, raised)
    restarted.rearm("tok_admin")
    check_stop(SafetyController(SEED, Journal(engine)).engaged)
    kinds = [event.kind for event in Journal(engine).events()]
    assert kinds == ["emergency_stop", "rearm"]


def test_a_disabled_emergency_stop_cannot_be_engaged(tmp_path: Path) -> None:
    policy = SafetyPolicy.from_settings(SafetySettings(emergency_stop=False))
    controller = SafetyController(policy, Journal(make_engine(f"sqlite:///{tmp_path / 'state.db'}")))
    with pytest.raises(EmergencyStopDisabled, match=r"safety\.emergencyStop: false"):
        controller.engage("tok_1", "test")
    assert controller.engaged is None


def test_allow_and_deny_lists_come_from_the_settings() -> None:

    settings = SafetySettings(allow_services=["cart", "tracking"], deny_services=["payments"])
    policy = SafetyPolicy.from_settings(settings, deny=["ledger"])
    assert policy.allow == frozenset({"cart", "tracking"})
    assert policy.deny == frozenset({"payments", "ledger"})
    assert SafetyPolicy.from_settings(SafetySettings()).allow is None
