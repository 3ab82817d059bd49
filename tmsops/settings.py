"""Typed settings of every deployable, read from ``tmsops.yaml`` with environment overrides.

Layers, lowest first: defaults, the YAML file, the environment. YAML keys are camelCase
(``scaling.cpuThresholds.scaleUp``); the snake_case field names are accepted too. An
environment variable is ``TMSOPS_`` plus the field path in capitals joined by ``__``:
``TMSOPS_SCALING__MIN_REPLICAS=2``, ``TMSOPS_SCALING__CPU_THRESHOLDS__SCALE_UP=80``,
``TMSOPS_MODE=production``.

One ``tmsops.yaml`` serves every deployable: each settings class takes the core keys and
its own section (``scaling``, ``optimization`` or ``safety``); the other sections are
still validated, so a typo anywhere in the file is reported by every service.

Outside ``mode: dev`` the settings refuse insecure defaults: no admin token, a default
admin token, or debug on.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tmsops.errors import PermanentError
from tmsops.targets.quantities import parse_cpu, parse_memory

ENV_PREFIX = "TMSOPS_"
ENV_NESTED_DELIMITER = "__"
CONFIG_ENV = "TMSOPS_CONFIG"
DEFAULT_CONFIG = Path("tmsops.yaml")
DEFAULT_ADMIN_TOKENS = frozenset({"changethis", "changeme", "admin", "secret", "token"})
MIN_ADMIN_TOKEN_LENGTH = 32

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# A compound duration such as 30m, 1h30m or 250ms, as a pattern for an API parameter's schema.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"

SettingsT = TypeVar("SettingsT", bound="CoreSettings")


class SettingsError(PermanentError):
    """A settings file or environment variable that cannot be used; the message names it."""


def parse_duration(value: object) -> object:
    """``"30m"``, ``"1h30m"``, ``"45s"``, ``"250ms"`` or a number of seconds, as a timedelta.

    Other text is read the way pydantic reads a timedelta (ISO 8601, ``HH:MM:SS``), so that a model
    in strict mode takes it too; what neither reads is passed on unchanged for pydantic to refuse.
    A duration too long for a timedelta (about 2.7 million years) is a ValueError.
    """
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return timedelta(seconds=value)
        if isinstance(value, str):
            parsed = _parse_compound_duration(value)
            return _lax_timedelta(value) if parsed is None else parsed
    except OverflowError as error:
        raise ValueError(f"{value!r} is too long a duration") from error
    return value


def _lax_timedelta(text: str) -> object:
    try:
        return _TIMEDELTA.validate_python(text)
    except ValidationError:
        return text


def _parse_compound_duration(text: str) -> timedelta | None:
    compact = text.replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not parts or "".join(number + unit for number, unit in parts) != compact:
        return None
    return timedelta(seconds=sum(float(number) * _DURATION_UNITS_S[unit] for number, unit in parts))


# What parse_duration reads, in a JSON schema: seconds, 30m or 1h30m, or ISO 8601 (PT30M).
DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "description": "seconds"},
        {"type": "string", "pattern": DURATION_PATTERN},
        {"type": "string", "format": "duration"},
    ]
}
Duration = Annotated[timedelta, BeforeValidator(parse_duration), WithJsonSchema(DURATION_SCHEMA)]
_TIMEDELTA = TypeAdapter(timedelta)


def whole_number(value: object) -> object:
    """``2.0`` as ``2``: JSON has one type of number, and a schema's integer may be spelt either way."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer of a request body validated in strict mode (which refuses true and "3"), spelt 3 or 3.0.
WholeNumber = Annotated[int, BeforeValidator(whole_number)]
Percent = Annotated[float, Field(ge=0, le=100)]
Port = Annotated[int, Field(ge=1, le=65535)]


class Section(BaseModel):
    """A group of settings: camelCase keys in YAML, snake_case in code and the environment."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class Thresholds(Section):
    """Utilisation (percent) above which to scale up and below which to scale down."""

    scale_up: Percent = 70
    scale_down: Percent = 30

    @model_validator(mode="after")
    def _down_below_up(self) -> Self:
        if self.scale_down >= self.scale_up:
            raise ValueError(f"scaleDown ({self.scale_down}) must be below scaleUp ({self.scale_up})")
        return self


class MemoryThresholds(Thresholds):
    scale_up: Percent = 80
    scale_down: Percent = 40


class ScalingSettings(Section):
    """The autoscaler's policy.

    ``mode``: ``forecastOnly`` recommends and records, never acts; ``forecastAndScale`` acts.
    ``interval``: time between decisions. ``forecastStep``: the step of the demand series
    sent to the forecaster (the step it was trained on). ``services``: the services to
    manage (empty: every service of the target).
    """

    cpu_thresholds: Thresholds = Thresholds()
    memory_thresholds: MemoryThresholds = MemoryThresholds()
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(10, ge=1)
    prediction_weight: float = Field(1.0, ge=0, le=1)
    mode: Literal["forecastOnly", "forecastAndScale"] = "forecastOnly"
    interval: Duration = timedelta(seconds=15)
    forecast_step: Duration = timedelta(minutes=5)
    quantile: Literal["p50", "p90"] = "p50"
    stabilization_window: Duration = timedelta(minutes=5)
    tolerance: float = Field(0.1, ge=0, le=1)
    max_interval_ratio: float = Field(2.0, gt=0)
    startup_time: Duration = timedelta(seconds=30)
    price_per_replica_hour: float = Field(0.05, ge=0)
    services: list[str] = []

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) is above maxReplicas ({self.max_replicas})")
        return self


class DatabaseOptimization(Section):
    """The PostgreSQL the optimizer analyses (``dsn``) and how it applies indexes.

    ``autoIndexing`` lets ``POST /auto-optimize`` create the indexes it recommends; either way
    an index is kept only when the measured read time of the queries it serves falls by at
    least ``minGain`` (a fraction), otherwise it is dropped again. ``schemas``: schemas analysed
    besides the connection's search_path (searched first); table names must be unique across them.
    """

    auto_indexing: bool = True
    dsn: SecretStr | None = None
    schemas: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")]] = []
    service: str = "shipment-service"
    min_gain: float = Field(0.2, gt=0, lt=1)
    min_calls: int = Field(10, ge=1)
    max_new_indexes: int = Field(5, ge=1, le=50)
    lock_timeout: Duration = timedelta(seconds=5)
    statement_timeout: Duration = timedelta(seconds=60)
    write_penalty: float = Field(1.0, ge=0)


class CacheOptimization(Section):
    """The Redis the optimizer analyses (``redisUrl``): keys are sampled for ``sampleWindow`` at
    ``sampleRate`` (spatial sampling of the key stream) to estimate the hit rate per memory size."""

    strategy: Literal["lru", "lfu", "ttl", "adaptive"] = "adaptive"
    ttl: Duration = timedelta(hours=1)
    redis_url: SecretStr | None = None
    service: str = "shipment-service"
    target_hit_rate: float = Field(0.9, gt=0, lt=1)
    sample_rate: float = Field(0.1, gt=0, le=1)
    sample_window: Duration = timedelta(seconds=30)


class ResourceOptimization(Section):
    """Right-sizing: requests at a usage percentile plus a margin (the krr / VPA way).

    ``safeMode`` applies only changes that can be undone (fields set now) and refuses a memory
    limit below the usage seen; a change is kept once every replica is ready with it.
    """

    safe_mode: bool = True
    cpu_percentile: Percent = 95
    memory_percentile: Percent = 99
    margin: float = Field(0.15, ge=0, le=2)


class OptimizationSettings(Section):
    """The optimizer's policy."""

    database: DatabaseOptimization = DatabaseOptimization()
    cache: CacheOptimization = CacheOptimization()
    resources: ResourceOptimization = ResourceOptimization()


class SafetySettings(Section):
    """The chaos service's guard rails; ``emergency_stop`` enables the stop-everything switch."""

    max_experiment_duration: Duration = timedelta(minutes=30)
    blast_radius_limit: Percent = 25
    auto_rollback: bool = True
    emergency_stop: bool = True
    allow_services: list[str] | None = Field(None, description="only these services (unset: every service)")
    deny_services: list[str] = []


# A positive quantity as text, as parse_bytes and parse_cores read it: a decimal with a non-zero
# digit, then an exponent (two digits at most: no overflow to infinity or underflow to zero) or a suffix.
QUANTITY_PATTERN = (
    r"^([0-9]*[1-9][0-9]*(\.[0-9]*)?|[0-9]*\.[0-9]*[1-9][0-9]*)([eE][+-]?[0-9]{1,2}|[KMGTPE]i|[numkMGTPE])?$"
)


def parse_bytes(value: object) -> object:
    """A Kubernetes memory quantity (``"256Mi"``, ``"1G"``, ``"1048576"``) as bytes; other values unchanged."""
    return parse_memory(_quantity(value)) if isinstance(value, str | bool) else value


def parse_cores(value: object) -> object:
    """A Kubernetes CPU quantity (``"250m"``, ``"0.5"``, ``"2"``) as cores; other values unchanged."""
    return parse_cpu(_quantity(value)) if isinstance(value, str | bool) else value


def _quantity(text: str | bool) -> str:
    if isinstance(text, bool) or not re.fullmatch(QUANTITY_PATTERN, text):
        raise ValueError(f"{text!r} is not a positive quantity such as 250m, 0.5, 256Mi or 1G")
    return text


Bytes = Annotated[
    int,
    BeforeValidator(parse_bytes),
    Field(gt=0),
    WithJsonSchema(
        {"anyOf": [{"type": "integer", "exclusiveMinimum": 0}, {"type": "string", "pattern": QUANTITY_PATTERN}]}
    ),
]
Cores = Annotated[
    float,
    BeforeValidator(parse_cores),
    Field(gt=0, allow_inf_nan=False),
    WithJsonSchema(
        {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "pattern": QUANTITY_PATTERN}]}
    ),
]


class ServicePorts(Section):
    """The port each service listens on (on ``host``)."""

    autoscaler: Port = 8011
    optimizer: Port = 8012
    chaos: Port = 8013


SERVICE_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class FleetService(Section):
    """One service of the local fleet: how to start a replica and how many may run.

    In ``command`` and ``env`` values, ``{python}`` is the fleet's Python interpreter, ``{port}``
    the replica's own port, ``{dataDir}`` the service's data directory,
    ``{service:NAME}`` the base URL of another fleet service (through its proxy), and
    ``{dependency:NAME}`` the ``host:port`` to reach a declared dependency through the
    fleet's slow-dependency proxy.
    """

    command: list[str] = Field(min_length=1)
    port: Port
    env: dict[str, str] = {}
    health_path: str = Field("/health", pattern=r"^/")
    replicas: int = Field(1, ge=0)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(10, ge=1)
    cpu_request: Cores | None = None
    cpu_limit: Cores | None = None
    memory_request: Bytes | None = None
    memory_limit: Bytes | None = None
    data_dir: Path | None = None
    dependencies: dict[str, str] = Field({}, description="name -> host:port")
    start_timeout: Duration = timedelta(seconds=30)
    drain_timeout: Duration = timedelta(seconds=30)
    stop_grace: Duration = timedelta(seconds=10)

    @model_validator(mode="after")
    def _replicas_in_range(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) is above maxReplicas ({self.max_replicas})")
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(f"replicas ({self.replicas}) is outside minReplicas .. maxReplicas")
        for name, address in self.dependencies.items():
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"dependencies.{name}: {address!r} is not host:port")
        return self


def demo_fleet() -> dict[str, FleetService]:
    """The demo TMS workload: api-gateway -> shipment-service (SQLite, no cache) and tracking-service."""
    python_module = ["{python}", "-m"]
    return {
        "api-gateway": FleetService(
            command=[*python_module, "tmsops.demo.gateway"],
            port=8080,
            env={
                "SHIPMENT_URL": "{service:shipment-service}",
                "TRACKING_URL": "{service:tracking-service}",
            },
            max_replicas=6,
            cpu_request=0.25,
            memory_request=128 * 2**20,
            memory_limit=512 * 2**20,
        ),
        "shipment-service": FleetService(
            command=[*python_module, "tmsops.demo.shipment"],
            port=8081,
            env={"DATABASE_URL": "sqlite:///{dataDir}/shipments.db"},
            data_dir=Path("state/fleet/shipment-service"),
            max_replicas=6,
            cpu_request=0.25,
            memory_request=128 * 2**20,
            memory_limit=512 * 2**20,
        ),
        "tracking-service": FleetService(
            command=[*python_module, "tmsops.demo.tracking"],
            port=8082,
            max_replicas=6,
            cpu_request=0.25,
            memory_request=128 * 2**20,
            memory_limit=512 * 2**20,
        ),
    }


class FleetConfig(Section):
    """The local fleet: its control API's port and its services (the demo workload by default)."""

    control_port: Port = 8010
    services: dict[str, FleetService] = Field(default_factory=demo_fleet)
    usage_interval: Duration = timedelta(seconds=2)
    restart_backoff_max: Duration = timedelta(seconds=30)

    @model_validator(mode="after")
    def _names_and_ports(self) -> Self:
        ports: dict[int, str] = {}
        for name, service in self.services.items():
            if not re.match(SERVICE_NAME, name):
                raise ValueError(f"service name {name!r} must be lower-case letters, digits and '-'")
            if service.port in ports or service.port == self.control_port:
                other = ports.get(service.port, "controlPort")
                raise ValueError(f"services {name} and {other} both use port {service.port}")
            ports[service.port] = name
        return self


class FleetTargetSettings(Section):
    """How the services reach the local fleet: its control API, and a token with scope ``operate``.

    Without ``token`` a service on the same state store issues itself one at start.
    """

    url: str = "http://127.0.0.1:8010"
    token: SecretStr | None = None
    timeout: Duration = timedelta(seconds=60)


class KubernetesTargetSettings(Section):
    """Which cluster, namespace and Deployments; ``kubeconfig`` unset means the in-cluster service account."""

    kubeconfig: Path | None = None
    context: str | None = None
    namespace: str = Field("default", min_length=1)
    label_selector: str = "app.kubernetes.io/part-of=tms"
    chaos_namespace: str | None = None
    conflict_retries: int = Field(5, ge=0, le=50)
    request_timeout: Duration = timedelta(seconds=10)


class TargetSettings(Section):
    """The services tmsops operates: the local fleet (default) or a Kubernetes cluster."""

    kind: Literal["fleet", "kubernetes"] = "fleet"
    fleet: FleetTargetSettings = FleetTargetSettings()
    kubernetes: KubernetesTargetSettings = KubernetesTargetSettings()


class MetricsSettings(Section):
    """Where live metrics come from: the Prometheus HTTP API at ``prometheusUrl``.

    ``templates`` overrides the PromQL of a metric (``requestsPerSecond``, ``cpuCores``,
    ``memoryBytes``, ``p95LatencyMs``, ``errorRate``, ``readyReplicas``) for the configured target
    kind; ``{service}``, ``{namespace}`` and ``{window}`` are filled in.
    """

    window: Duration = timedelta(minutes=1)
    timeout: Duration = timedelta(seconds=10)
    templates: dict[str, str] = {}


class TracingSettings(Section):
    """OpenTelemetry traces, exported over OTLP/HTTP (protobuf); off unless an endpoint is known.

    ``otlp_endpoint`` is the collector's base URL (``http://collector:4318``; ``/v1/traces`` is
    added unless the path already ends with it). Unset, the standard variables
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (used as is) and then ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (base URL) switch tracing on; ``OTEL_SDK_DISABLED=true`` keeps it off whatever is set.
    ``sample_ratio`` is the share of new traces kept; a caller's sampling decision is always
    followed. ``service_name`` unset: ``OTEL_SERVICE_NAME``, else ``tmsops-<deployable>``.
    """

    otlp_endpoint: str | None = Field(None, pattern=r"^https?://[^/\s]+(/\S*)?$")
    sample_ratio: float = Field(1.0, ge=0, le=1)
    service_name: str | None = Field(None, min_length=1, max_length=200)


class CoreSettings(BaseSettings):
    """Settings every deployable shares. Keyword arguments are the file layer: the environment overrides them."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    mode: Literal["dev", "production"] = "dev"
    debug: bool = False
    state_dir: Path = Path("state")
    database_url: str | None = None
    model_server_url: str = "http://127.0.0.1:3000"
    prometheus_url: str = "http://127.0.0.1:9090"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    admin_token: SecretStr | None = None
    host: str = "127.0.0.1"
    ports: ServicePorts = ServicePorts()
    target: TargetSettings = TargetSettings()
    metrics: MetricsSettings = MetricsSettings()
    tracing: TracingSettings = TracingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return env_settings, init_settings

    @property
    def state_database_url(self) -> str:
        """Where state (tokens, audit, experiments...) lives: ``database_url`` or SQLite in ``state_dir``."""
        return self.database_url or f"sqlite:///{self.state_dir / 'tmsops.db'}"

    @model_validator(mode="after")
    def _refuse_insecure_defaults(self) -> Self:
        problems = insecure_defaults(self) if self.mode != "dev" else []
        if problems:
            raise ValueError(f"mode is {self.mode}: " + "; ".join(problems))
        return self


def insecure_defaults(settings: CoreSettings) -> list[str]:
    """What would make these settings unsafe outside dev mode, each naming its setting."""
    problems = []
    if settings.debug:
        problems.append("debug (TMSOPS_DEBUG) must be off")
    token = settings.admin_token.get_secret_value() if settings.admin_token else ""
    if not token:
        problems.append("admin_token (TMSOPS_ADMIN_TOKEN) must be set; no token is generated outside dev mode")
    elif token.lower() in DEFAULT_ADMIN_TOKENS or len(token) < MIN_ADMIN_TOKEN_LENGTH:
        problems.append(f"admin_token (TMSOPS_ADMIN_TOKEN) is a default or shorter than {MIN_ADMIN_TOKEN_LENGTH}")
    return problems


class AutoscalerSettings(CoreSettings):
    scaling: ScalingSettings = ScalingSettings()

    @property
    def port(self) -> int:
        return self.ports.autoscaler


class OptimizerSettings(CoreSettings):
    optimization: OptimizationSettings = OptimizationSettings()

    @property
    def port(self) -> int:
        return self.ports.optimizer


class ChaosSettings(CoreSettings):
    safety: SafetySettings = SafetySettings()

    @property
    def port(self) -> int:
        return self.ports.chaos


class FleetSettings(CoreSettings):
    fleet: FleetConfig = FleetConfig()

    @property
    def port(self) -> int:
        return self.fleet.control_port


SECTIONS: dict[str, type[Section]] = {
    "fleet": FleetConfig,
    "scaling": ScalingSettings,
    "optimization": OptimizationSettings,
    "safety": SafetySettings,
}


def load_settings(cls: type[SettingsT], path: Path | None = None) -> SettingsT:
    """Settings of one deployable from ``path`` (or ``$TMSOPS_CONFIG``, or ``./tmsops.yaml`` if present) and the env.

    Raises SettingsError naming the file and the key for an unknown key or a bad value.
    """
    source = path or config_path()
    data = read_yaml(source) if source else {}
    origin = str(source) if source else "environment"
    own = _validate_foreign_sections(cls, data, origin)
    try:
        return cls(**_to_field_names(cls, own))
    except ValidationError as error:
        raise SettingsError(_describe(error, origin), details={"errors": _field_errors(error)}) from error


def config_path() -> Path | None:
    """``$TMSOPS_CONFIG`` if set (it must exist), else ``./tmsops.yaml`` if it exists, else none."""
    configured = os.environ.get(CONFIG_ENV)
    if configured:
        return Path(configured)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SettingsError(f"{path}: cannot read the settings file: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise SettingsError(f"{path}: not valid YAML: {error}") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SettingsError(f"{path}: the settings file must be a mapping of keys, not {type(loaded).__name__}")
    return loaded


def _validate_foreign_sections(cls: type[CoreSettings], data: dict[str, Any], origin: str) -> dict[str, Any]:
    """Check the sections that belong to other deployables, and leave them out."""
    own = {}
    for key, value in data.items():
        section = SECTIONS.get(key)
        if section is None or key in cls.model_fields:
            own[key] = value
            continue
        try:
            section.model_validate(value)
        except ValidationError as error:
            raise SettingsError(_describe(error, origin, prefix=(key,))) from error
    return own


def _to_field_names(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """Rename camelCase keys to field names, recursively; unknown keys stay for validation to report."""
    renamed = {}
    for key, value in data.items():
        name = _field_name(model, key)
        nested = _section_type(model, name)
        renamed[name] = _to_field_names(nested, value) if nested and isinstance(value, dict) else value
    return renamed


def _field_name(model: type[BaseModel], key: str) -> str:
    for name, field in model.model_fields.items():
        if key in (name, field.alias, to_camel(name)):
            return name
    return key


def _section_type(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    field = model.model_fields.get(name)
    annotation = field.annotation if field else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _describe(error: ValidationError, origin: str, prefix: tuple[str, ...] = ()) -> str:
    first = error.errors()[0]
    parts = prefix + tuple(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        key = ".".join(filter(None, (_yaml_path(parts[:-1]), parts[-1])))
        return f"{origin}: {key}: unknown setting"
    location = _yaml_path(parts)
    where = f"{location} ({env_name(location)})" if location else "settings"
    return f"{origin}: {where}: {first['msg'].removeprefix('Value error, ')}"


def _field_errors(error: ValidationError) -> list[dict[str, object]]:
    return [
        {"field": _yaml_path(tuple(str(part) for part in item["loc"])), "message": item["msg"]}
        for item in error.errors()
    ]


def _yaml_path(location: tuple[str, ...]) -> str:
    return ".".join(to_camel(part) if "_" in part else part for part in location)


def env_name(yaml_path: str) -> str:
    """The variable that overrides a setting: ``scaling.minReplicas`` -> ``TMSOPS_SCALING__MIN_REPLICAS``."""
    parts = (re.sub(r"(?<!^)(?=[A-Z])", "_", part).upper() for part in yaml_path.split("."))
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(parts)
