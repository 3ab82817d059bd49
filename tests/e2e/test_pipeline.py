"""`dvc repro` from scratch on a small configuration: every stage runs, both models are
registered in a real MLflow store, a rerun runs nothing, a worse candidate does not
take the alias, and bad data stops the pipeline at validation with a clear message."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.xdist_group("pipeline")


def run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "GX_ANALYTICS_ENABLED": "false"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def small_params() -> dict[str, object]:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["generator"].update(services=["orders", "cart"], days=5, incidents_per_service=1)
    params["forecaster"].update(context=48, horizon=6, hidden=32, layers=1, epochs=2)
    params["detector"].update(epochs=3)
    params["evaluation"]["baselines"] = ["naive", "seasonal_naive", "autoets", "mstl"]
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(REPO / "training", root / "training", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump(small_params()))
    run(["dvc", "init", "--no-scm", "-q"], root)
    run(["dvc", "repro"], root)
    return root


def test_every_stage_ran_and_both_models_are_registered(project: Path) -> None:
    registry = json.loads((project / "metrics" / "registry.json").read_text())
    assert set(registry) == {"load-forecaster", "anomaly-detector"}
    for entry in registry.values():
        assert entry["version"] == "1" and entry["alias"] in {"champion", "challenger"} and entry["reason"]
    forecast = json.loads((project / "metrics" / "forecast.json").read_text())
    assert {"champion", "naive", "seasonal_naive", "autoets", "mstl"} <= set(forecast)
    assert 0 <= forecast["champion"]["coverage"] <= 1
    assert json.loads((project / "data" / "validation" / "report.json").read_text())["success"]
    assert sorted(path.name.split("_")[0] for path in (project / "plots").glob("*.png"))
    aliases = run([sys.executable, "-c", ALIASES], project).stdout
    for name, entry in registry.items():
        assert f"{name} {entry['alias']} {entry['version']}" in aliases


ALIASES = """
import mlflow
client = mlflow.MlflowClient("sqlite:///mlruns/mlflow.db")
for model in client.search_registered_models():
    for alias, version in model.aliases.items():
        print(model.name, alias, version)
run = client.search_runs([client.get_experiment_by_name("tmsops-training").experiment_id])[0]
assert run.data.params["forecaster.context"] == "48", run.data.params
assert "forecast.champion.mase" in run.data.metrics
names = {item.path for item in client.list_artifacts(run.info.run_id)}
assert {"plots", "metrics", "validation"} <= names, names
"""


def test_a_second_repro_runs_no_stage(project: Path) -> None:
    result = run(["dvc", "repro"], project)
    assert "Running stage" not in result.stdout
    assert "up to date" in result.stdout


def test_a_worse_candidate_does_not_take_the_alias(project: Path) -> None:
    before = json.loads((project / "metrics" / "registry.json").read_text())["load-forecaster"]
    forecast_path = project / "metrics" / "forecast.json"
    original = forecast_path.read_text()
    worse = json.loads(original)
    worse["champion"]["mase"] = 50.0
    forecast_path.write_text(json.dumps(worse))
    try:
        run([sys.executable, "-m", "training.register", "--out", "metrics/registry_second.json"], project)
    finally:
        forecast_path.write_text(original)
    second = json.loads((project / "metrics" / "registry_second.json").read_text())["load-forecaster"]
    assert second["version"] == "2" and second["alias"] == "challenger"
    assert "does not beat" in second["reason"]
    aliases = run([sys.executable, "-c", ALIASES], project).stdout
    if before["alias"] == "champion":
        assert "load-forecaster champion 1" in aliases
    assert "load-forecaster challenger 2" in aliases


def test_bad_data_stops_at_validation(project: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(project / "data" / "raw", raw)
    victim = raw / "data" / "cart" / "latency_p95_ms.csv"
    lines = victim.read_text().splitlines()
    lines[40] = lines[40].split(",")[0] + ",fast"
    lines[60] = lines[59]
    victim.write_text("\n".join(lines) + "\n")
    result = run(
        [sys.executable, "-m", "training.validate", "--raw", str(raw), "--out", str(tmp_path / "v")],
        project,
        check=False,
    )
    assert result.returncode != 0
    assert f"{victim}: failed validation" in result.stderr
    assert "value missing or not a number" in result.stderr and "line 41" in result.stderr
    assert "duplicated timestamp" in result.stderr
    assert not json.loads((tmp_path / "v" / "report.json").read_text())["success"]
    refused = run(
        [
            sys.executable,
            "-m",
            "training.prepare",
            "--raw",
            str(raw),
            "--validation",
            str(tmp_path / "v" / "report.json"),
            "--out",
            str(tmp_path / "p"),
        ],
        project,
        check=False,
    )
    assert refused.returncode == 2 and "has not passed validation" in refused.stderr
    assert not (tmp_path / "p").exists()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_mlflow_ui_serves_the_runs_and_the_registered_models(project: Path) -> None:
    import time

    import httpx

    port = free_port()
    command = ["mlflow", "server", "--backend-store-uri", "sqlite:///mlruns/mlflow.db", "--host", "127.0.0.1"]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    server = subprocess.Popen(
        [*command, "--port", str(port), "--workers", "1"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        models = httpx.get(f"{base}/api/2.0/mlflow/registered-models/search", timeout=10).json()["registered_models"]
        aliases = {model["name"]: {entry["alias"] for entry in model.get("aliases", [])} for model in models}
        assert set(aliases) == {"load-forecaster", "anomaly-detector"}
        assert all(names for names in aliases.values())
        experiment = httpx.get(
            f"{base}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "tmsops-training"}, timeout=10
        ).json()["experiment"]
        runs = httpx.post(
            f"{base}/api/2.0/mlflow/runs/search", json={"experiment_ids": [experiment["experiment_id"]]}, timeout=10
        ).json()["runs"]
        data = runs[-1]["data"]
        assert any(item["key"] == "forecast.champion.mase" for item in data["metrics"])
        assert any(item["key"] == "forecaster.horizon" for item in data["params"])
        assert httpx.get(base, timeout=10).status_code == 200  # the UI page itself
    finally:
        server.terminate()
        server.wait(timeout=30)
