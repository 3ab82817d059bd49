"""``tmsops backtest``: replay a demand trace through one scaling policy and print the figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from actuators.autoscaler.backtest import DEFAULT_CACHE, DEFAULT_MODEL_SERVER, POLICIES, BacktestSettings, backtest

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Replay a demand trace (timestamp,value CSV) through a scaling policy in the cluster simulator.",
)


@app.callback(invoke_without_command=True)
def run(
    trace: Annotated[Path, typer.Option(help="timestamp,value CSV of demand (requests/s) at a regular step")],
    policy: Annotated[str, typer.Option(help=f"one of: {', '.join(POLICIES)}")],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
    model_server: Annotated[
        str, typer.Option(envvar="TMSOPS_MODEL_SERVER_URL", help="model server URL (predictive policy)")
    ] = DEFAULT_MODEL_SERVER,
    interval: Annotated[float, typer.Option(min=1, help="seconds of trace time between decisions")] = 60.0,
    startup: Annotated[float, typer.Option(min=0, help="replica start-up delay, seconds of trace time")] = 120.0,
    prediction_weight: Annotated[
        float, typer.Option(min=0, max=1, help="weight of the forecast in the blend (PolicyConfig)")
    ] = BacktestSettings.prediction_weight,
    quantile: Annotated[str, typer.Option(help="forecast quantile the policy plans for: p50 or p90")] = "p50",
    cache_dir: Annotated[Path, typer.Option(help="where forecasts of traces are cached")] = DEFAULT_CACHE,
) -> None:
    """Simulate POLICY over TRACE; report SLO-violation minutes, replica-hours, scaling actions, p95 latency."""
    if quantile not in ("p50", "p90"):
        raise typer.BadParameter("p50 or p90", param_hint="--quantile")
    settings = BacktestSettings(
        interval_s=interval,
        startup_s=startup,
        prediction_weight=prediction_weight,
        quantile="p90" if quantile == "p90" else "p50",
    )
    figures = backtest(trace, policy, settings, model_server, cache_dir)
    print(json.dumps(figures, indent=2) if as_json else table(figures))


def table(figures: dict[str, Any]) -> str:
    """The report as aligned ``name  value`` lines, without the settings."""
    model = figures["model"]
    shown = {**figures, "model": f"{model['name']} v{model['version']}" if model else "-"}
    shown.pop("settings", None)
    width = max(len(name) for name in shown)
    return "\n".join(f"{name:<{width}}  {'-' if value is None else value}" for name, value in shown.items())
