"""Experiments as validated data: parsing JSON and YAML, field-naming errors, fault mapping, target selection."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

import pytest

from chaos.errors import InvalidExperiment, UnsupportedMediaType
from chaos.experiment import (
    FAULT_KINDS,
    AdHocInjection,
    fault_request,
    fault_types_catalog,
    parse_experiment,
    parse_injection,
    read_document,
    resolve,
)
from tmsops.targets.model import (
    CpuStress,
    DiskFill,
    FaultType,
    MemoryGrowth,
    NetworkLatency,
    Replica,
    ServiceStatus,
    ServiceUnavailable,
    SlowDependency,
)

YAML = """
name: gateway latency
target: {service: api-gateway, mode: percent, value: 50}
faultType: network_latency
parameters: {latencyMs: 200, jitterMs: 20}
duration: 5m
steadyState:
  probes:
    - {type: http, url: "http://127.0.0.1:8080/health", maxLatencyMs: 500}
    - {type: prometheus, name: errors, query: "sum(rate(x[1m]))", expected: 0, tolerance: 0.1}
    - {type: anomaly, service: api-gateway, metric: p95LatencyMs}
probeInterval: 2s
failureThreshold: 2
"""


def experiment(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "e",
        "target": {"service": "echo"},
        "faultType": "network_latency",
        "parameters": {"latencyMs": 100},
        "duration": "10s",
    }
    return {**body, **overrides}


def status(replicas: int, name: str = "echo") -> ServiceStatus:
    pods = [Replica(id=f"{name}-{index}", ready=True) for index in range(1, replicas + 1)]
    return ServiceStatus(
        name=name, replicas=replicas, ready_replicas=replicas, min_replicas=1, max_replicas=10, pods=pods
    )


def errors_of(body: Any) -> dict[str, str]:
    with pytest.raises(InvalidExperiment) as raised:
        parse_experiment(body)
    problems = raised.value.details["errors"]
    assert isinstance(problems, list)
    return {item["field"]: item["message"] for item in problems}


def test_a_yaml_experiment_is_read_with_every_probe_type() -> None:
    parsed = parse_experiment(read_document(YAML.encode(), "application/yaml"))
    assert parsed.duration == timedelta(minutes=5) and parsed.probe_interval == timedelta(seconds=2)
    assert [probe.name for probe in parsed.steady_state.probes] == ["http-1", "errors", "anomaly-3"]
    assert parsed.spec() == NetworkLatency(latency_ms=200, jitter_ms=20)
    again = parse_experiment(json.loads(json.dumps(parsed.model_dump(mode="json", by_alias=True))))
    assert again == parsed


@pytest.mark.parametrize(
    ("fault_type", "parameters", "spec"),
    [
        ("network_latency", {"latencyMs": 50}, NetworkLatency(latency_ms=50)),
        ("service_unavailable", {"mode": "pause"}, ServiceUnavailable(mode="pause")),
        ("cpu_stress", {"workers": 2, "loadPercent": 80}, CpuStress(workers=2, load_percent=80)),
        ("memory_leak", {"rateMbPerS": 5, "capMb": 64}, MemoryGrowth(rate_mb_per_s=5, cap_mb=64)),
        ("disk_full", {"fillPercent": 90}, DiskFill(fill_percent=90, floor_mb=1024)),
        ("database_slow", {"latencyMs": 30}, SlowDependency(dependency="postgres", latency_ms=30)),
    ],
)
def test_each_seed_fault_type_maps_onto_the_target_fault(
    fault_type: str, parameters: dict[str, Any], spec: object
) -> None:
    parsed = parse_experiment(experiment(faultType=fault_type, parameters=parameters))
    assert parsed.spec() == spec
    assert parsed.kind.target_type is FaultType(parsed.spec().type)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (experiment(faultType="kill_all"), "faultType", "Input should be 'network_latency'"),
        (experiment(parameters={"latencyMs": -5}), "parameters.latencyMs", "greater than or equal to 0"),
        (experiment(parameters={}), "parameters.latencyMs", "Field required"),
        (experiment(parameters={"latencyMs": 5, "lossPercent": 3}), "parameters.lossPercent", "Extra inputs"),
        (experiment(faultType="disk_full", parameters={"floorMb": 10}), "parameters.floorMb", "greater than or equal"),
        (experiment(duration="soon"), "duration", "Input should be a valid timedelta"),
        (experiment(duration="0s"), "duration", "duration must be between"),
        (experiment(target={"service": "echo", "mode": "fixed"}), "target", "mode fixed needs a whole number"),
        (experiment(target={"service": "echo", "mode": "percent", "value": 150}), "target", "above 0 and at most 100"),
        (experiment(target={"service": "Not A Name"}), "target.service", "should match pattern"),
        (experiment(failureThreshold=0), "failureThreshold", "greater than or equal to 1"),
        (experiment(steadyState={"probes": [{"type": "ping"}]}), "steadyState.probes.0", "Input tag 'ping'"),
        (
            experiment(steadyState={"probes": [{"type": "http", "url": "ftp://x"}]}),
            "steadyState.probes.0.url",
            "^https?",
        ),
        (
            experiment(steadyState={"probes": [{"type": "http", "url": "http://a", "name": "p"}] * 2}),
            "steadyState",
            "two probes are named 'p'",
        ),
        (
            experiment(steadyState={"probes": [{"type": "anomaly", "service": "echo", "window": "1m"}]}),
            "steadyState.probes.0",
            "window must hold at least minPoints",
        ),
    ],
)
def test_invalid_experiments_name_the_field(body: dict[str, Any], field: str, message: str) -> None:
    problems = errors_of(body)
    assert field in problems, problems
    assert message in problems[field]


def test_a_bad_fault_type_is_reported_alone_not_with_its_parameters() -> None:
    assert list(errors_of(experiment(faultType="nope", parameters={"whatever": 1}))) == ["faultType"]


def test_bodies_must_be_json_or_yaml() -> None:
    with pytest.raises(InvalidExperiment, match="body: not valid JSON"):
        read_document(b"{name: x", "application/json")
    with pytest.raises(InvalidExperiment, match="body: not valid YAML"):
        read_document(b"name: [x", "application/x-yaml")
    with pytest.raises(InvalidExperiment, match="an experiment is required"):
        read_document(b"  ", "application/json")
    with pytest.raises(UnsupportedMediaType, match="text/csv"):
        read_document(b"a,b", "text/csv")


def test_an_ad_hoc_injection_becomes_an_experiment_without_probes() -> None:
    injection = parse_injection(
        {"target": {"service": "echo"}, "faultType": "cpu_stress", "duration": "30s", "dryRun": True}
    )
    assert isinstance(injection, AdHocInjection) and injection.dry_run
    as_experiment = injection.as_experiment()
    assert as_experiment.name == "ad hoc cpu_stress on echo"
    assert as_experiment.duration == timedelta(seconds=30) and not as_experiment.steady_state.probes
    assert as_experiment.spec() == CpuStress()
    with pytest.raises(InvalidExperiment, match="duration: Field required"):
        parse_injection({"target": {"service": "echo"}, "faultType": "cpu_stress"})


@pytest.mark.parametrize(
    ("target", "running", "reached"),
    [
        ({"mode": "one"}, 4, 1),
        ({"mode": "all"}, 4, 4),
        ({"mode": "fixed", "value": 3}, 4, 3),
        ({"mode": "fixed", "value": 6}, 4, 4),
        ({"mode": "percent", "value": 50}, 5, 2),
        ({"mode": "percent", "value": 10}, 3, 1),
        ({"mode": "percent", "value": 100}, 3, 3),
        ({"mode": "one"}, 0, 0),
    ],
)
def test_selectors_resolve_to_running_replicas(target: dict[str, Any], running: int, reached: int) -> None:
    parsed = parse_experiment(experiment(target={"service": "echo", **target}))
    resolution = resolve(parsed, status(running), random.Random(7))
    assert len(resolution.reached) == reached
    assert set(resolution.reached) <= set(resolution.running)
    assert resolution.percent == (100 * reached / running if running else 0)


def test_service_wide_faults_reach_every_replica_and_name_them_as_the_target_needs() -> None:
    disk = parse_experiment(experiment(faultType="disk_full", parameters={"fillPercent": 50}))
    database = parse_experiment(experiment(faultType="database_slow", parameters={"latencyMs": 20}))
    latency = parse_experiment(experiment(target={"service": "echo", "mode": "fixed", "value": 2}))
    for parsed in (disk, database):
        resolution = resolve(parsed, status(4))
        assert resolution.percent == 100
    assert fault_request(disk, resolve(disk, status(4)), 12).replicas == ["echo-1"]
    assert fault_request(database, resolve(database, status(4)), 12).replicas == []
    request = fault_request(latency, resolve(latency, status(4), random.Random(1)), 12, dry_run=True)
    assert len(request.replicas) == 2 and request.ttl_s == 12 and request.dry_run


def test_the_catalog_describes_six_types_with_their_parameter_schemas() -> None:
    catalog = {entry["name"]: entry for entry in fault_types_catalog()}
    assert set(catalog) == set(FAULT_KINDS) and len(catalog) == 6
    latency = catalog["network_latency"]
    assert latency["targetFault"] == "network_latency" and latency["scope"] == "replica"
    assert latency["parameters"]["required"] == ["latencyMs"]
    assert "kind" not in latency["parameters"]["properties"]
    assert catalog["disk_full"]["scope"] == "service"
    assert catalog["disk_full"]["parameters"]["properties"]["floorMb"]["minimum"] == 256
    assert catalog["memory_leak"]["targetFault"] == "memory_growth"
