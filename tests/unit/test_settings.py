"""Settings: seed defaults, YAML with camelCase keys, environment overrides, clear errors, production guard rails."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from tmsops.settings import (
    AutoscalerSettings,
    ChaosSettings,
    CoreSettings,
    FleetConfig,
    FleetService,
    FleetSettings,
    OptimizerSettings,
    SettingsError,
    env_name,
    load_settings,
    parse_duration,
)

STRONG_TOKEN = "tmsops_" + "x" * 40
EXAMPLE = Path(__file__).resolve().parents[2] / "tmsops.example.yaml"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No TMSOPS_* variable of the developer's shell, and no ./tmsops.yaml, leaks into a test."""
    for name in [name for name in os.environ if name.startswith("TMSOPS_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tmsops.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_seed_values() -> None:
    scaling = load_settings(AutoscalerSettings).scaling
    safety = load_settings(ChaosSettings).safety
    optimization = load_settings(OptimizerSettings).optimization

    assert (scaling.cpu_thresholds.scale_up, scaling.cpu_thresholds.scale_down) == (70, 30)
    assert (scaling.memory_thresholds.scale_up, scaling.memory_thresholds.scale_down) == (80, 40)
    # predictionWeight is 1.0, not the seed's 0.3: it now weighs only a forecast of less demand (README).
    assert (scaling.min_replicas, scaling.max_replicas, scaling.prediction_weight) == (1, 10, 1.0)
    assert safety.max_experiment_duration == timedelta(minutes=30)
    assert (safety.blast_radius_limit, safety.auto_rollback, safety.emergency_stop) == (25, True, True)
    assert optimization.database.auto_indexing and optimization.resources.safe_mode
    assert optimization.cache.strategy == "adaptive"


def test_core_defaults_and_one_port_per_service() -> None:
    core = load_settings(CoreSettings)

    assert core.mode == "dev" and core.model_server_url == "http://127.0.0.1:3000"
    assert core.state_database_url == f"sqlite:///{Path('state') / 'tmsops.db'}"
    assert load_settings(AutoscalerSettings).port == 8011
    assert load_settings(OptimizerSettings).port == 8012
    assert load_settings(ChaosSettings).port == 8013


def test_yaml_with_camel_case_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "stateDir: /srv/tmsops\nscaling:\n  cpuThresholds: {scaleUp: 85}\n  minReplicas: 2\n"
        "safety: {maxExperimentDuration: 1h30m}\n",
    )

    autoscaler = load_settings(AutoscalerSettings, path)

    assert autoscaler.state_dir == Path("/srv/tmsops")
    assert autoscaler.scaling.cpu_thresholds.scale_up == 85
    assert autoscaler.scaling.cpu_thresholds.scale_down == 30
    assert autoscaler.scaling.min_replicas == 2
    assert load_settings(ChaosSettings, path).safety.max_experiment_duration == timedelta(hours=1, minutes=30)


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "scaling:\n  minReplicas: 2\n  maxReplicas: 6\n")
    monkeypatch.setenv("TMSOPS_SCALING__MIN_REPLICAS", "3")
    monkeypatch.setenv("TMSOPS_SCALING__CPU_THRESHOLDS__SCALE_UP", "90")
    monkeypatch.setenv("TMSOPS_PORTS__AUTOSCALER", "9011")

    settings = load_settings(AutoscalerSettings, path)

    assert (settings.scaling.min_replicas, settings.scaling.max_replicas) == (3, 6)
    assert settings.scaling.cpu_thresholds.scale_up == 90
    assert settings.port == 9011


def test_config_path_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "conf" / "ops.yaml"
    elsewhere.parent.mkdir()
    elsewhere.write_text("safety: {blastRadiusLimit: 10}\n")
    monkeypatch.setenv("TMSOPS_CONFIG", str(elsewhere))

    assert load_settings(ChaosSettings).safety.blast_radius_limit == 10


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "scaling:\n  cpuThresholds: {scaleUpp: 80}\n")

    with pytest.raises(SettingsError, match=r"tmsops\.yaml: scaling\.cpuThresholds\.scaleUpp: unknown setting"):
        load_settings(AutoscalerSettings, path)


def test_a_typo_in_another_services_section_is_reported_too(tmp_path: Path) -> None:
    path = write(tmp_path, "safety: {blastRadius: 10}\n")

    with pytest.raises(SettingsError, match=r"safety\.blastRadius: unknown setting"):
        load_settings(AutoscalerSettings, path)


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r": scalling: unknown setting"):
        load_settings(AutoscalerSettings, write(tmp_path, "scalling: {}\n"))


def test_bad_value_names_the_field_the_file_and_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "scaling: {minReplicas: many}\n")

    with pytest.raises(SettingsError) as raised:
        load_settings(AutoscalerSettings, path)

    assert str(path) in raised.value.message
    assert "scaling.minReplicas (TMSOPS_SCALING__MIN_REPLICAS)" in raised.value.message


def test_inconsistent_values_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "scaling: {minReplicas: 5, maxReplicas: 3}\n")

    with pytest.raises(SettingsError, match=r"minReplicas \(5\) is above maxReplicas \(3\)"):
        load_settings(AutoscalerSettings, path)


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="must be a mapping"):
        load_settings(CoreSettings, write(tmp_path, "- one\n- two\n"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("1h30m", timedelta(minutes=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("0s", timedelta(0)),
        (45, timedelta(seconds=45)),
    ],
)
def test_durations(text: str | int, expected: timedelta) -> None:
    assert parse_duration(text) == expected


def test_production_refuses_a_missing_admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMSOPS_MODE", "production")

    with pytest.raises(SettingsError, match=r"admin_token \(TMSOPS_ADMIN_TOKEN\) must be set"):
        load_settings(CoreSettings)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [({"admin_token": "changethis"}, "admin_token"), ({"admin_token": STRONG_TOKEN, "debug": True}, "debug")],
)
def test_production_refuses_insecure_defaults(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        CoreSettings.model_validate({"mode": "production", **overrides})


def test_production_accepts_secure_settings_and_dev_accepts_defaults() -> None:
    assert CoreSettings(mode="production", admin_token=STRONG_TOKEN).mode == "production"
    assert CoreSettings(debug=True).admin_token is None


def test_the_example_file_is_valid_for_every_service() -> None:
    for cls in (AutoscalerSettings, OptimizerSettings, ChaosSettings, FleetSettings):
        assert load_settings(cls, EXAMPLE) == load_settings(cls)


def test_quantities_and_fleet_checks() -> None:
    service = FleetService(command=["x"], port=9000, cpu_request="250m", memory_limit="1.5Gi")
    assert (service.cpu_request, service.memory_limit) == (0.25, int(1.5 * 2**30))
    with pytest.raises(ValidationError, match=r"replicas \(7\) is outside minReplicas \.\. maxReplicas"):
        FleetService(command=["x"], port=9000, replicas=7, max_replicas=6)
    with pytest.raises(ValidationError, match=r"dependencies\.db: 'nowhere' is not host:port"):
        FleetService(command=["x"], port=9000, dependencies={"db": "nowhere"})
    twice = {"a": FleetService(command=["x"], port=9000), "b": FleetService(command=["y"], port=9000)}
    with pytest.raises(ValidationError, match="services b and a both use port 9000"):
        FleetConfig(services=twice)
    with pytest.raises(ValidationError, match="service name 'Bad_Name'"):
        FleetConfig(services={"Bad_Name": FleetService(command=["x"], port=9000)})


def test_env_name() -> None:
    assert env_name("scaling.cpuThresholds.scaleUp") == "TMSOPS_SCALING__CPU_THRESHOLDS__SCALE_UP"
