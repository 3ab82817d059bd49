"""The Kubernetes target against a fake API server over real HTTP (tests/support/fake_kube.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient, Configuration
from support.fake_kube import FakeKube, fake_kube
from support.net import free_port

from tmsops.settings import KubernetesTargetSettings
from tmsops.targets import kubernetes_chaos
from tmsops.targets.base import (
    Forbidden,
    ReplicasOutOfRange,
    Target,
    TargetError,
    TargetUnavailable,
    UnknownFault,
    UnknownService,
    UnsupportedFault,
)
from tmsops.targets.kubernetes import KubernetesTarget
from tmsops.targets.model import (
    BandwidthLimit,
    ConnectionReset,
    CpuStress,
    DiskFill,
    FaultRequest,
    FaultSpec,
    FaultState,
    MemoryGrowth,
    NetworkLatency,
    Resources,
    ServiceUnavailable,
    SlowDependency,
)
from tmsops.targets.quantities import format_cpu, format_memory, parse_cpu, parse_memory

pytestmark = pytest.mark.anyio

NS = "shop"
PART_OF = {"app.kubernetes.io/part-of": "tms"}
APPS = f"/apis/apps/v1/namespaces/{NS}/deployments"
CART_SCALE = f"{APPS}/cart/scale"
CHAOS = f"/apis/chaos-mesh.org/v1alpha1/namespaces/{NS}"
MI = 2**20

CART_CONTAINER: dict[str, Any] = {
    "name": "cart",
    "image": "tms/cart:1",
    "ports": [{"containerPort": 8080}],
    "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}},
}
CHECKOUT_CONTAINERS: list[dict[str, Any]] = [
    {"name": "proxy", "image": "envoy:1", "ports": [{"containerPort": 15001}]},
    {
        "name": "app",
        "image": "tms/checkout:1",
        "ports": [{"containerPort": 9000}],
        "resources": {"limits": {"cpu": "1"}},
    },
]


def seed(kube: FakeKube) -> None:
    cart_annotations = {
        "tmsops.io/min-replicas": "1",
        "tmsops.io/max-replicas": "5",
        "tmsops.io/dependencies": json.dumps({"postgres": "postgres.shop.svc:5432"}),
    }
    kube.add_deployment("cart", 2, PART_OF, cart_annotations, [CART_CONTAINER], namespace=NS)
    kube.add_deployment(
        "checkout", 1, PART_OF, {"tmsops.io/container": "app"}, CHECKOUT_CONTAINERS, namespace=NS, ready_replicas=0
    )
    kube.add_deployment("ledger", 1, {"app.kubernetes.io/part-of": "finance"}, namespace=NS)


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with fake_kube() as server:
        seed(server)
        yield server


def settings(**overrides: Any) -> KubernetesTargetSettings:
    values: dict[str, Any] = {
        "namespace": NS,
        "label_selector": "app.kubernetes.io/part-of=tms",
        "conflict_retries": 3,
        "request_timeout": timedelta(seconds=5),
    }
    return KubernetesTargetSettings(**(values | overrides))


def make_target(url: str, **overrides: Any) -> tuple[KubernetesTarget, ApiClient]:
    client = ApiClient(Configuration(host=url))
    target = KubernetesTarget(settings(**overrides), default_min_replicas=1, default_max_replicas=10, api_client=client)
    return target, client


@pytest.fixture
def target(kube: FakeKube) -> Iterator[KubernetesTarget]:
    made, client = make_target(kube.url)
    yield made
    client.close()


# -- services -----------------------------------------------------------------------------------


async def test_is_a_target(target: KubernetesTarget) -> None:
    assert isinstance(target, Target)
    assert target.kind == "kubernetes"


async def test_list_services_selects_deployments_by_label(target: KubernetesTarget, kube: FakeKube) -> None:
    services = await target.list_services()

    assert [s.name for s in services] == ["cart", "checkout"]
    assert kube.calls("GET", APPS)[0].query["labelSelector"] == ["app.kubernetes.io/part-of=tms"]
    cart, checkout = services
    assert (cart.replicas, cart.ready_replicas, cart.min_replicas, cart.max_replicas) == (2, 2, 1, 5)
    assert cart.resources == Resources(cpu_request=0.25, cpu_limit=0.5, memory_request=256 * MI, memory_limit=512 * MI)
    assert [p.id for p in cart.pods] == ["cart-0", "cart-1"]
    assert all(p.ready and p.address == "10.0.0.1" and p.started_at is not None for p in cart.pods)
    assert (checkout.min_replicas, checkout.max_replicas, checkout.ready_replicas) == (1, 10, 0)
    assert checkout.resources == Resources(cpu_limit=1.0)


async def test_service_reads_pods_with_the_match_labels(target: KubernetesTarget, kube: FakeKube) -> None:
    kube.add_pod("cart-2", labels={"app": "cart"}, namespace=NS, ready=False, restarts=3)

    cart = await target.service("cart")

    assert kube.calls("GET", f"/api/v1/namespaces/{NS}/pods")[-1].query["labelSelector"] == ["app=cart"]
    assert [(p.id, p.ready, p.restarts) for p in cart.pods] == [
        ("cart-0", True, 0),
        ("cart-1", True, 0),
        ("cart-2", False, 3),
    ]


async def test_unknown_service_names_the_known_ones(target: KubernetesTarget) -> None:
    with pytest.raises(UnknownService, match=r"'ledger'.*known services: cart, checkout"):
        await target.service("ledger")


async def test_missing_main_container_is_an_error(target: KubernetesTarget, kube: FakeKube) -> None:
    kube.add_deployment("bad", 1, PART_OF, {"tmsops.io/container": "nope"}, namespace=NS)

    with pytest.raises(TargetError, match="no container 'nope'"):
        await target.service("bad")


# -- scaling ------------------------------------------------------------------------------------


async def test_scale_sends_the_resource_version_and_stores_replicas(target: KubernetesTarget, kube: FakeKube) -> None:
    version = kube.deployment("cart", NS)["metadata"]["resourceVersion"]

    status = await target.set_replicas("cart", 4)

    assert status.replicas == 4
    assert kube.deployment("cart", NS)["spec"]["replicas"] == 4
    (put,) = kube.calls("PUT", CART_SCALE)
    assert put.content_type == "application/json"
    assert put.body["kind"] == "Scale"
    assert put.body["metadata"]["resourceVersion"] == version
    assert put.body["spec"] == {"replicas": 4}
    assert "dryRun" not in put.query


async def test_out_of_range_is_refused_without_writing(target: KubernetesTarget, kube: FakeKube) -> None:
    with pytest.raises(ReplicasOutOfRange, match=r"6 replicas is outside minReplicas 1 \.\. maxReplicas 5"):
        await target.set_replicas("cart", 6)
    with pytest.raises(ReplicasOutOfRange):
        await target.set_replicas("cart", 0)

    assert kube.writes() == []
    assert kube.calls("GET", CART_SCALE) == []


async def test_dry_run_scale_changes_nothing(target: KubernetesTarget, kube: FakeKube) -> None:
    status = await target.set_replicas("cart", 3, dry_run=True)

    assert status.replicas == 3
    assert kube.deployment("cart", NS)["spec"]["replicas"] == 2
    (put,) = kube.calls("PUT", CART_SCALE)
    assert put.query["dryRun"] == ["All"]


async def test_conflicts_are_retried_then_succeed(target: KubernetesTarget, kube: FakeKube) -> None:
    kube.script("PUT", CART_SCALE, 409, times=2)

    status = await target.set_replicas("cart", 5)

    assert status.replicas == 5
    assert kube.deployment("cart", NS)["spec"]["replicas"] == 5
    assert len(kube.calls("PUT", CART_SCALE)) == 3
    assert len(kube.calls("GET", CART_SCALE)) == 3


async def test_a_concurrent_writer_causes_a_real_conflict(target: KubernetesTarget, kube: FakeKube) -> None:
    """Another client writes between our read and our write: the stale resourceVersion gets 409."""
    kube.interfere("cart", NS, times=1)

    await target.set_replicas("cart", 3)

    first, second = kube.calls("PUT", CART_SCALE)
    assert first.body["metadata"]["resourceVersion"] != second.body["metadata"]["resourceVersion"]
    assert kube.deployment("cart", NS)["spec"]["replicas"] == 3


async def test_conflicts_forever_are_temporary(target: KubernetesTarget, kube: FakeKube) -> None:
    kube.script("PUT", CART_SCALE, 409, times=100)

    with pytest.raises(TargetUnavailable, match="conflicts persisted after 3 retries") as raised:
        await target.set_replicas("cart", 3)

    assert raised.value.retryable and raised.value.retry_after > 0
    assert len(kube.calls("PUT", CART_SCALE)) == 4
    assert kube.deployment("cart", NS)["spec"]["replicas"] == 2


async def test_forbidden_is_not_retried(target: KubernetesTarget, kube: FakeKube) -> None:
    kube.forbid("update", "deployments/scale")

    with pytest.raises(Forbidden, match=r"cannot update deployments/scale 'cart'.*cannot update resource") as raised:
        await target.set_replicas("cart", 3)

    assert not raised.value.retryable
    assert len(kube.calls("PUT", CART_SCALE)) == 1


async def test_a_deployment_gone_while_scaling_is_unknown(target: KubernetesTarget, kube: FakeKube) -> None:
    kube.script("GET", CART_SCALE, 404)

    with pytest.raises(UnknownService, match="'cart'"):
        await target.set_replicas("cart", 3)


# -- resources ----------------------------------------------------------------------------------


async def test_resources_patch_sets_only_given_fields(target: KubernetesTarget, kube: FakeKube) -> None:
    status = await target.set_resources("cart", Resources(cpu_request=0.3, memory_limit="1Gi"))

    (patch,) = kube.calls("PATCH", f"{APPS}/cart")
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert patch.body == {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "cart", "resources": {"requests": {"cpu": "300m"}, "limits": {"memory": "1024Mi"}}}
                    ]
                }
            }
        }
    }
    stored = kube.deployment("cart", NS)["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert stored == {"requests": {"cpu": "300m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "1024Mi"}}
    assert status.resources.cpu_request == 0.3 and status.resources.memory_limit == 2**30


async def test_resources_patch_targets_the_main_container(target: KubernetesTarget, kube: FakeKube) -> None:
    await target.set_resources("checkout", Resources(memory_request=300 * MI + 1))

    (patch,) = kube.calls("PATCH", f"{APPS}/checkout")
    assert patch.body["spec"]["template"]["spec"]["containers"] == [
        {"name": "app", "resources": {"requests": {"memory": str(300 * MI + 1)}}}
    ]
    containers = kube.deployment("checkout", NS)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["proxy", "app"]
    assert "resources" not in containers[0]


async def test_dry_run_resources_change_nothing(target: KubernetesTarget, kube: FakeKube) -> None:
    before = kube.deployment("cart", NS)

    status = await target.set_resources("cart", Resources(cpu_limit=2), dry_run=True)

    assert status.resources.cpu_limit == 2.0
    assert kube.deployment("cart", NS) == before
    assert kube.calls("PATCH", f"{APPS}/cart")[0].query["dryRun"] == ["All"]


async def test_resources_conflict_is_retried(target: KubernetesTarget, kube: FakeKube) -> None:
    kube.script("PATCH", f"{APPS}/cart", 409)

    await target.set_resources("cart", Resources(cpu_request=0.1))

    assert len(kube.calls("PATCH", f"{APPS}/cart")) == 2


async def test_invalid_resources_are_a_permanent_error(target: KubernetesTarget, kube: FakeKube) -> None:
    with pytest.raises(TargetError, match="must be at most the cpu limit") as raised:
        await target.set_resources("cart", Resources(cpu_request=2))

    assert not raised.value.retryable
    assert len(kube.calls("PATCH", f"{APPS}/cart")) == 1


async def test_no_resources_given_sends_no_patch(target: KubernetesTarget, kube: FakeKube) -> None:
    status = await target.set_resources("cart", Resources())

    assert status.name == "cart"
    assert kube.writes() == []


# -- errors -------------------------------------------------------------------------------------


async def test_server_errors_are_temporary(target: KubernetesTarget, kube: FakeKube) -> None:
    kube.script("GET", APPS, 503, message="etcd leader changed")

    with pytest.raises(TargetUnavailable, match="etcd leader changed") as raised:
        await target.list_services()

    assert raised.value.retryable


async def test_an_unreachable_api_is_temporary() -> None:
    made, client = make_target(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(TargetUnavailable, match="unreachable"):
            await made.list_services()
    finally:
        client.close()


async def test_a_timeout_is_temporary(kube: FakeKube) -> None:
    kube.stall("GET", APPS, 1.0)
    made, client = make_target(kube.url, request_timeout=timedelta(milliseconds=100))
    try:
        with pytest.raises(TargetUnavailable, match="unreachable"):
            await made.list_services()
    finally:
        client.close()


async def test_client_from_a_kubeconfig(kube: FakeKube, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": kube.url}}],
                "users": [{"name": "tmsops", "user": {"token": "secret"}}],
                "contexts": [{"name": "test", "context": {"cluster": "fake", "user": "tmsops"}}],
                "current-context": "",
            }
        )
    )
    made = KubernetesTarget(
        settings(kubeconfig=kubeconfig, context="test"), default_min_replicas=1, default_max_replicas=10
    )
    try:
        assert [s.name for s in await made.list_services()] == ["cart", "checkout"]
    finally:
        await made.aclose()


def test_a_missing_kubeconfig_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="cannot configure the Kubernetes client"):
        KubernetesTarget(settings(kubeconfig=tmp_path / "missing"), default_min_replicas=1, default_max_replicas=10)


# -- usage --------------------------------------------------------------------------------------


async def test_usage_sums_containers_per_pod(target: KubernetesTarget, kube: FakeKube) -> None:
    kube.add_pod_metrics("cart-0", {"cart": ("250m", "100Mi"), "proxy": ("123456n", "12345Ki")}, namespace=NS)
    kube.add_pod_metrics("cart-1", {"cart": ("1u", "1G")}, namespace=NS, timestamp="2024-05-01T12:00:30Z")
    kube.add_pod_metrics("checkout-0", {"app": ("2", "1Gi")}, namespace=NS)

    usage = await target.usage("cart")

    assert kube.calls("GET", f"/apis/metrics.k8s.io/v1beta1/namespaces/{NS}/pods")[0].query["labelSelector"] == [
        "app=cart"
    ]
    assert [r.replica for r in usage.replicas] == ["cart-0", "cart-1"]
    first, second = usage.replicas
    assert first.cpu_cores == pytest.approx(0.250123456)
    assert first.memory_bytes == 100 * MI + 12345 * 1024
    assert (second.cpu_cores, second.memory_bytes) == (pytest.approx(1e-6), 10**9)
    assert usage.at == datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC)
    assert usage.resources.cpu_limit == 0.5


async def test_usage_without_metrics_server_is_temporary(target: KubernetesTarget, kube: FakeKube) -> None:
    kube.metrics_api = False

    with pytest.raises(TargetUnavailable, match="metrics-server is not installed") as raised:
        await target.usage("cart")

    assert raised.value.retryable


# -- faults -------------------------------------------------------------------------------------

FAULT_CASES: list[tuple[FaultSpec, str, dict[str, Any]]] = [
    (
        NetworkLatency(latency_ms=120, jitter_ms=20),
        "networkchaos",
        {"action": "delay", "delay": {"latency": "120ms", "jitter": "20ms", "correlation": "0"}},
    ),
    (
        BandwidthLimit(rate_kbps=800),
        "networkchaos",
        {"action": "bandwidth", "bandwidth": {"rate": "800kbps", "limit": 20 * MI, "buffer": 10_000}},
    ),
    (ConnectionReset(probability=0.25), "networkchaos", {"action": "loss", "loss": {"loss": "25"}}),
    (
        ServiceUnavailable(mode="error", status=503),
        "httpchaos",
        {"target": "Response", "port": 8080, "replace": {"code": 503}},
    ),
    (ServiceUnavailable(mode="pause"), "podchaos", {"action": "pod-failure"}),
    (ServiceUnavailable(mode="refuse"), "networkchaos", {"action": "partition", "direction": "to"}),
    (CpuStress(workers=2, load_percent=80), "stresschaos", {"stressors": {"cpu": {"workers": 2, "load": 80}}}),
    (
        MemoryGrowth(rate_mb_per_s=10, cap_mb=256),
        "stresschaos",
        {"stressors": {"memory": {"workers": 1, "size": "256MB"}}},
    ),
    (
        SlowDependency(dependency="postgres", latency_ms=50),
        "networkchaos",
        {
            "action": "delay",
            "delay": {"latency": "50ms", "jitter": "0ms", "correlation": "0"},
            "direction": "to",
            "externalTargets": ["postgres.shop.svc"],
        },
    ),
]


@pytest.mark.parametrize(("spec", "plural", "expected"), FAULT_CASES, ids=lambda v: getattr(v, "type", None))
async def test_each_fault_becomes_its_chaos_resource(
    target: KubernetesTarget, kube: FakeKube, spec: FaultSpec, plural: str, expected: dict[str, Any]
) -> None:
    fault = await target.inject(FaultRequest(service="cart", fault=spec, ttl_s=30))

    (stored,) = kube.objects(plural)
    assert stored["metadata"]["name"] == f"tmsops-{fault.id}"
    assert stored["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "tmsops",
        "tmsops.io/fault-id": fault.id,
        "tmsops.io/service": "cart",
        "tmsops.io/fault-type": spec.type.value,
    }
    spec_sent = stored["spec"]
    assert {key: spec_sent[key] for key in expected} == expected
    assert spec_sent["duration"] == "30s"
    assert spec_sent["mode"] == "all"
    assert spec_sent["selector"]["namespaces"] == [NS]
    assert spec_sent["selector"]["labelSelectors"] == {"app": "cart"}
    assert (fault.state, fault.service, fault.fault) == (FaultState.ACTIVE, "cart", spec)
    assert fault.expires_at - fault.injected_at == timedelta(seconds=30)
    assert kube.calls("POST", f"{CHAOS}/{plural}")[0].content_type == "application/json"


async def test_stress_targets_the_main_container(target: KubernetesTarget, kube: FakeKube) -> None:
    await target.inject(FaultRequest(service="checkout", fault=CpuStress(), ttl_s=10))

    assert kube.objects("stresschaos")[0]["spec"]["containerNames"] == ["app"]


async def test_http_chaos_uses_the_main_containers_port(target: KubernetesTarget, kube: FakeKube) -> None:
    await target.inject(FaultRequest(service="checkout", fault=ServiceUnavailable(status=500), ttl_s=10))

    assert kube.objects("httpchaos")[0]["spec"]["port"] == 9000


async def test_fault_on_chosen_replicas_names_the_pods(target: KubernetesTarget, kube: FakeKube) -> None:
    fault = await target.inject(
        FaultRequest(service="cart", fault=NetworkLatency(latency_ms=10), ttl_s=1.5, replicas=["cart-1"])
    )

    spec = kube.objects("networkchaos")[0]["spec"]
    assert spec["selector"] == {"pods": {NS: ["cart-1"]}}
    assert spec["duration"] == "1500ms"
    assert fault.replicas == ["cart-1"]


async def test_fault_on_an_unknown_replica_is_refused(target: KubernetesTarget, kube: FakeKube) -> None:
    with pytest.raises(TargetError, match="no pods cart-9"):
        await target.inject(FaultRequest(service="cart", fault=CpuStress(), ttl_s=10, replicas=["cart-9"]))

    assert kube.writes() == []


async def test_faults_go_to_the_chaos_namespace(kube: FakeKube) -> None:
    made, client = make_target(kube.url, chaos_namespace="chaos-testing")
    try:
        fault = await made.inject(FaultRequest(service="cart", fault=CpuStress(), ttl_s=10))
        (stored,) = kube.objects("stresschaos")
        assert stored["metadata"]["namespace"] == "chaos-testing"
        assert stored["spec"]["selector"]["namespaces"] == [NS]
        assert [f.id for f in await made.faults()] == [fault.id]
    finally:
        client.close()


async def test_dry_run_fault_is_planned_and_stores_nothing(target: KubernetesTarget, kube: FakeKube) -> None:
    fault = await target.inject(FaultRequest(service="cart", fault=CpuStress(), ttl_s=10, dry_run=True))

    assert fault.state == FaultState.PLANNED
    assert kube.objects("stresschaos") == []
    assert kube.calls("POST", f"{CHAOS}/stresschaos")[0].query["dryRun"] == ["All"]


async def test_faults_lists_every_kind_with_its_state(target: KubernetesTarget, kube: FakeKube) -> None:
    latency = await target.inject(FaultRequest(service="cart", fault=NetworkLatency(latency_ms=5), ttl_s=60))
    stress = await target.inject(FaultRequest(service="checkout", fault=CpuStress(), ttl_s=60))
    past = datetime.now(UTC) - timedelta(hours=1)
    old = FaultRequest(service="cart", fault=ServiceUnavailable(mode="pause"), ttl_s=30)
    chaos_target = kubernetes_chaos.ChaosTarget("cart", NS, {"app": "cart"}, "cart")
    kube.add_object(
        "podchaos", kubernetes_chaos.chaos_object("0ld", old, chaos_target, NS, past), group="chaos-mesh.org"
    )
    kube.add_object("podchaos", {"metadata": {"name": "not-ours", "namespace": NS, "labels": {}}, "spec": {}})

    every = await target.faults()
    only_cart = await target.faults("cart")

    assert [(f.id, f.state) for f in every] == [
        ("0ld", FaultState.EXPIRED),
        (latency.id, FaultState.ACTIVE),
        (stress.id, FaultState.ACTIVE),
    ]
    assert {f.id for f in only_cart} == {"0ld", latency.id}
    assert every[1] == latency


async def test_revert_deletes_and_twice_is_fine(target: KubernetesTarget, kube: FakeKube) -> None:
    fault = await target.inject(FaultRequest(service="cart", fault=ConnectionReset(), ttl_s=60))

    reverted = await target.revert(fault.id)
    again = await target.revert(fault.id)

    assert reverted is not None and reverted.state == FaultState.REVERTED and reverted.id == fault.id
    assert again is None
    assert kube.objects("networkchaos") == []
    assert len(kube.calls("DELETE", f"{CHAOS}/networkchaos/tmsops-{fault.id}")) == 1


async def test_revert_of_a_fault_gone_meanwhile_is_fine(target: KubernetesTarget, kube: FakeKube) -> None:
    fault = await target.inject(FaultRequest(service="cart", fault=ConnectionReset(), ttl_s=60))
    kube.script("DELETE", f"{CHAOS}/networkchaos/tmsops-{fault.id}", 404)

    assert await target.revert(fault.id) is None


async def test_disk_fill_is_unsupported(target: KubernetesTarget, kube: FakeKube) -> None:
    with pytest.raises(UnsupportedFault, match="Chaos Mesh has no disk fill"):
        await target.inject(FaultRequest(service="cart", fault=DiskFill(fill_percent=90), ttl_s=10))

    assert kube.writes() == []


async def test_a_share_of_errors_is_unsupported(target: KubernetesTarget) -> None:
    with pytest.raises(UnsupportedFault, match=r"error_rate 0\.5 .*no percentage"):
        await target.inject(FaultRequest(service="cart", fault=ServiceUnavailable(error_rate=0.5), ttl_s=10))


async def test_an_undeclared_dependency_is_unsupported(target: KubernetesTarget) -> None:
    with pytest.raises(UnsupportedFault, match=r"no dependency 'redis'.*declared: postgres"):
        await target.inject(
            FaultRequest(service="cart", fault=SlowDependency(dependency="redis", latency_ms=5), ttl_s=5)
        )


async def test_http_chaos_needs_a_container_port(target: KubernetesTarget, kube: FakeKube) -> None:
    kube.add_deployment("portless", 1, PART_OF, namespace=NS)

    with pytest.raises(UnsupportedFault, match="declares no containerPort"):
        await target.inject(FaultRequest(service="portless", fault=ServiceUnavailable(), ttl_s=5))


async def test_forbidden_fault_creation(target: KubernetesTarget, kube: FakeKube) -> None:
    kube.forbid("create", "stresschaos")

    with pytest.raises(Forbidden, match=r"cannot create stresschaos 'tmsops-\w+' in namespace 'shop'"):
        await target.inject(FaultRequest(service="cart", fault=CpuStress(), ttl_s=5))


async def test_without_chaos_mesh_injection_fails_and_listing_is_empty() -> None:
    with FakeKube() as kube:
        seed(kube)
        made, client = make_target(kube.url)
        try:
            with pytest.raises(TargetError, match="is Chaos Mesh installed"):
                await made.inject(FaultRequest(service="cart", fault=CpuStress(), ttl_s=5))
            assert await made.faults() == []
            assert await made.revert("abc") is None
        finally:
            client.close()


# -- quantities ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cores"),
    [
        ("250m", 0.25),
        ("123456n", 0.000123456),
        ("1u", 1e-6),
        ("2", 2.0),
        ("0.5", 0.5),
        ("1.5k", 1500.0),
        ("1e3", 1000.0),
    ],
)
def test_parse_cpu(text: str, cores: float) -> None:
    assert parse_cpu(text) == pytest.approx(cores)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("12345Ki", 12345 * 1024),
        ("100Mi", 100 * MI),
        ("1G", 10**9),
        ("1Gi", 2**30),
        ("512", 512),
        ("1.5Ki", 1536),
        ("2E", 2 * 10**18),
    ],
)
def test_parse_memory(text: str, size: int) -> None:
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["", "abc", "1Xi", "m", "1.2.3"])
def test_malformed_quantities_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_cpu(text)


def test_format_quantities() -> None:
    assert [format_cpu(c) for c in (0.25, 0.3, 1, 0.0001)] == ["250m", "300m", "1000m", "1m"]
    assert [format_memory(b) for b in (256 * MI, 2**30, 1000)] == ["256Mi", "1024Mi", "1000"]


async def test_revert_of_a_malformed_id_is_unknown(target: KubernetesTarget, kube: FakeKube) -> None:
    with pytest.raises(UnknownFault):
        await target.revert("a,b=c")

    assert kube.calls() == []
