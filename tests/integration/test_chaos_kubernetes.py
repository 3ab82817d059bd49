"""The chaos service on the Kubernetes target, against the fake API server (tests/support/fake_kube.py):
faults become Chaos Mesh resources whose ``duration`` is the time-to-live, deleted at the rollback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes.client import ApiClient, Configuration
from support.chaos_env import ChaosEnv, chaos_on, latency_experiment
from support.fake_kube import FakeKube, fake_kube

from tmsops.settings import KubernetesTargetSettings
from tmsops.targets.kubernetes import KubernetesTarget

pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group("chaos")]
PART_OF = {"app.kubernetes.io/part-of": "tms"}


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with fake_kube() as server:
        server.add_deployment("cart", 4, PART_OF, {"tmsops.io/dependencies": '{"postgres": "db.default.svc:5432"}'})
        yield server


@pytest.fixture
async def env(tmp_path: Path, kube: FakeKube) -> AsyncIterator[ChaosEnv]:
    client = ApiClient(Configuration(host=kube.url))
    target = KubernetesTarget(
        KubernetesTargetSettings(), default_min_replicas=1, default_max_replicas=10, api_client=client
    )
    try:
        async with chaos_on(tmp_path, target) as running:
            yield running
    finally:
        client.close()


async def test_an_experiment_creates_and_deletes_a_chaos_mesh_resource(env: ChaosEnv, kube: FakeKube) -> None:
    body = latency_experiment(100, target={"service": "cart", "mode": "one"}, duration="10s")
    experiment_id = await env.start(body)
    [fault] = await env.injected("cart")
    [resource] = kube.objects("networkchaos")
    assert resource["spec"]["duration"] == "11s"  # 10 s and a 1 s margin: Chaos Mesh ends it by itself
    assert resource["spec"]["selector"] == {"pods": {"default": fault.replicas}} and len(fault.replicas) == 1
    stopped = await env.client.post(f"/experiments/{experiment_id}/stop", headers=env.operator)
    assert stopped.status_code == 200 and stopped.json()["status"] == "aborted"
    assert kube.objects("networkchaos") == []
    detail = await env.detail(experiment_id)
    assert [(item["faultId"], item["targetState"]) for item in detail["injections"]] == [(fault.id, "reverted")]


async def test_a_dry_run_creates_nothing_and_an_unsupported_fault_fails_cleanly(env: ChaosEnv, kube: FakeKube) -> None:
    stress = {"target": {"service": "cart"}, "faultType": "cpu_stress", "duration": "30s", "dryRun": True}
    plan = await env.client.post("/faults/inject", json=stress, headers=env.operator)
    assert plan.status_code == 200, plan.text
    assert len(plan.json()["runningReplicas"]) == 4 and plan.json()["blastRadiusPercent"] == 25
    assert kube.objects("stresschaos") == [] and kube.calls("POST")[-1].query["dryRun"] == ["All"]
    disk = {"target": {"service": "cart"}, "faultType": "disk_full", "duration": "30s"}
    answer = await env.client.post("/faults/inject", json=disk, headers=env.operator)
    assert answer.status_code == 202, answer.text
    detail = await env.finished(answer.json()["id"])
    assert detail["experiment"]["status"] == "failed"
    assert "the target refused the injection" in detail["experiment"]["reason"]
    assert [item["state"] for item in detail["injections"]] == ["failed"]
