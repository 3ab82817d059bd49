"""A fake Kubernetes API server over real HTTP, for testing the Kubernetes target at the protocol boundary.

It holds Deployments (with their scale subresource), Pods, metrics.k8s.io PodMetrics and namespaced
custom objects in memory, checks paths, verbs, content types and bodies the way the API server
does, honours ``dryRun=All`` (validate, answer, change nothing), records every request, and lets
a test script failures: ``script(method, path, status, times=N)`` and ``forbid(verb, resource)``.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes.utils import parse_quantity

Obj = dict[str, Any]

CHAOS_MESH_KINDS = {"networkchaos": "NetworkChaos", "podchaos": "PodChaos", "stresschaos": "StressChaos"}
CHAOS_MESH_KINDS["httpchaos"] = "HTTPChaos"
_GO_DURATION = re.compile(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_PATCH_TYPES = ("application/strategic-merge-patch+json", "application/merge-patch+json")
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any


@dataclass
class Request:
    """A routed request: what the handlers need."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any
    params: dict[str, str] = field(default_factory=dict)

    @property
    def dry_run(self) -> bool:
        return "dryRun" in self.query

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


class ApiError(Exception):
    """Answer with a Kubernetes Status object."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[[Request], tuple[int, Obj]]
    group: str
    resource: str


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKube:
    """The fake API server; use as ``with FakeKube() as kube: kube.url``."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.deployments: dict[tuple[str, str], Obj] = {}
        self.pods: dict[tuple[str, str], Obj] = {}
        self.pod_metrics: dict[tuple[str, str], Obj] = {}
        self.custom: dict[tuple[str, str, str], dict[tuple[str, str], Obj]] = {}
        self.metrics_api = True
        self._kinds: dict[tuple[str, str, str], str] = {}
        self._scripts: dict[tuple[str, str], list[tuple[int, str]]] = {}
        self._forbidden: set[tuple[str, str]] = set()
        self._stalls: dict[tuple[str, str], float] = {}
        self._interference: dict[tuple[str, str], int] = {}
        self._version = 100
        self._lock = threading.RLock()
        self._routes = self._build_routes()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "the fake API server is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeKube:
        server = _Server(("127.0.0.1", 0), _handler_class(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-kube", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- seeding -----------------------------------------------------------------------------

    def add_deployment(
        self,
        name: str,
        replicas: int = 1,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        containers: list[Obj] | None = None,
        *,
        namespace: str = "default",
        match_labels: dict[str, str] | None = None,
        ready_replicas: int | None = None,
        pods: bool = True,
    ) -> Obj:
        """A Deployment (and, unless ``pods`` is False, its ``replicas`` ready Pods ``<name>-<i>``)."""
        selector = match_labels or {"app": name}
        containers = containers or [{"name": name, "image": f"tms/{name}:1"}]
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": self._metadata(name, namespace, labels or {}, annotations or {}),
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": selector},
                "template": {"metadata": {"labels": dict(selector)}, "spec": {"containers": containers}},
            },
            "status": self._deployment_status(replicas, replicas if ready_replicas is None else ready_replicas),
        }
        with self._lock:
            self.deployments[(namespace, name)] = deployment
        for index in range(replicas if pods else 0):
            self.add_pod(f"{name}-{index}", labels=selector, namespace=namespace, containers=containers)
        return deployment

    def add_pod(
        self,
        name: str,
        *,
        labels: dict[str, str],
        namespace: str = "default",
        ready: bool = True,
        restarts: int = 0,
        containers: list[Obj] | None = None,
        ip: str = "10.0.0.1",
    ) -> Obj:
        containers = containers or [{"name": "app", "image": "tms/app:1"}]
        statuses = [
            {
                "name": c["name"],
                "image": c.get("image", "tms/app:1"),
                "imageID": "",
                "ready": ready,
                "restartCount": restarts,
            }
            for c in containers
        ]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": self._metadata(name, namespace, labels, {}),
            "spec": {"containers": copy.deepcopy(containers)},
            "status": {
                "phase": "Running",
                "podIP": ip,
                "startTime": "2024-05-01T10:00:00Z",
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                "containerStatuses": statuses,
            },
        }
        with self._lock:
            self.pods[(namespace, name)] = pod
        return pod

    def add_pod_metrics(
        self,
        pod: str,
        containers: dict[str, tuple[str, str]],
        *,
        namespace: str = "default",
        labels: dict[str, str] | None = None,
        timestamp: str = "2024-05-01T12:00:00Z",
    ) -> Obj:
        """PodMetrics for ``pod``: ``containers`` maps a container name to its (cpu, memory) quantities."""
        if labels is None:
            labels = self.pods[(namespace, pod)]["metadata"]["labels"]
        metrics = {
            "kind": "PodMetrics",
            "apiVersion": "metrics.k8s.io/v1beta1",
            "metadata": {"name": pod, "namespace": namespace, "labels": dict(labels), "creationTimestamp": _now()},
            "timestamp": timestamp,
            "window": "30s",
            "containers": [{"name": n, "usage": {"cpu": c, "memory": m}} for n, (c, m) in containers.items()],
        }
        with self._lock:
            self.pod_metrics[(namespace, pod)] = metrics
        return metrics

    def add_kind(self, group: str, version: str, plural: str, kind: str) -> None:
        """Serve a custom resource kind (as if its CRD were installed)."""
        with self._lock:
            self._kinds[(group, version, plural)] = kind
            self.custom.setdefault((group, version, plural), {})

    def add_object(self, plural: str, obj: Obj, *, group: str = "chaos-mesh.org", version: str = "v1alpha1") -> None:
        """Store a custom object as is (its kind must be served)."""
        metadata = obj["metadata"]
        with self._lock:
            self.custom[(group, version, plural)][(metadata["namespace"], metadata["name"])] = copy.deepcopy(obj)

    def install_chaos_mesh(self) -> None:
        for plural, kind in CHAOS_MESH_KINDS.items():
            self.add_kind("chaos-mesh.org", "v1alpha1", plural, kind)

    # -- scripting and inspection ------------------------------------------------------------

    def script(self, method: str, path: str, status: int, *, times: int = 1, message: str | None = None) -> None:
        """Answer the next ``times`` requests ``method path`` with ``status`` (a Status object)."""
        text = message or f"scripted {status}"
        with self._lock:
            self._scripts.setdefault((method.upper(), path), []).extend([(status, text)] * times)

    def stall(self, method: str, path: str, seconds: float) -> None:
        """Wait ``seconds`` before answering every ``method path`` request (to provoke client timeouts)."""
        with self._lock:
            self._stalls[(method.upper(), path)] = seconds

    def interfere(self, name: str, namespace: str = "default", *, times: int = 1) -> None:
        """After each of the next ``times`` reads of the Deployment's scale, change the Deployment
        (a new resourceVersion), as a concurrent writer would."""
        with self._lock:
            self._interference[(namespace, name)] = times

    def forbid(self, verb: str, resource: str) -> None:
        """Answer 403 to ``verb`` (get, list, create, update, patch, delete) on ``resource``
        (a plural such as ``deployments``, ``deployments/scale``, ``networkchaos``)."""
        with self._lock:
            self._forbidden.add((verb, resource))

    def calls(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        """The recorded requests, optionally only those with this method and path."""
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method.upper()) and (path is None or r.path == path)
            ]

    def writes(self) -> list[Recorded]:
        return [r for r in self.calls() if r.method != "GET"]

    def objects(self, plural: str, group: str = "chaos-mesh.org", version: str = "v1alpha1") -> list[Obj]:
        with self._lock:
            return [copy.deepcopy(o) for o in self.custom.get((group, version, plural), {}).values()]

    def deployment(self, name: str, namespace: str = "default") -> Obj:
        with self._lock:
            return copy.deepcopy(self.deployments[(namespace, name)])

    # -- dispatch ----------------------------------------------------------------------------

    def handle(self, method: str, target: str, content_type: str | None, raw: bytes) -> tuple[int, Obj]:
        parts = urlsplit(target)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        request = Request(method, parts.path, parse_qs(parts.query), content_type, body)
        with self._lock:
            stall = self._stalls.get((method, parts.path), 0.0)
        if stall:
            time.sleep(stall)
        with self._lock:
            self.requests.append(Recorded(method, parts.path, request.query, content_type, body))
            try:
                return self._dispatch(request)
            except ApiError as error:
                return error.code, error.status()

    def _dispatch(self, request: Request) -> tuple[int, Obj]:
        scripted = self._scripts.get((request.method, request.path))
        if scripted:
            status, message = scripted.pop(0)
            raise ApiError(status, _reason(status), message)
        route, params = self._route(request)
        request.params = params
        self._authorize(request, route)
        _check_dry_run(request)
        return route.handler(request)

    def _route(self, request: Request) -> tuple[Route, dict[str, str]]:
        for route in self._routes:
            match = route.pattern.fullmatch(request.path)
            if match and route.method == request.method:
                return route, match.groupdict()
        if any(route.pattern.fullmatch(request.path) for route in self._routes):
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on {request.path}")
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def _authorize(self, request: Request, route: Route) -> None:
        resource = route.resource.format(**request.params)
        verb = _VERBS.get(request.method) or ("get" if "name" in request.params else "list")
        if (verb, resource) in self._forbidden:
            namespace = request.params.get("ns", "")
            raise ApiError(
                403,
                "Forbidden",
                f'{resource} is forbidden: User "system:serviceaccount:tmsops:tmsops" cannot {verb} resource '
                f'"{resource}" in API group "{route.group.format(**request.params)}" in the namespace "{namespace}"',
            )

    def _build_routes(self) -> list[Route]:
        ns = r"/namespaces/(?P<ns>[a-z0-9-]+)"
        apps, core, metrics = "/apis/apps/v1" + ns, "/api/v1" + ns, "/apis/metrics.k8s.io/v1beta1" + ns
        custom = r"/apis/(?P<group>[a-z0-9.-]+)/(?P<version>v[a-z0-9]+)" + ns + "/(?P<plural>[a-z0-9]+)"
        table: list[tuple[str, str, Callable[[Request], tuple[int, Obj]], str, str]] = [
            ("GET", apps + "/deployments", self._list_deployments, "apps", "deployments"),
            ("GET", apps + "/deployments/(?P<name>[^/]+)", self._get_deployment, "apps", "deployments"),
            ("PATCH", apps + "/deployments/(?P<name>[^/]+)", self._patch_deployment, "apps", "deployments"),
            ("GET", apps + "/deployments/(?P<name>[^/]+)/scale", self._get_scale, "apps", "deployments/scale"),
            ("PUT", apps + "/deployments/(?P<name>[^/]+)/scale", self._put_scale, "apps", "deployments/scale"),
            ("GET", core + "/pods", self._list_pods, "", "pods"),
            ("GET", metrics + "/pods", self._list_pod_metrics, "metrics.k8s.io", "pods"),
            ("GET", custom, self._list_custom, "{group}", "{plural}"),
            ("POST", custom, self._create_custom, "{group}", "{plural}"),
            ("GET", custom + "/(?P<name>[^/]+)", self._get_custom, "{group}", "{plural}"),
            ("DELETE", custom + "/(?P<name>[^/]+)", self._delete_custom, "{group}", "{plural}"),
        ]
        return [Route(m, re.compile(p), h, g, r) for m, p, h, g, r in table]

    # -- deployments -------------------------------------------------------------------------

    def _list_deployments(self, request: Request) -> tuple[int, Obj]:
        return 200, self._list("DeploymentList", "apps/v1", self.deployments, request)

    def _get_deployment(self, request: Request) -> tuple[int, Obj]:
        return 200, copy.deepcopy(self._find_deployment(request))

    def _find_deployment(self, request: Request) -> Obj:
        key = (request.params["ns"], request.params["name"])
        if key not in self.deployments:
            raise _not_found("apps", "deployments", key[1])
        return self.deployments[key]

    def _patch_deployment(self, request: Request) -> tuple[int, Obj]:
        current = self._find_deployment(request)
        if (request.content_type or "").split(";")[0].strip() not in _PATCH_TYPES:
            raise ApiError(415, "UnsupportedMediaType", f"the patch type {request.content_type!r} is not supported")
        if not isinstance(request.body, dict):
            raise ApiError(400, "BadRequest", "the patch body must be a JSON object")
        strategic = request.content_type is not None and "strategic" in request.content_type
        patched = copy.deepcopy(current)
        _merge(patched, request.body, strategic=strategic)
        _validate_deployment(patched)
        if not request.dry_run:
            patched["metadata"]["resourceVersion"] = self._next_version()
            patched["metadata"]["generation"] += 1
            self.deployments[(request.params["ns"], request.params["name"])] = patched
        return 200, copy.deepcopy(patched)

    def _get_scale(self, request: Request) -> tuple[int, Obj]:
        deployment = self._find_deployment(request)
        answer = _scale(deployment)
        key = (request.params["ns"], request.params["name"])
        if self._interference.get(key, 0) > 0:
            self._interference[key] -= 1
            deployment["metadata"]["resourceVersion"] = self._next_version()
        return 200, answer

    def _put_scale(self, request: Request) -> tuple[int, Obj]:
        deployment = self._find_deployment(request)
        _require_json(request)
        replicas = _check_scale(request.body, request.params["name"])
        version = request.body.get("metadata", {}).get("resourceVersion")
        if version is not None and version != deployment["metadata"]["resourceVersion"]:
            raise _conflict("deployments.apps", request.params["name"])
        if request.dry_run:
            answer = _scale(deployment)
            answer["spec"]["replicas"] = replicas
            return 200, answer
        deployment["spec"]["replicas"] = replicas
        deployment["metadata"]["resourceVersion"] = self._next_version()
        deployment["metadata"]["generation"] += 1
        return 200, _scale(deployment)

    # -- pods and metrics --------------------------------------------------------------------

    def _list_pods(self, request: Request) -> tuple[int, Obj]:
        return 200, self._list("PodList", "v1", self.pods, request)

    def _list_pod_metrics(self, request: Request) -> tuple[int, Obj]:
        if not self.metrics_api:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return 200, self._list("PodMetricsList", "metrics.k8s.io/v1beta1", self.pod_metrics, request)

    # -- custom objects ----------------------------------------------------------------------

    def _kind(self, request: Request) -> tuple[tuple[str, str, str], str]:
        key = (request.params["group"], request.params["version"], request.params["plural"])
        if key not in self._kinds:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return key, self._kinds[key]

    def _list_custom(self, request: Request) -> tuple[int, Obj]:
        key, kind = self._kind(request)
        return 200, self._list(f"{kind}List", f"{key[0]}/{key[1]}", self.custom[key], request)

    def _get_custom(self, request: Request) -> tuple[int, Obj]:
        key, _ = self._kind(request)
        name = request.params["name"]
        found = self.custom[key].get((request.params["ns"], name))
        if found is None:
            raise _not_found(key[0], key[2], name)
        return 200, copy.deepcopy(found)

    def _create_custom(self, request: Request) -> tuple[int, Obj]:
        key, kind = self._kind(request)
        _require_json(request)
        body = _check_custom(request.body, key, kind, request.params["ns"])
        name = body["metadata"]["name"]
        if (request.params["ns"], name) in self.custom[key]:
            raise ApiError(409, "AlreadyExists", f'{key[2]}.{key[0]} "{name}" already exists')
        created = copy.deepcopy(body)
        created["metadata"].update(self._metadata(name, request.params["ns"], {}, {}, keep=body["metadata"]))
        if not request.dry_run:
            self.custom[key][(request.params["ns"], name)] = created
        return 201, copy.deepcopy(created)

    def _delete_custom(self, request: Request) -> tuple[int, Obj]:
        key, _ = self._kind(request)
        name = request.params["name"]
        if (request.params["ns"], name) not in self.custom[key]:
            raise _not_found(key[0], key[2], name)
        if not request.dry_run:
            del self.custom[key][(request.params["ns"], name)]
        details = {"name": name, "group": key[0], "kind": key[2]}
        return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": details}

    # -- helpers -----------------------------------------------------------------------------

    def _list(self, kind: str, api_version: str, store: dict[tuple[str, str], Obj], request: Request) -> Obj:
        selector = _parse_selector(request.arg("labelSelector") or "")
        items = [
            copy.deepcopy(obj)
            for (namespace, _), obj in sorted(store.items())
            if namespace == request.params["ns"] and _selected(obj["metadata"].get("labels") or {}, selector)
        ]
        metadata = {"resourceVersion": str(self._version)}
        return {"kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items}

    def _metadata(
        self, name: str, namespace: str, labels: dict[str, str], annotations: dict[str, str], keep: Obj | None = None
    ) -> Obj:
        metadata = {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "resourceVersion": self._next_version(),
            "generation": 1,
            "creationTimestamp": _now(),
            "labels": dict(labels),
            "annotations": dict(annotations),
        }
        for kept in ("labels", "annotations"):
            if keep and kept in keep:
                metadata[kept] = keep[kept]
        return metadata

    def _next_version(self) -> str:
        with self._lock:
            self._version += 1
            return str(self._version)

    @staticmethod
    def _deployment_status(replicas: int, ready: int) -> Obj:
        return {"replicas": replicas, "readyReplicas": ready, "availableReplicas": ready, "updatedReplicas": replicas}


# -- request checks -----------------------------------------------------------------------------


def _check_dry_run(request: Request) -> None:
    values = request.query.get("dryRun", [])
    if any(value != "All" for value in values):
        raise ApiError(400, "BadRequest", f"invalid dry run option: {values}")


def _require_json(request: Request) -> None:
    if (request.content_type or "").split(";")[0].strip() != "application/json":
        raise ApiError(
            415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {request.content_type!r}"
        )
    if not isinstance(request.body, dict):
        raise ApiError(400, "BadRequest", "the request body must be a JSON object")


def _check_scale(body: Obj, name: str) -> int:
    if body.get("kind") != "Scale" or body.get("apiVersion") != "autoscaling/v1":
        raise ApiError(400, "BadRequest", f"expected kind Scale, apiVersion autoscaling/v1; got {body.get('kind')!r}")
    if body.get("metadata", {}).get("name") != name:
        raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
    replicas = body.get("spec", {}).get("replicas")
    if not isinstance(replicas, int) or replicas < 0:
        raise _invalid("Scale", name, f"spec.replicas: Invalid value: {replicas!r}: must be a non-negative integer")
    return replicas


def _check_custom(body: Obj, key: tuple[str, str, str], kind: str, namespace: str) -> Obj:
    group, version, _ = key
    if body.get("apiVersion") != f"{group}/{version}" or body.get("kind") != kind:
        raise ApiError(
            400, "BadRequest", f"expected {group}/{version} {kind}, got {body.get('apiVersion')} {body.get('kind')}"
        )
    metadata = body.get("metadata") or {}
    name = metadata.get("name")
    if not isinstance(name, str) or not _DNS_NAME.fullmatch(name) or len(name) > 253:
        raise _invalid(kind, str(name), "metadata.name: Invalid value: must be a lowercase RFC 1123 subdomain")
    if metadata.get("namespace", namespace) != namespace:
        raise ApiError(400, "BadRequest", "the namespace of the object does not match the namespace on the URL")
    if group == "chaos-mesh.org":
        _check_chaos_spec(kind, name, body.get("spec") or {})
    return body


def _check_chaos_spec(kind: str, name: str, spec: Obj) -> None:
    """The gist of Chaos Mesh's admission webhook: mode, selector and a Go duration."""
    if spec.get("mode") not in {"one", "all", "fixed", "fixed-percent", "random-max-percent"}:
        raise _invalid(kind, name, f"spec.mode: Unsupported value: {spec.get('mode')!r}")
    if not isinstance(spec.get("selector"), dict) or not spec["selector"]:
        raise _invalid(kind, name, "spec.selector: Required value")
    if not _GO_DURATION.fullmatch(str(spec.get("duration", ""))):
        raise _invalid(kind, name, f"spec.duration: Invalid value: {spec.get('duration')!r}")


def _validate_deployment(deployment: Obj) -> None:
    name = deployment["metadata"]["name"]
    for container in deployment["spec"]["template"]["spec"].get("containers", []):
        if not container.get("name"):
            raise _invalid("Deployment", name, "spec.template.spec.containers.name: Required value")
        _validate_resources(name, container.get("resources") or {})


def _validate_resources(name: str, resources: Obj) -> None:
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    parsed: dict[str, dict[str, Any]] = {"requests": {}, "limits": {}}
    for section, values in (("requests", requests), ("limits", limits)):
        for resource, quantity in values.items():
            try:
                parsed[section][resource] = parse_quantity(quantity)
            except ValueError as error:
                raise _invalid(
                    "Deployment", name, f"resources.{section}.{resource}: Invalid value: {quantity!r}"
                ) from error
    for resource, request in parsed["requests"].items():
        limit = parsed["limits"].get(resource)
        if limit is not None and request > limit:
            message = f"resources.requests: Invalid value: {requests[resource]!r}: must be at most the {resource} limit"
            raise _invalid("Deployment", name, message)


# -- patching -----------------------------------------------------------------------------------


def _merge(target: Obj, patch: Obj, *, strategic: bool) -> None:
    """Apply a JSON merge patch; with ``strategic``, lists of named objects (containers) merge by name."""
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value, strategic=strategic)
        elif strategic and isinstance(value, list) and isinstance(target.get(key), list) and _named(value):
            target[key] = _merge_named(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _named(items: list[Any]) -> bool:
    return all(isinstance(item, dict) and "name" in item for item in items)


def _merge_named(current: list[Obj], patch: list[Obj]) -> list[Obj]:
    merged = [copy.deepcopy(item) for item in current]
    for item in patch:
        existing = next((m for m in merged if m.get("name") == item["name"]), None)
        if existing is None:
            merged.append(copy.deepcopy(item))
        else:
            _merge(existing, item, strategic=True)
    return merged


# -- label selectors ----------------------------------------------------------------------------

Requirement = tuple[str, str, frozenset[str]]


def _parse_selector(text: str) -> list[Requirement]:
    """Equality (``k=v``, ``k==v``, ``k!=v``), set (``k in (a,b)``, ``k notin (a)``) and existence (``k``, ``!k``)."""
    terms = [t.strip() for t in re.split(r",(?![^()]*\))", text) if t.strip()]
    return [_parse_requirement(term) for term in terms]


def _parse_requirement(term: str) -> Requirement:
    match = re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", term)
    if match:
        values = frozenset(v.strip() for v in match.group(3).split(","))
        return match.group(1), match.group(2), values
    for operator in ("!=", "==", "="):
        if operator in term:
            key, value = term.split(operator, 1)
            return key.strip(), "notin" if operator == "!=" else "in", frozenset({value.strip()})
    if term.startswith("!"):
        return term[1:], "absent", frozenset()
    return term, "exists", frozenset()


def _selected(labels: dict[str, str], selector: list[Requirement]) -> bool:
    return all(_satisfies(labels, requirement) for requirement in selector)


def _satisfies(labels: dict[str, str], requirement: Requirement) -> bool:
    key, operator, values = requirement
    if operator == "in":
        return labels.get(key) in values
    if operator == "notin":
        return labels.get(key) not in values
    return (key in labels) == (operator == "exists")


# -- answers ------------------------------------------------------------------------------------


def _scale(deployment: Obj) -> Obj:
    metadata = deployment["metadata"]
    selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata["uid"],
            "resourceVersion": metadata["resourceVersion"],
            "creationTimestamp": metadata["creationTimestamp"],
        },
        "spec": {"replicas": deployment["spec"]["replicas"]},
        "status": {"replicas": deployment["status"]["replicas"], "selector": selector},
    }


def _reason(status: int) -> str:
    reasons = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "Conflict", 422: "Invalid"}
    reasons |= {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}
    return reasons.get(status, "Unknown")


def _not_found(group: str, resource: str, name: str) -> ApiError:
    qualified = f"{resource}.{group}" if group else resource
    details = {"name": name, "group": group, "kind": resource}
    return ApiError(404, "NotFound", f'{qualified} "{name}" not found', details)


def _conflict(resource: str, name: str) -> ApiError:
    message = (
        f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    return ApiError(409, "Conflict", message, {"name": name})


def _invalid(kind: str, name: str, cause: str) -> ApiError:
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {cause}', {"name": name, "kind": kind})


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (after its own timeout) is not an error of the server."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_class(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            status, answer = fake.handle(self.command, self.path, self.headers.get("Content-Type"), raw)
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def fake_kube() -> Iterator[FakeKube]:
    """A started fake API server with Chaos Mesh's kinds installed."""
    with FakeKube() as kube:
        kube.install_chaos_mesh()
        yield kube
