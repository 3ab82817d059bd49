"""deploy/: the Kubernetes manifests, the Prometheus configurations and alert rules, the Grafana
dashboard and the Dockerfile, checked with no cluster and no image build.

Where each fact comes from, so that the checks hold the deployment to the code and not to itself:

- Manifests are deserialised into the official ``kubernetes`` client's models and serialised back;
  the round trip must give the manifest unchanged (the client drops unknown fields silently, so a
  misspelt or misplaced field shows up as a difference).
- Probe and metrics paths must be served by the real apps: the autoscaler, the optimizer and the
  chaos service are built in-process from the ConfigMap's ``tmsops.yaml`` (production mode, the
  Kubernetes target on the fake API server of ``tests/support/fake_kube.py``), started, and asked
  for each probe path; the model server's routes come from BentoML's own app factory for
  ``serving.service:ModelServer`` (in a subprocess: BentoML keeps global state).
- Metric names used by the alert rules and the dashboard must be exported: the names are collected
  from the real ``/metrics`` of those apps (the chaos gauges appear only once its lifespan runs),
  of the fleet's control API (its registry holds every proxy metric), and, for the model server,
  from BentoML's own metrics middleware and batching histogram set up on a private registry with
  the configuration ``bentoml serve`` gives ModelServer (the same names
  tests/integration/test_model_server.py reads from a real ``bentoml serve``). Histogram
  ``_bucket/_sum/_count`` and counter ``_total`` samples count as their family's. ``up`` is the
  only name allowed that no service exports: Prometheus makes it.
- RBAC: the (API group, resource, verb) triples the Kubernetes target needs are derived from the
  requests ``tmsops.targets.kubernetes.KubernetesTarget`` really sends, performing every operation of
  the target interface (every fault type it can express) against the fake API server, mapped to
  RBAC attributes with the fake's own routing table (the attributes it authorises by). The rules
  bound to the tmsops ServiceAccount must grant exactly those: all of them and nothing else.
- ``promtool check config``, ``check rules`` and ``test rules`` (deploy/prometheus/alerts.test.yml)
  run promtool from Debian's ``prometheus`` package (without it these tests skip, or fail under
  TMSOPS_REQUIRE_SERVICES=1); dashboard queries are checked as PromQL by promtool as recording
  rules. Debian's promtool is built without Kubernetes service discovery: when it says so,
  prometheus-kubernetes.yml is checked with its kubernetes_sd_configs block replaced by a static
  target (promtool still checks the relabelling rules) and the block itself is checked here; the
  relabelling is also applied here to each Deployment's pod to check the job name, address and path
  it yields.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from kubernetes.client import ApiClient, Configuration
from kubernetes.utils import parse_quantity
from prometheus_client.parser import text_string_to_metric_families
from support.fake_kube import FakeKube, Recorded
from support.fake_kube import Request as FakeRequest
from support.net import free_port
from support.services import require_service

from tmsops.app import api_routes
from tmsops.settings import (
    AutoscalerSettings,
    ChaosSettings,
    CoreSettings,
    FleetConfig,
    FleetSettings,
    OptimizerSettings,
    ServicePorts,
    SettingsError,
    load_settings,
    read_yaml,
)
from tmsops.targets import kubernetes_chaos
from tmsops.targets.base import UnsupportedFault
from tmsops.targets.kubernetes import KubernetesTarget
from tmsops.targets.model import (
    BandwidthLimit,
    ConnectionReset,
    CpuStress,
    DiskFill,
    FaultRequest,
    FaultSpec,
    MemoryGrowth,
    NetworkLatency,
    Resources,
    ServiceUnavailable,
    SlowDependency,
)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBE = DEPLOY / "kubernetes"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "tmsops-dashboard.json"
SECRET_TEMPLATE = KUBE / "secret.example.yaml"
STRONG_TOKEN = "tmsops_" + "k" * 40

ACTUATORS = ("autoscaler", "optimizer", "chaos")
SERVICES = ("model-server", *ACTUATORS)
SETTINGS_CLASSES: dict[str, type[CoreSettings]] = {
    "autoscaler": AutoscalerSettings,
    "optimizer": OptimizerSettings,
    "chaos": ChaosSettings,
}
# Made by Prometheus for every target, exported by no service.
PROMETHEUS_MADE = frozenset({"up"})
API_VERSIONS = {
    "Namespace": "v1",
    "ServiceAccount": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "Deployment": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
}


# -- reading deploy/ ----------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(path for path in KUBE.glob("*.yaml") if path.name != "kustomization.yaml")


def documents(path: Path) -> list[dict[str, Any]]:
    return copy.deepcopy(_parsed(path))


@functools.cache
def _parsed(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def applied() -> list[dict[str, Any]]:
    """Every object `kubectl apply -k` creates (the Secret template is not one of them)."""
    return [doc for path in manifest_files() if path != SECRET_TEMPLATE for doc in documents(path)]


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in applied() if doc["kind"] == kind}


def deployment(name: str) -> dict[str, Any]:
    return objects("Deployment")[name]


def container(name: str) -> dict[str, Any]:
    containers = deployment(name)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{name}: one container expected"
    found: dict[str, Any] = containers[0]
    return found


def env_of(name: str) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container(name).get("env", [])}


def configmap_text() -> str:
    text: str = objects("ConfigMap")["tmsops-config"]["data"]["tmsops.yaml"]
    return text


def secret_template() -> dict[str, Any]:
    (secret,) = documents(SECRET_TEMPLATE)
    return secret


def container_port(name: str) -> int:
    (port,) = [p for p in container(name)["ports"] if p["name"] == "http"]
    number: int = port["containerPort"]
    return number


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No TMSOPS_* variable of the developer's shell and no ./tmsops.yaml leaks into a test."""
    for name in [name for name in os.environ if name.startswith("TMSOPS_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def write_configmap(tmp_path: Path) -> Path:
    path = tmp_path / "configmap-tmsops.yaml"
    path.write_text(configmap_text())
    return path


# -- YAML and the official models ---------------------------------------------------------------


def test_every_yaml_file_under_deploy_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert len(files) >= 10
    for path in files:
        assert documents(path), f"{path} holds no document"
    json.loads(DASHBOARD.read_text())


@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: path.name)
def test_manifests_round_trip_through_the_official_kubernetes_models(path: Path) -> None:
    client = ApiClient()
    for doc in documents(path):
        kind = doc["kind"]
        assert doc["apiVersion"] == API_VERSIONS[kind], f"{path.name}: {kind} {doc['metadata']['name']}"
        model = client.deserialize(json.dumps(doc), f"V1{kind}", "application/json")
        assert type(model).__name__ == f"V1{kind}"
        again = client.sanitize_for_serialization(model)
        assert again == doc, f"{path.name}: {kind} {doc['metadata']['name']} has fields the API does not know"


def test_kustomization_applies_every_manifest_but_never_the_secret_template() -> None:
    kustomization = read_yaml(KUBE / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    listed = sorted(kustomization["resources"])
    assert listed == sorted(path.name for path in manifest_files() if path != SECRET_TEMPLATE)
    assert [image["name"] for image in kustomization["images"]] == ["tmsops"]
    names = {(doc["kind"], doc["metadata"]["name"]) for doc in applied()}
    assert ("Secret", "tmsops-secrets") not in names
    namespaced = [doc for doc in applied() if doc["kind"] not in {"Namespace", "ClusterRole"}]
    bindings = {doc["metadata"]["namespace"] for doc in namespaced if doc["kind"] == "RoleBinding"}
    assert {doc["metadata"]["namespace"] for doc in namespaced} - bindings == {"tmsops"}


# -- the ConfigMap's tmsops.yaml and the Secret -------------------------------------------------


def test_configmap_loads_in_production_mode_once_the_environment_supplies_the_admin_token(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write_configmap(tmp_path)
    with pytest.raises(SettingsError, match="admin_token"):
        load_settings(CoreSettings, path)

    clean_env.setenv("TMSOPS_ADMIN_TOKEN", STRONG_TOKEN)
    clean_env.setenv("TMSOPS_DATABASE_URL", "postgresql+psycopg://tmsops:pw@db.example:5432/tmsops")
    core = load_settings(CoreSettings, path)
    assert (core.mode, core.debug, core.host, core.target.kind) == ("production", False, "0.0.0.0", "kubernetes")
    assert core.target.kubernetes.kubeconfig is None, "in the cluster: the pod's service account"
    assert core.database_url == "postgresql+psycopg://tmsops:pw@db.example:5432/tmsops"
    for name, cls in SETTINGS_CLASSES.items():
        settings = load_settings(cls, path)
        assert settings.mode == "production"
        assert settings.port == container_port(name), name


def test_the_secret_templates_placeholder_admin_token_is_refused(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A forgotten placeholder stops the services instead of running them with a known token."""
    placeholder = secret_template()["stringData"]["admin-token"]
    clean_env.setenv("TMSOPS_ADMIN_TOKEN", placeholder)
    with pytest.raises(SettingsError, match="admin_token"):
        load_settings(CoreSettings, write_configmap(tmp_path))


def test_ports_are_the_defaults_of_the_settings_and_the_example_file(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("TMSOPS_ADMIN_TOKEN", STRONG_TOKEN)
    example = read_yaml(REPO / "tmsops.example.yaml")
    configured = load_settings(CoreSettings, write_configmap(tmp_path)).ports
    assert configured == ServicePorts() == ServicePorts.model_validate(example["ports"])
    for name in ACTUATORS:
        assert container_port(name) == getattr(configured, name)
    assert container_port("model-server") == int(env_of("model-server")["TMSOPS_SERVING_PORT"]["value"])
    assert container_port("model-server") == model_server_facts().port


def test_configmap_points_at_the_services_and_the_namespace_rbac_binds(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("TMSOPS_ADMIN_TOKEN", STRONG_TOKEN)
    settings = load_settings(CoreSettings, write_configmap(tmp_path))
    url = urlsplit(settings.model_server_url)
    service = objects("Service")["model-server"]
    assert url.hostname in {
        f"model-server.{service['metadata']['namespace']}.svc",
        f"model-server.{service['metadata']['namespace']}.svc.cluster.local",
    }
    assert url.port == service["spec"]["ports"][0]["port"]
    kube = settings.target.kubernetes
    bound = {doc["metadata"]["namespace"] for doc in objects("RoleBinding").values()}
    assert bound == {kube.namespace} | {kube.chaos_namespace or kube.namespace}
    selector = dict(term.split("=", 1) for term in kube.label_selector.split(","))
    for name in SERVICES:
        labels = deployment(name)["metadata"]["labels"]
        assert not selector.items() <= labels.items(), f"tmsops must not select its own {name} Deployment"


def test_the_secret_template_holds_every_key_the_deployments_read() -> None:
    template = secret_template()
    assert (template["kind"], template["metadata"]["name"]) == ("Secret", "tmsops-secrets")
    keys = set(template["stringData"])
    required, optional = set(), set()
    for name in SERVICES:
        for item in env_of(name).values():
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "tmsops-secrets"
                (optional if ref.get("optional") else required).add(ref["key"])
    assert required | optional == keys, "a key the Deployments read is missing, or one is never read"
    assert {"admin-token", "database-url", "mlflow-tracking-uri", "model-server-reload-token"} <= required
    model_env = env_of("model-server")
    assert model_env["TMSOPS_SERVING_TRACKING_URI"]["valueFrom"] == model_env["MLFLOW_TRACKING_URI"]["valueFrom"]


# -- the apps: probes and metrics from the real code --------------------------------------------


@dataclass
class Served:
    """What one service serves: its paths, the status of each probe path, its metric families."""

    paths: set[str]
    status: dict[str, int]
    families: dict[str, str]


@dataclass
class ModelServerFacts:
    port: int
    paths: set[str]
    families: dict[str, str]


_MODEL_SERVER_SCRIPT = r"""
import json
from prometheus_client import CollectorRegistry
from bentoml._internal.container import BentoMLContainer
from bentoml._internal.server.metrics.prometheus import PrometheusClient
from _bentoml_impl.server.app import ServiceAppFactory
from serving.service import ModelServer

ModelServer.inject_config()  # what `bentoml serve serving.service:ModelServer` does first
client = PrometheusClient(multiproc=False)
client._registry = CollectorRegistry()
BentoMLContainer.metrics_client.set(client)
factory = ServiceAppFactory(ModelServer, is_main=True)
app = factory()
for middleware in factory.middlewares:  # the traffic metrics middleware, with the namespace serve gives it
    if "namespace" in middleware.kwargs:
        middleware.cls(app, **middleware.kwargs)._setup()
factory.adaptive_batch_size_hist
print(json.dumps({
    "port": ModelServer.config["http"]["port"],
    "paths": sorted(route.path for route in app.routes if getattr(route, "path", "")),
    "families": {family.name: family.type for family in client.registry.collect()},
}))
"""

_model_server_facts: list[ModelServerFacts] = []


def model_server_facts() -> ModelServerFacts:
    """The model server's port, routes and metric families, from BentoML's own code (computed once)."""
    if not _model_server_facts:
        with tempfile.TemporaryDirectory() as home:
            answer = subprocess.run(
                [sys.executable, "-c", _MODEL_SERVER_SCRIPT],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
                env={**os.environ, "BENTOML_HOME": home, "BENTOML_DO_NOT_TRACK": "true"},
            )
        assert answer.returncode == 0, answer.stderr[-3000:]
        facts = json.loads(answer.stdout.strip().splitlines()[-1])
        _model_server_facts.append(ModelServerFacts(facts["port"], set(facts["paths"]), facts["families"]))
    return _model_server_facts[0]


def probe_paths(name: str) -> set[str]:
    spec = container(name)
    paths = {spec[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe", "startupProbe")}
    annotations = deployment(name)["spec"]["template"]["metadata"]["annotations"]
    return paths | {annotations["prometheus.io/path"]}


def kubeconfig(path: Path, url: str, namespace: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "fake", "user": {"token": "fake"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def build_service(name: str, settings: CoreSettings) -> FastAPI:
    """The app as ``python -m <service>`` builds it; no background loop or sampler (not needed here)."""
    if name == "autoscaler":
        from actuators.autoscaler.service import build_app as autoscaler_app

        assert isinstance(settings, AutoscalerSettings)
        return autoscaler_app(settings, run_loop=False)
    if name == "optimizer":
        from actuators.optimizer.service import build_app as optimizer_app

        assert isinstance(settings, OptimizerSettings)
        return optimizer_app(settings, sample_usage=False)
    from chaos.service import build_app as chaos_app

    assert isinstance(settings, ChaosSettings)
    return chaos_app(settings)


def served_paths(app: FastAPI) -> set[str]:
    return {route.path for route in api_routes(app.routes)} | {getattr(route, "path", "") for route in app.routes}


def families_of(exposition: str) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(exposition)}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Served]]:
    """The three FastAPI services started from the ConfigMap's tmsops.yaml on the fake API server.

    What differs from the cluster, through the environment as the Deployments set it: the admin
    token and the state database (the Secret), a kubeconfig for the fake API server instead of the
    in-cluster account, a writable state dir, and closed local ports for the model server and
    Prometheus (their cluster DNS names do not resolve here).
    """
    tmp = tmp_path_factory.mktemp("deploy-apps")
    with FakeKube() as kube, pytest.MonkeyPatch.context() as env:
        kube.install_chaos_mesh()
        for name in [name for name in os.environ if name.startswith("TMSOPS_")]:
            env.delenv(name)
        env.chdir(tmp)
        config = tmp / "tmsops.yaml"
        config.write_text(configmap_text())
        namespace = read_yaml(config)["target"]["kubernetes"]["namespace"]
        kube.add_deployment("cart", 1, {"app.kubernetes.io/part-of": "tms"}, namespace=namespace)
        env.setenv("TMSOPS_CONFIG", str(config))
        env.setenv("TMSOPS_ADMIN_TOKEN", STRONG_TOKEN)
        env.setenv("TMSOPS_DATABASE_URL", f"sqlite:///{tmp / 'state.db'}")
        env.setenv("TMSOPS_STATE_DIR", str(tmp / "state"))
        env.setenv("TMSOPS_MODEL_SERVER_URL", f"http://127.0.0.1:{free_port()}")
        env.setenv("TMSOPS_PROMETHEUS_URL", f"http://127.0.0.1:{free_port()}")
        env.setenv("TMSOPS_TARGET__KUBERNETES__KUBECONFIG", str(kubeconfig(tmp / "kubeconfig", kube.url, namespace)))
        found = {}
        for name in ACTUATORS:
            app = build_service(name, load_settings(SETTINGS_CLASSES[name]))
            with TestClient(app) as client:
                status = {path: client.get(path).status_code for path in probe_paths(name)}
                families = families_of(client.get("/metrics").text)
            found[name] = Served(served_paths(app), status, families)
        yield found


def fleet_families(tmp_path: Path) -> dict[str, str]:
    """The fleet control API's /metrics (not started: nothing is bound; the proxies' families are there)."""
    from tmsops.fleet.api import build_app as fleet_app

    with pytest.MonkeyPatch.context() as env:
        for name in [name for name in os.environ if name.startswith("TMSOPS_")]:
            env.delenv(name)
        app = fleet_app(FleetSettings(state_dir=tmp_path))
        return families_of(TestClient(app).get("/metrics").text)


@pytest.mark.parametrize("name", ACTUATORS)
def test_actuator_probes_and_metrics_paths_answer_200_from_the_real_app(served: dict[str, Served], name: str) -> None:
    assert served[name].status == dict.fromkeys(probe_paths(name), 200)
    assert {"/health", "/metrics", "/docs"} <= served[name].paths


def test_model_server_probes_and_metrics_paths_are_bentomls_own_routes() -> None:
    facts = model_server_facts()
    readiness, liveness = container("model-server")["readinessProbe"], container("model-server")["livenessProbe"]
    assert (readiness["httpGet"]["path"], liveness["httpGet"]["path"]) == ("/readyz", "/livez")
    assert probe_paths("model-server") <= facts.paths
    assert {"/forecast", "/detect"} <= facts.paths


def sample_names(family: str, kind: str) -> set[str]:
    """The sample names Prometheus stores for one metric family."""
    if kind == "counter":
        return {f"{family}_total", f"{family}_created"}
    if kind == "histogram":
        return {f"{family}_bucket", f"{family}_sum", f"{family}_count", f"{family}_created"}
    if kind == "summary":
        return {family, f"{family}_sum", f"{family}_count", f"{family}_created"}
    return {family}


@pytest.fixture(scope="module")
def exported(served: dict[str, Served], tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Sample names per scrape job, each from the real /metrics (or BentoML's own code)."""
    by_job = {f"tmsops-{name}": served[name].families for name in ACTUATORS}
    by_job["tmsops-fleet"] = fleet_families(tmp_path_factory.mktemp("fleet"))
    by_job["tmsops-model-server"] = model_server_facts().families
    return {
        job: {s for family, kind in fams.items() for s in sample_names(family, kind)} for job, fams in by_job.items()
    }


def test_the_services_export_the_metrics_the_deployment_relies_on(exported: dict[str, set[str]]) -> None:
    """Guards the collection itself: a collector that found nothing would make the next checks vacuous."""
    assert {"tmsops_http_requests_total", "tmsops_http_request_duration_seconds_bucket"} <= exported[
        "tmsops-autoscaler"
    ]
    assert {"tmsops_chaos_running_experiments", "tmsops_chaos_open_injections"} <= exported["tmsops-chaos"]
    assert {"tmsops_autoscaler_loop_changes_total", "tmsops_autoscaler_replicas"} <= exported["tmsops-autoscaler"]
    assert "tmsops_optimizer_changes" in exported["tmsops-optimizer"]
    assert {"tmsops_proxy_requests_total", "tmsops_fleet_ready_replicas"} <= exported["tmsops-fleet"]
    assert {"bentoml_service_request_total", "bentoml_service_request_duration_seconds_bucket"} <= exported[
        "tmsops-model-server"
    ]


# -- PromQL: metric names, jobs and routes in the alert rules and the dashboard -----------------

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_LABELS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"inf", "nan", "Inf", "NaN", "start", "end", "atan2"}
)
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|=|!=|!~)\s*"((?:\\.|[^"\\])*)"')


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions, keywords, label
    names (in braces or grouping clauses), durations or strings."""
    text = _STRING.sub('""', expr)
    text = _GROUPING.sub(" ", _RANGE.sub(" ", _LABELS.sub(" ", text)))
    names = set()
    for match in _IDENTIFIER.finditer(text):
        following = text[match.end() :].lstrip()
        if not following.startswith("(") and match.group() not in _KEYWORDS:
            names.add(match.group())
    return names


def label_matchers(expr: str, label: str) -> list[tuple[str, str]]:
    return [(op, value) for name, op, value in _MATCHER.findall(expr) if name == label]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in read_yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_exprs() -> list[tuple[str, str]]:
    return [
        (f"{panel['title']} / {target['refId']}", target["expr"])
        for panel in dashboard_panels()
        for target in panel["targets"]
    ]


def all_exprs() -> list[tuple[str, str]]:
    return [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()] + dashboard_exprs()


def test_metric_name_extraction_reads_promql_the_way_prometheus_does() -> None:
    expr = (
        'sum by (service, le) (rate(tmsops_proxy_request_duration_seconds_bucket{service=~"$service",code="5.."}'
        '[$__rate_interval])) / on (service) group_left topk(10, up{job=~"tmsops-.*"} offset 5m) > bool 1e3'
    )
    assert metric_names(expr) == {"tmsops_proxy_request_duration_seconds_bucket", "up"}


def test_alert_rules_and_dashboard_use_only_metrics_the_code_exports(exported: dict[str, set[str]]) -> None:
    known = set().union(*exported.values()) | PROMETHEUS_MADE
    for where, expr in all_exprs():
        used = metric_names(expr)
        assert used, f"{where}: no metric found in {expr!r}"
        assert used <= known, f"{where}: {sorted(used - known)} are exported by no tmsops service"


def test_job_matchers_name_jobs_that_export_the_metrics_they_are_used_with(exported: dict[str, set[str]]) -> None:
    for where, expr in all_exprs():
        for op, value in label_matchers(expr, "job"):
            jobs = [job for job in exported if re.fullmatch(value, job)]
            assert op in {"=", "=~"} and jobs, f"{where}: job{op}{value!r} matches no tmsops job"
            used = metric_names(expr) - PROMETHEUS_MADE
            assert any(used <= exported[job] for job in jobs), f"{where}: {sorted(used)} not exported by {jobs}"


def test_route_matchers_name_routes_the_services_serve(served: dict[str, Served]) -> None:
    for where, expr in dashboard_exprs():
        jobs = [value.removeprefix("tmsops-") for op, value in label_matchers(expr, "job") if op == "="]
        for op, value in label_matchers(expr, "route"):
            if op in {"!=", "!~"}:
                continue
            for route in value.split("|") if op == "=~" else [value]:
                assert jobs and all(route in served[job].paths for job in jobs), f"{where}: route {route!r}"


# -- Prometheus: promtool and the scrape jobs ---------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        require_service("promtool", "promtool is not on PATH (Debian package prometheus)")
    return found


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


LOCAL_CONFIG, CLUSTER_CONFIG = "prometheus.yml", "prometheus-kubernetes.yml"


def prometheus_config(name: str = LOCAL_CONFIG) -> dict[str, Any]:
    return read_yaml(PROMETHEUS / name)


def scrape_jobs(name: str = LOCAL_CONFIG) -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in prometheus_config(name)["scrape_configs"]}


def test_local_prometheus_config_passes_promtool() -> None:
    """Debian's prometheus must be able to load it, so it holds no Kubernetes discovery."""
    checked = run_promtool("check", "config", LOCAL_CONFIG, cwd=PROMETHEUS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert all(set(job) & {"static_configs"} for job in prometheus_config()["scrape_configs"])


def test_cluster_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    checked = run_promtool("check", "config", CLUSTER_CONFIG, cwd=PROMETHEUS)
    if checked.returncode == 0:
        return
    output = checked.stdout + checked.stderr
    assert "field kubernetes_sd_configs not found" in output, output
    # This promtool was built without Kubernetes discovery (Debian's is): check everything else,
    # the relabelling included, with a static target in place of the discovery block.
    config = prometheus_config(CLUSTER_CONFIG)
    for job in config["scrape_configs"]:
        if "kubernetes_sd_configs" in job:
            (discovery,) = job.pop("kubernetes_sd_configs")
            assert discovery["role"] == "pod"
            assert discovery["namespaces"]["names"] == ["tmsops"]
            job["static_configs"] = [{"targets": ["10.0.0.1:8011"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    fallback = run_promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert fallback.returncode == 0, fallback.stdout + fallback.stderr


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = run_promtool("check", "rules", "alerts.yml", cwd=PROMETHEUS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run_promtool("test", "rules", "alerts.test.yml", cwd=PROMETHEUS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    grafana = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$service": ".*"}
    rules = []
    for index, (_, expr) in enumerate(dashboard_exprs()):
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"an unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    (tmp_path / "dashboard-rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = run_promtool("check", "rules", "dashboard-rules.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_local_static_jobs_scrape_every_service_on_its_default_port() -> None:
    jobs = scrape_jobs()
    expected = {f"tmsops-{name}": getattr(ServicePorts(), name) for name in ACTUATORS}
    expected["tmsops-model-server"] = model_server_facts().port
    expected["tmsops-fleet"] = FleetConfig().control_port
    for job, port in expected.items():
        (static,) = jobs[job]["static_configs"]
        assert static["targets"] == [f"127.0.0.1:{port}"], job
        assert jobs[job].get("metrics_path", "/metrics") == "/metrics"
    assert set(jobs) == set(expected)
    assert prometheus_config()["rule_files"] == prometheus_config(CLUSTER_CONFIG)["rule_files"] == ["alerts.yml"]


def expand(replacement: str, match: re.Match[str]) -> str:
    """A relabel replacement with its ``$1`` / ``${1}`` groups filled in."""
    return re.sub(r"\$\{?(\d+)\}?", lambda group: match.group(int(group.group(1))) or "", replacement)


def relabel(labels: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus's relabelling (keep and replace, the actions used), for checking the job here."""
    labels = dict(labels)
    for rule in rules:
        value = rule.get("separator", ";").join(labels.get(name, "") for name in rule.get("source_labels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        action = rule.get("action", "replace")
        if action == "keep" and match is None:
            return None
        if action == "replace" and match is not None:
            labels[rule["target_label"]] = expand(rule.get("replacement", "$1"), match)
        assert action in {"keep", "replace"}, f"relabel action {action} is not simulated here"
    return labels


def sanitise(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def pod_meta_labels(name: str, port: int) -> dict[str, str]:
    """The meta labels Prometheus's pod discovery gives one declared port of a Deployment's pod."""
    template = deployment(name)["spec"]["template"]["metadata"]
    labels = {"__address__": f"10.1.2.3:{port}", "__meta_kubernetes_pod_phase": "Running"}
    labels["__meta_kubernetes_namespace"] = deployment(name)["metadata"]["namespace"]
    labels["__meta_kubernetes_pod_name"] = f"{name}-5d8f-abcde"
    labels |= {f"__meta_kubernetes_pod_label_{sanitise(k)}": v for k, v in template["labels"].items()}
    labels |= {f"__meta_kubernetes_pod_annotation_{sanitise(k)}": v for k, v in template["annotations"].items()}
    return labels


@pytest.mark.parametrize("name", SERVICES)
def test_kubernetes_pod_job_finds_each_service_under_the_static_jobs_name(name: str) -> None:
    (job,) = scrape_jobs(CLUSTER_CONFIG).values()
    port = container_port(name)
    result = relabel(pod_meta_labels(name, port), job["relabel_configs"])
    assert result is not None, f"{name} is not scraped"
    assert result["job"] == f"tmsops-{name}" and result["job"] in scrape_jobs()
    assert result["__address__"] == f"10.1.2.3:{port}"
    assert result["__metrics_path__"] == "/metrics"
    annotations = deployment(name)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)


# -- the Grafana dashboard ----------------------------------------------------------------------


def test_dashboard_is_importable_with_a_prometheus_datasource_input() -> None:
    board = dashboard()
    assert 38 <= board["schemaVersion"] <= 41
    assert board["uid"] and board["title"]
    (source,) = board["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == ("DS_PROMETHEUS", "datasource", "prometheus")
    expected = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for variable in board["templating"]["list"]:
        assert variable["datasource"] == expected
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels():
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"] and all(target["datasource"] == expected for target in panel["targets"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_covers_the_fleet_scaling_optimizer_chaos_and_the_model_server() -> None:
    used = {name for _, expr in dashboard_exprs() for name in metric_names(expr)}
    wanted = {
        "requests per second per fleet service": "tmsops_proxy_requests_total",
        "p95 latency per fleet service": "tmsops_proxy_request_duration_seconds_bucket",
        "replicas": "tmsops_fleet_replicas",
        "ready replicas": "tmsops_fleet_ready_replicas",
        "right-sizing": "tmsops_fleet_cpu_request_cores",
        "chaos experiments": "tmsops_chaos_running_experiments",
        "chaos experiments by status": "tmsops_chaos_experiments",
        "the autoscaler's changes": "tmsops_autoscaler_loop_changes_total",
        "the forecast against capacity": "tmsops_autoscaler_forecast_peak_requests_per_second",
        "the optimizer's journal": "tmsops_optimizer_changes",
        "faults active": "tmsops_fleet_active_faults",
        "model-server latency": "bentoml_service_request_duration_seconds_bucket",
    }
    missing = {topic: name for topic, name in wanted.items() if name not in used}
    assert not missing
    jobs = {value for _, expr in dashboard_exprs() for _, value in label_matchers(expr, "job")}
    assert {"tmsops-autoscaler", "tmsops-optimizer", "tmsops-chaos"} <= jobs


# -- Deployments: probes, resources, security ---------------------------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_deployment_ports_probes_and_service_agree(name: str) -> None:
    spec = container(name)
    port = container_port(name)
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert spec[probe]["httpGet"]["port"] == "http", f"{name} {probe}"
    service = objects("Service")[name]
    assert service["spec"]["selector"] == deployment(name)["spec"]["selector"]["matchLabels"]
    assert (
        deployment(name)["spec"]["selector"]["matchLabels"].items()
        <= deployment(name)["spec"]["template"]["metadata"]["labels"].items()
    )
    (service_port,) = service["spec"]["ports"]
    assert (service_port["port"], service_port["targetPort"]) == (port, "http")
    assert deployment(name)["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert spec["readinessProbe"]["httpGet"]["path"] != spec["livenessProbe"]["httpGet"]["path"], (
        "liveness must not restart a pod for what readiness reports (a database or the models down)"
    )


@pytest.mark.parametrize("name", SERVICES)
def test_deployment_resources_are_bounded(name: str) -> None:
    resources = container(name)["resources"]
    for resource in ("cpu", "memory"):
        request, limit = resources["requests"][resource], resources["limits"][resource]
        assert parse_quantity(request) <= parse_quantity(limit), f"{name} {resource}"


@pytest.mark.parametrize("name", SERVICES)
def test_deployment_runs_non_root_with_a_read_only_root_and_emptydir_scratch(name: str) -> None:
    """Pod Security Standards 'restricted' (the namespace enforces it) plus a read-only root filesystem."""
    pod = deployment(name)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(name)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in container(name)["volumeMounts"]:
        if not mount.get("readOnly"):
            assert "emptyDir" in volumes[mount["name"]], f"{name}: writable {mount['mountPath']} must be scratch"
    mounted = {mount["mountPath"] for mount in container(name)["volumeMounts"]}
    assert {"/tmp", "/var/lib/tmsops"} <= mounted
    assert objects("Namespace")["tmsops"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("name", ACTUATORS)
def test_actuators_run_once_with_the_configmap_and_the_bound_service_account(name: str) -> None:
    spec = deployment(name)["spec"]
    assert (spec["replicas"], spec["strategy"]["type"]) == (1, "Recreate"), "one control loop / runner at a time"
    config = Path(env_of(name)["TMSOPS_CONFIG"]["value"])
    (mount,) = [m for m in container(name)["volumeMounts"] if m["mountPath"] == str(config.parent)]
    (volume,) = [v for v in spec["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == "tmsops-config" and mount["readOnly"] is True
    assert config.name in objects("ConfigMap")["tmsops-config"]["data"]
    account = spec["template"]["spec"]["serviceAccountName"]
    subjects = {(s["name"], s["namespace"]) for b in objects("RoleBinding").values() for s in b["subjects"]}
    assert subjects == {(account, deployment(name)["metadata"]["namespace"])}


def test_model_server_has_no_kubernetes_api_token_and_survives_a_disruption() -> None:
    pod = deployment("model-server")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert objects("ServiceAccount")[pod["serviceAccountName"]]["automountServiceAccountToken"] is False
    assert deployment("model-server")["spec"]["replicas"] >= 2
    budget = objects("PodDisruptionBudget")["model-server"]
    assert budget["spec"]["selector"] == deployment("model-server")["spec"]["selector"]
    assert env_of("model-server")["TMSOPS_SERVING_HOST"]["value"] == "0.0.0.0"


# -- RBAC against the Kubernetes target's real requests -----------------------------------------


def granted() -> set[tuple[str, str, str]]:
    """(group, resource, verb) the RoleBindings grant the tmsops ServiceAccount."""
    roles = objects("ClusterRole")
    triples = set()
    for binding in objects("RoleBinding").values():
        assert binding["roleRef"]["kind"] == "ClusterRole"
        for rule in roles[binding["roleRef"]["name"]]["rules"]:
            assert "resourceNames" not in rule and "*" not in rule["verbs"] + rule["resources"]
            triples |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return triples


def rbac_attributes(kube: FakeKube, recorded: Recorded) -> tuple[str, str, str]:
    """The attributes the API server authorises a request by, from the fake server's routing table."""
    request = FakeRequest(recorded.method, recorded.path, recorded.query, recorded.content_type, recorded.body)
    route, params = kube._route(request)
    verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(recorded.method)
    verb = verb or ("get" if "name" in params else "list")
    return route.group.format(**params), route.resource.format(**params), verb


def every_fault() -> list[FaultSpec]:
    """One fault of each type and mode the target interface knows."""
    return [
        NetworkLatency(latency_ms=100, jitter_ms=10),
        BandwidthLimit(rate_kbps=100),
        ConnectionReset(probability=0.5),
        ServiceUnavailable(mode="error"),
        ServiceUnavailable(mode="refuse"),
        ServiceUnavailable(mode="pause"),
        CpuStress(workers=1, load_percent=50),
        MemoryGrowth(rate_mb_per_s=1, cap_mb=64),
        DiskFill(fill_percent=50),
        SlowDependency(dependency="postgres", latency_ms=50),
    ]


@pytest.mark.anyio
async def test_rbac_grants_exactly_what_the_kubernetes_target_calls(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("TMSOPS_ADMIN_TOKEN", STRONG_TOKEN)
    settings = load_settings(ChaosSettings, write_configmap(tmp_path)).target.kubernetes
    namespace = settings.namespace
    cart = {
        "name": "cart",
        "image": "tms/cart:1",
        "ports": [{"containerPort": 8080}],
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
    }
    with FakeKube() as kube:
        kube.install_chaos_mesh()
        annotations = {"tmsops.io/dependencies": json.dumps({"postgres": "postgres.tms.svc:5432"})}
        kube.add_deployment("cart", 2, {"app.kubernetes.io/part-of": "tms"}, annotations, [cart], namespace=namespace)
        for pod in ("cart-0", "cart-1"):
            kube.add_pod_metrics(pod, {"cart": ("120m", "200Mi")}, namespace=namespace)
        client = ApiClient(Configuration(host=kube.url))
        target = KubernetesTarget(settings, default_min_replicas=1, default_max_replicas=10, api_client=client)
        try:
            await target.list_services()
            await target.service("cart")
            await target.set_replicas("cart", 3, dry_run=True)
            await target.set_replicas("cart", 3)
            await target.set_resources("cart", Resources(cpu_request=0.3, memory_limit=2 * 2**30), dry_run=True)
            await target.set_resources("cart", Resources(cpu_request=0.3))
            await target.usage("cart")
            injected = set()
            for fault in every_fault():
                request = FaultRequest(service="cart", fault=fault, ttl_s=60, replicas=["cart-0"])
                try:
                    await target.inject(request.model_copy(update={"dry_run": True}))
                    injected.add((await target.inject(request)).id)
                except UnsupportedFault:
                    assert isinstance(fault, DiskFill), f"{fault} should be expressible on Kubernetes"
            for fault in await target.faults("cart"):
                await target.revert(fault.id)
        finally:
            await target.aclose()
            client.close()
        created = {r.path.rsplit("/", 1)[-1] for r in kube.calls("POST")}
        assert created == set(kubernetes_chaos.PLURALS.values()), "every Chaos Mesh kind was exercised"
        assert len(kube.calls("DELETE")) == len(injected) == len(every_fault()) - 1
        needed = {rbac_attributes(kube, recorded) for recorded in kube.calls()}
    assert {("apps", "deployments/scale", "update"), ("metrics.k8s.io", "pods", "list")} <= needed
    assert needed - granted() == set(), "calls the RBAC rules do not allow"
    assert granted() - needed == set(), "grants the Kubernetes target never uses"


# -- the Dockerfile and its entrypoint ----------------------------------------------------------


def dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def dockerfile_uid() -> int:
    (user,) = [line.split()[1] for line in dockerfile() if line.startswith("USER ")]
    return int(user.split(":")[0])


def entrypoint_services() -> set[str]:
    script = (DEPLOY / "docker-entrypoint.sh").read_text()
    labels = re.findall(r"^\s*([a-z][a-z-]*(?:\s*\|\s*-?-?[a-z]+)*)\)", script, flags=re.MULTILINE)
    return {name.strip() for label in labels for name in label.split("|")}


def test_dockerfile_builds_on_python_slim_with_the_cpu_torch_and_runs_as_non_root() -> None:
    lines = dockerfile()
    assert all(line.split()[1] == "python:3.11-slim" for line in lines if line.startswith("FROM"))
    pins = [dep for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    (torch,) = [pin for pin in pins if pin.startswith("torch")]
    (install,) = [line for line in lines if "download.pytorch.org/whl/cpu" in line]
    assert "uv pip install" in install and "--index-url https://download.pytorch.org/whl/cpu" in install
    assert torch in install.split()
    assert any("uv pip install" in line and line.rstrip().split("&&")[0].rstrip().endswith(" .") for line in lines)
    assert dockerfile_uid() >= 1000
    for line in lines:
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"COPY {source}: no such file"
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {line.split()[1] for line in lines if line.startswith("COPY") and "--from" not in line}
    assert {package.rstrip("*") for package in packages} <= copied


def test_entrypoint_runs_each_service_the_manifests_ask_for() -> None:
    script = DEPLOY / "docker-entrypoint.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True, check=False).returncode == 0
    (entrypoint,) = [line for line in dockerfile() if line.startswith("ENTRYPOINT")]
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT").strip()) == ["/usr/local/bin/tmsops-entrypoint"]
    assert any(
        line.startswith("COPY deploy/docker-entrypoint.sh /usr/local/bin/tmsops-entrypoint") for line in dockerfile()
    )
    for name in SERVICES:
        assert container(name)["args"] == [name]
        assert container(name)["image"].split(":")[0] == "tmsops"
    assert set(SERVICES) | {"fleet"} <= entrypoint_services()
    shown = subprocess.run(["sh", str(script), "help"], capture_output=True, text=True, check=False)
    assert shown.returncode == 0 and "model-server" in shown.stdout
