"""The Kubernetes backend of the target interface, on the official ``kubernetes`` client.

Services are the Deployments in ``settings.namespace`` that match ``settings.label_selector``.
Per Deployment annotations:

- ``tmsops.io/min-replicas`` / ``tmsops.io/max-replicas``: the replica range (else the defaults);
- ``tmsops.io/container``: the main container (else the first);
- ``tmsops.io/dependencies``: JSON ``{name: "host:port"}``, the targets of ``slow_dependency``.

Scaling goes through the scale subresource with optimistic concurrency (409 Conflict: re-read,
retry), resources through a strategic-merge patch, usage through metrics.k8s.io PodMetrics, and
faults through Chaos Mesh resources (see :mod:`tmsops.targets.kubernetes_chaos`). Dry runs are the
API server's own (``dryRun=All``). The client is synchronous, so every call runs in a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import urllib3
from kubernetes import config as kube_config
from kubernetes.client import (
    ApiClient,
    ApiException,
    AppsV1Api,
    Configuration,
    CoreV1Api,
    CustomObjectsApi,
    V1Container,
    V1Deployment,
    V1Pod,
    V1Scale,
)
from pydantic import ValidationError

from tmsops.errors import TmsopsError
from tmsops.settings import KubernetesTargetSettings
from tmsops.targets import kubernetes_chaos as chaos
from tmsops.targets.base import (
    Forbidden,
    ReplicasOutOfRange,
    TargetError,
    TargetUnavailable,
    UnknownFault,
    UnknownService,
)
from tmsops.targets.model import (
    Fault,
    FaultRequest,
    FaultState,
    Replica,
    ReplicaUsage,
    Resources,
    ServiceStatus,
    ServiceUsage,
)
from tmsops.targets.quantities import format_cpu, format_memory, parse_cpu, parse_memory

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_REPLICAS_ANNOTATION = "tmsops.io/min-replicas"
MAX_REPLICAS_ANNOTATION = "tmsops.io/max-replicas"
CONTAINER_ANNOTATION = "tmsops.io/container"
METRICS_GROUP = "metrics.k8s.io"
METRICS_VERSION = "v1beta1"
DRY_RUN = "All"
# The generated client sets no Content-Type on POST and PUT (and ignores _content_type there).
JSON_BODY = {"Content-Type": "application/json"}
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
RETRY_AFTER_S = 1.0
METRICS_RETRY_AFTER_S = 30.0


class ApiNotFound(TargetError):
    """The API answered 404 Not Found."""


class ApiConflict(TargetUnavailable):
    """The API answered 409 Conflict (a stale resourceVersion, or a name already taken)."""


class KubernetesTarget:
    """The services of one namespace of a cluster, reached through the Kubernetes API."""

    kind = "kubernetes"

    def __init__(
        self,
        settings: KubernetesTargetSettings,
        *,
        default_min_replicas: int,
        default_max_replicas: int,
        api_client: ApiClient | None = None,
    ) -> None:
        self._settings = settings
        self._default_range = (default_min_replicas, default_max_replicas)
        self._owns_client = api_client is None
        self._client = api_client if api_client is not None else client_from_settings(settings)
        self._apps = AppsV1Api(self._client)
        self._core = CoreV1Api(self._client)
        self._custom = CustomObjectsApi(self._client)
        self._timeout = settings.request_timeout.total_seconds()
        self._namespace = settings.namespace
        self._chaos_namespace = settings.chaos_namespace or settings.namespace

    # -- services ----------------------------------------------------------------------------

    async def list_services(self) -> list[ServiceStatus]:
        deployments = await self._deployments()
        pods = await self._pods("")
        return [self._status(d, [p for p in pods if _selects(d, p)]) for d in deployments]

    async def service(self, name: str) -> ServiceStatus:
        deployment = await self._deployment(name)
        return self._status(deployment, await self._pods(_selector(deployment)))

    async def set_replicas(self, name: str, replicas: int, *, dry_run: bool = False) -> ServiceStatus:
        deployment = await self._deployment(name)
        low, high = self._replica_range(deployment)
        if not low <= replicas <= high:
            raise ReplicasOutOfRange(name, replicas, low, high)
        scale = await self._retry_conflicts(f"scale deployment {name!r}", lambda: self._scale(name, replicas, dry_run))
        pods = await self._pods(_selector(deployment))
        return self._status(deployment, pods, replicas=scale.spec.replicas if scale.spec else replicas)

    async def set_resources(self, name: str, resources: Resources, *, dry_run: bool = False) -> ServiceStatus:
        deployment = await self._deployment(name)
        patch = _resources_patch(_main_container(deployment).name, resources)
        if patch is None:
            return await self.service(name)
        patched = await self._retry_conflicts(
            f"patch deployment {name!r}", lambda: self._patch_deployment(name, patch, dry_run)
        )
        return self._status(patched, await self._pods(_selector(deployment)))

    async def usage(self, name: str) -> ServiceUsage:
        deployment = await self._deployment(name)
        items = await self._pod_metrics(name, _selector(deployment))
        replicas = [_replica_usage(item) for item in items]
        stamps = [datetime.fromisoformat(item["timestamp"]) for item in items if item.get("timestamp")]
        at = max(stamps) if stamps else datetime.now(UTC)
        return ServiceUsage(service=name, at=at, replicas=replicas, resources=_resources(deployment))

    # -- faults ------------------------------------------------------------------------------

    async def inject(self, request: FaultRequest) -> Fault:
        deployment = await self._deployment(request.service)
        if request.replicas:
            await self._check_replicas(deployment, request.replicas)
        fault_id, now = chaos.new_fault_id(), datetime.now(UTC)
        body = chaos.chaos_object(
            fault_id, request, _chaos_target(deployment, self._namespace), self._chaos_namespace, now
        )
        await self._create_chaos(body, request.dry_run)
        fault = chaos.fault_from_object(body, now)
        assert fault is not None, "a chaos resource built here always reads back"
        return fault.model_copy(update={"state": FaultState.PLANNED}) if request.dry_run else fault

    async def faults(self, service: str | None = None) -> list[Fault]:
        now = datetime.now(UTC)
        items = await self._chaos_objects(chaos.managed_selector(service=service))
        found = [fault for _, item in items if (fault := chaos.fault_from_object(item, now)) is not None]
        return sorted(found, key=lambda fault: (fault.injected_at, fault.id))

    async def revert(self, fault_id: str) -> Fault | None:
        if not chaos.FAULT_ID.fullmatch(fault_id):
            raise UnknownFault(fault_id)
        items = await self._chaos_objects(chaos.managed_selector(fault_id=fault_id))
        if not items:
            return None
        plural, item = items[0]
        fault = chaos.fault_from_object(item, datetime.now(UTC))
        if not await self._delete_chaos(plural, item["metadata"]["name"]):
            return None
        return fault.model_copy(update={"state": FaultState.REVERTED}) if fault is not None else None

    async def aclose(self) -> None:
        if self._owns_client:
            await asyncio.to_thread(self._client.close)

    # -- reading deployments and pods --------------------------------------------------------

    async def _deployments(self) -> list[V1Deployment]:
        listing = await self._call(
            f"list deployments in namespace {self._namespace!r}",
            self._apps.list_namespaced_deployment,
            self._namespace,
            label_selector=self._settings.label_selector,
        )
        return list(listing.items)

    async def _deployment(self, name: str) -> V1Deployment:
        deployments = await self._deployments()
        for deployment in deployments:
            if _name(deployment) == name:
                return deployment
        raise UnknownService(name, [_name(d) for d in deployments])

    async def _pods(self, selector: str) -> list[V1Pod]:
        listing = await self._call(
            f"list pods in namespace {self._namespace!r}",
            self._core.list_namespaced_pod,
            self._namespace,
            label_selector=selector or None,
        )
        return list(listing.items)

    async def _check_replicas(self, deployment: V1Deployment, replicas: list[str]) -> None:
        pods = {p.metadata.name for p in await self._pods(_selector(deployment)) if p.metadata and p.metadata.name}
        missing = sorted(set(replicas) - pods)
        if missing:
            raise TargetError(
                f"service {_name(deployment)!r} has no pods {', '.join(missing)}; its pods: {', '.join(sorted(pods))}",
                details={"service": _name(deployment), "replicas": missing},
            )

    def _replica_range(self, deployment: V1Deployment) -> tuple[int, int]:
        annotations = _annotations(deployment)
        low = _int_annotation(deployment, MIN_REPLICAS_ANNOTATION, self._default_range[0])
        high = _int_annotation(deployment, MAX_REPLICAS_ANNOTATION, self._default_range[1])
        if low > high:
            raise TargetError(
                f"deployment {_name(deployment)!r}: {MIN_REPLICAS_ANNOTATION} {low} is above "
                f"{MAX_REPLICAS_ANNOTATION} {high}",
                details={"service": _name(deployment), "annotations": annotations},
            )
        return low, high

    def _status(self, deployment: V1Deployment, pods: list[V1Pod], replicas: int | None = None) -> ServiceStatus:
        low, high = self._replica_range(deployment)
        spec, status = deployment.spec, deployment.status
        desired = spec.replicas if spec and spec.replicas is not None else 1
        return ServiceStatus(
            name=_name(deployment),
            replicas=desired if replicas is None else replicas,
            ready_replicas=(status.ready_replicas or 0) if status else 0,
            min_replicas=low,
            max_replicas=high,
            resources=_resources(deployment),
            pods=[_replica(pod) for pod in pods],
        )

    # -- writing deployments -----------------------------------------------------------------

    async def _scale(self, name: str, replicas: int, dry_run: bool) -> V1Scale:
        current = await self._found(
            name,
            self._call(
                f"get deployments/scale {name!r} in namespace {self._namespace!r}",
                self._apps.read_namespaced_deployment_scale,
                name,
                self._namespace,
            ),
        )
        version = current.metadata.resource_version if current.metadata else None
        body = V1Scale.model_validate(
            {
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {"name": name, "namespace": self._namespace, "resourceVersion": version},
                "spec": {"replicas": replicas},
            }
        )
        action = f"update deployments/scale {name!r} in namespace {self._namespace!r}"
        replace = self._apps.replace_namespaced_deployment_scale
        call = self._call(action, replace, name, self._namespace, body, dry_run=_dry_run(dry_run), _headers=JSON_BODY)
        return await self._found(name, call)

    async def _patch_deployment(self, name: str, patch: dict[str, Any], dry_run: bool) -> V1Deployment:
        action = f"patch deployments {name!r} in namespace {self._namespace!r}"
        call = self._call(
            action,
            self._apps.patch_namespaced_deployment,
            name,
            self._namespace,
            patch,
            dry_run=_dry_run(dry_run),
            _content_type=STRATEGIC_MERGE_PATCH,
        )
        return await self._found(name, call)

    async def _found(self, name: str, call: Awaitable[T]) -> T:
        """``call``'s result; a 404 means the Deployment is gone."""
        try:
            return await call
        except ApiNotFound as error:
            raise UnknownService(name) from error

    async def _retry_conflicts(self, action: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()``, retried on 409 Conflict up to ``conflict_retries`` times."""
        retries = self._settings.conflict_retries
        for _ in range(retries):
            try:
                return await attempt()
            except ApiConflict as error:
                log.info("%s: conflict, retrying: %s", action, error.message)
        try:
            return await attempt()
        except ApiConflict as error:
            raise TargetUnavailable(
                f"{action}: conflicts persisted after {retries} retries (others keep changing it): {error.message}",
                retry_after=RETRY_AFTER_S,
                details={"retries": retries},
            ) from error

    # -- metrics -----------------------------------------------------------------------------

    async def _pod_metrics(self, name: str, selector: str) -> list[dict[str, Any]]:
        try:
            listing = await self._call(
                f"list {METRICS_GROUP} pods in namespace {self._namespace!r}",
                self._custom.list_namespaced_custom_object,
                METRICS_GROUP,
                METRICS_VERSION,
                self._namespace,
                "pods",
                label_selector=selector or None,
            )
        except ApiNotFound as error:
            raise TargetUnavailable(
                f"usage of {name!r}: the metrics API ({METRICS_GROUP}/{METRICS_VERSION}) is not served: "
                "metrics-server is not installed or not ready",
                retry_after=METRICS_RETRY_AFTER_S,
                details={"service": name},
            ) from error
        return _items(listing)

    # -- chaos resources ---------------------------------------------------------------------

    async def _create_chaos(self, body: dict[str, Any], dry_run: bool) -> None:
        plural = chaos.PLURALS[body["kind"]]
        action = f"create {plural} {body['metadata']['name']!r} in namespace {self._chaos_namespace!r}"
        try:
            await self._call(
                action,
                self._custom.create_namespaced_custom_object,
                chaos.GROUP,
                chaos.VERSION,
                self._chaos_namespace,
                plural,
                body,
                dry_run=_dry_run(dry_run),
                _headers=JSON_BODY,
            )
        except ApiNotFound as error:
            raise TargetError(
                f"{action}: {error.message} (is Chaos Mesh installed? its {plural}.{chaos.GROUP} resource is needed)",
                details=error.details,
            ) from error

    async def _chaos_objects(self, selector: str) -> list[tuple[str, dict[str, Any]]]:
        """Every managed chaos resource matching ``selector``, as (plural, object); kinds not served are skipped."""
        found: list[tuple[str, dict[str, Any]]] = []
        for plural in chaos.PLURALS.values():
            try:
                listing = await self._call(
                    f"list {plural} in namespace {self._chaos_namespace!r}",
                    self._custom.list_namespaced_custom_object,
                    chaos.GROUP,
                    chaos.VERSION,
                    self._chaos_namespace,
                    plural,
                    label_selector=selector,
                )
            except ApiNotFound:
                log.debug("%s.%s is not served: skipping", plural, chaos.GROUP)
                continue
            found.extend((plural, item) for item in _items(listing))
        return found

    async def _delete_chaos(self, plural: str, name: str) -> bool:
        """Delete one chaos resource; False if it was already gone."""
        try:
            await self._call(
                f"delete {plural} {name!r} in namespace {self._chaos_namespace!r}",
                self._custom.delete_namespaced_custom_object,
                chaos.GROUP,
                chaos.VERSION,
                self._chaos_namespace,
                plural,
                name,
            )
        except ApiNotFound:
            return False
        return True

    # -- calling the API ---------------------------------------------------------------------

    async def _call(self, action: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` in a thread, with the request timeout; API errors translated."""
        try:
            return await asyncio.to_thread(function, *args, _request_timeout=self._timeout, **kwargs)
        except ApiException as error:
            raise api_error(action, error) from error
        except urllib3.exceptions.HTTPError as error:
            raise TargetUnavailable(
                f"{action}: the Kubernetes API is unreachable: {error}", retry_after=RETRY_AFTER_S
            ) from error
        except ValidationError as error:
            raise TargetError(f"{action}: unexpected answer from the Kubernetes API: {error}") from error


# -- building the client ------------------------------------------------------------------------


def client_from_settings(settings: KubernetesTargetSettings) -> ApiClient:
    """A client from ``settings.kubeconfig`` (and ``context``), or the in-cluster service account."""
    try:
        if settings.kubeconfig is None:
            configuration = Configuration()
            kube_config.load_incluster_config(client_configuration=configuration)
            return ApiClient(configuration)
        return kube_config.new_client_from_config(
            config_file=str(settings.kubeconfig), context=settings.context, persist_config=False
        )
    except (kube_config.ConfigException, OSError) as error:
        where = settings.kubeconfig or "the in-cluster service account"
        raise TargetError(f"cannot configure the Kubernetes client from {where}: {error}") from error


# -- errors -------------------------------------------------------------------------------------


def api_error(action: str, error: ApiException) -> TmsopsError:
    """The tmsops error for an API error answer to ``action`` (e.g. ``patch deployments 'cart'``)."""
    status = int(error.status or 0)
    message = _api_message(error)
    details: dict[str, object] = {"status": status, "reason": error.reason}
    if status == 403:
        return Forbidden(f"forbidden: cannot {action}: {message}", details=details)
    if status == 401:
        return Forbidden(f"unauthorized: the API rejected the credentials to {action}: {message}", details=details)
    if status == 404:
        return ApiNotFound(f"{action}: not found: {message}", details=details)
    if status == 409:
        return ApiConflict(f"{action}: conflict: {message}", retry_after=RETRY_AFTER_S, details=details)
    if status == 429 or status >= 500:
        return TargetUnavailable(f"{action}: {message}", retry_after=_retry_after(error), details=details)
    return TargetError(f"{action}: {message}", details=details)


def _api_message(error: ApiException) -> str:
    """The ``message`` of the Status the API answered, else its body or reason."""
    body = error.body
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    try:
        status = json.loads(body) if body else None
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("message"):
        return str(status["message"])
    return (body or "").strip()[:500] or f"HTTP {error.status} {error.reason or ''}".strip()


def _retry_after(error: ApiException) -> float:
    value = (error.headers or {}).get("Retry-After")
    try:
        return max(float(value), RETRY_AFTER_S) if value else RETRY_AFTER_S
    except ValueError:
        return RETRY_AFTER_S


def _items(listing: object) -> list[dict[str, Any]]:
    """The ``items`` of a custom object list (the client types it as ``object``)."""
    items = listing.get("items") if isinstance(listing, dict) else None
    return [item for item in items or [] if isinstance(item, dict)]


def _dry_run(dry_run: bool) -> str | None:
    return DRY_RUN if dry_run else None


# -- reading Kubernetes objects -----------------------------------------------------------------


def _name(deployment: V1Deployment) -> str:
    return deployment.metadata.name if deployment.metadata and deployment.metadata.name else ""


def _annotations(deployment: V1Deployment) -> dict[str, str]:
    return dict(deployment.metadata.annotations or {}) if deployment.metadata else {}


def _int_annotation(deployment: V1Deployment, key: str, default: int) -> int:
    value = _annotations(deployment).get(key)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as error:
        raise TargetError(
            f"deployment {_name(deployment)!r}: annotation {key} is not an integer: {value!r}",
            details={"service": _name(deployment), "annotation": key},
        ) from error


def _match_labels(deployment: V1Deployment) -> dict[str, str]:
    spec = deployment.spec
    return dict(spec.selector.match_labels or {}) if spec and spec.selector else {}


def _selector(deployment: V1Deployment) -> str:
    """The Deployment's ``matchLabels`` as a label selector (``matchExpressions`` are not used)."""
    return ",".join(f"{key}={value}" for key, value in sorted(_match_labels(deployment).items()))


def _selects(deployment: V1Deployment, pod: V1Pod) -> bool:
    labels = (pod.metadata.labels if pod.metadata else None) or {}
    wanted = _match_labels(deployment)
    return bool(wanted) and all(labels.get(key) == value for key, value in wanted.items())


def _containers(deployment: V1Deployment) -> list[V1Container]:
    spec = deployment.spec
    template = spec.template.spec if spec and spec.template else None
    return list(template.containers) if template and template.containers else []


def _main_container(deployment: V1Deployment) -> V1Container:
    """The container named by ``tmsops.io/container``, else the first one."""
    containers = _containers(deployment)
    wanted = _annotations(deployment).get(CONTAINER_ANNOTATION)
    for container in containers:
        if wanted is None or container.name == wanted:
            return container
    names = ", ".join(c.name for c in containers) or "none"
    raise TargetError(
        f"deployment {_name(deployment)!r} has no container {wanted!r} (named by {CONTAINER_ANNOTATION}); "
        f"its containers: {names}",
        details={"service": _name(deployment)},
    )


def _resources(deployment: V1Deployment) -> Resources:
    resources = _main_container(deployment).resources
    requests = (resources.requests if resources else None) or {}
    limits = (resources.limits if resources else None) or {}
    return Resources(
        cpu_request=_cores(requests.get("cpu")),
        cpu_limit=_cores(limits.get("cpu")),
        memory_request=_bytes(requests.get("memory")),
        memory_limit=_bytes(limits.get("memory")),
    )


def _cores(quantity: str | None) -> float | None:
    """A CPU quantity in cores; None when absent, zero or malformed."""
    try:
        value = parse_cpu(quantity) if quantity is not None else 0.0
    except ValueError:
        log.warning("ignoring malformed CPU quantity %r", quantity)
        return None
    return value if value > 0 else None


def _bytes(quantity: str | None) -> int | None:
    """A memory quantity in bytes; None when absent, zero or malformed."""
    try:
        value = parse_memory(quantity) if quantity is not None else 0
    except ValueError:
        log.warning("ignoring malformed memory quantity %r", quantity)
        return None
    return value if value > 0 else None


def _resources_patch(container: str, resources: Resources) -> dict[str, Any] | None:
    """The strategic-merge patch setting the main container's requests and limits; None if nothing is set."""
    fields: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
    for section, resource, value in (
        ("requests", "cpu", resources.cpu_request),
        ("limits", "cpu", resources.cpu_limit),
    ):
        if value is not None:
            fields[section][resource] = format_cpu(value)
    for section, resource, size in (
        ("requests", "memory", resources.memory_request),
        ("limits", "memory", resources.memory_limit),
    ):
        if size is not None:
            fields[section][resource] = format_memory(size)
    changes = {section: values for section, values in fields.items() if values}
    if not changes:
        return None
    return {"spec": {"template": {"spec": {"containers": [{"name": container, "resources": changes}]}}}}


def _replica(pod: V1Pod) -> Replica:
    status = pod.status
    conditions = (status.conditions if status else None) or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    restarts = sum(c.restart_count or 0 for c in (status.container_statuses if status else None) or [])
    return Replica(
        id=pod.metadata.name if pod.metadata and pod.metadata.name else "",
        ready=ready,
        started_at=status.start_time if status else None,
        restarts=restarts,
        address=status.pod_ip if status else None,
    )


def _replica_usage(item: dict[str, Any]) -> ReplicaUsage:
    """One PodMetrics item: its containers' usage summed."""
    containers = item.get("containers") or []
    usages = [c.get("usage") or {} for c in containers]
    return ReplicaUsage(
        replica=(item.get("metadata") or {}).get("name", ""),
        cpu_cores=sum(parse_cpu(u["cpu"]) for u in usages if "cpu" in u),
        memory_bytes=sum(parse_memory(u["memory"]) for u in usages if "memory" in u),
    )


def _chaos_target(deployment: V1Deployment, namespace: str) -> chaos.ChaosTarget:
    container = _main_container(deployment)
    ports = [p.container_port for p in container.ports or [] if p.container_port]
    return chaos.ChaosTarget(
        service=_name(deployment),
        namespace=namespace,
        match_labels=_match_labels(deployment),
        container=container.name,
        port=ports[0] if ports else None,
        dependencies=_annotations(deployment).get(chaos.DEPENDENCIES_ANNOTATION),
    )
