"""The autoscaler's loop scales a Deployment through the Kubernetes backend (a fake API server over HTTP)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes.client import ApiClient, Configuration
from sqlalchemy import create_engine
from support.fake_kube import FakeKube, fake_kube

from actuators.autoscaler.loop import Autoscaler
from actuators.autoscaler.records import DecisionStore
from tmsops.model_client import ModelClient
from tmsops.settings import AutoscalerSettings, KubernetesTargetSettings
from tmsops.targets.kubernetes import KubernetesTarget

pytestmark = pytest.mark.anyio
NS = "shop"
CART = {"name": "cart", "image": "tms/cart:1", "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}}


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[FakeKube, KubernetesTarget]]:
    with fake_kube() as kube:
        kube.add_deployment("cart", 2, {"app.kubernetes.io/part-of": "tms"}, {}, [CART], namespace=NS)
        for pod in ("cart-0", "cart-1"):
            kube.add_pod_metrics(pod, {"cart": ("450m", "100Mi")}, namespace=NS)
        settings = KubernetesTargetSettings(namespace=NS, label_selector="app.kubernetes.io/part-of=tms")
        client = ApiClient(Configuration(host=kube.url))
        target = KubernetesTarget(settings, default_min_replicas=1, default_max_replicas=10, api_client=client)
        yield kube, target
        client.close()


async def test_the_loop_scales_a_deployment_on_its_pods_cpu(
    cluster: tuple[FakeKube, KubernetesTarget], tmp_path: Path
) -> None:
    kube, target = cluster
    settings = AutoscalerSettings(
        state_dir=tmp_path, model_server_url=closed_port_url(), scaling={"mode": "forecastAndScale"}
    )
    store = DecisionStore(create_engine(f"sqlite:///{tmp_path / 'decisions.db'}"))
    async with ModelClient(settings.model_server_url, retries=0) as models:
        scaler = Autoscaler(settings, target, models, store)
        [decision] = await scaler.tick()
        await scaler.close_when_idle()
    # 450m of 250m requested is 180%: ceil(2 x 180 / 70) = 6, within the +4 replicas rate limit.
    assert (decision.current, decision.reactive, decision.desired) == (2, 6, 6)
    scale_writes = [call for call in kube.writes() if call.path.endswith("/deployments/cart/scale")]
    assert [call.body["spec"]["replicas"] for call in scale_writes] == [6]
    [record] = store.recent(service="cart")
    assert record.applied and record.fallback is not None and record.fallback.startswith("model server:")
