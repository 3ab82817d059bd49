"""``tmsops load``: generate load on the demo workload by replaying a traffic trace."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tmsops.errors import TmsopsError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Generate load on the demo workload.")


@app.callback()
def load() -> None:
    """Generate load on the demo workload."""


@app.command("replay")
def replay_command(
    trace: Annotated[Path, typer.Option(help="CSV of request rates: timestamp,value (NAB) or one value/rps column")],
    url: Annotated[str, typer.Option(help="base URL of the api-gateway")] = "http://127.0.0.1:8080",
    step: Annotated[
        float | None, typer.Option(min=0.001, help="seconds between rows, for a trace without timestamps")
    ] = None,
    compress: Annotated[float, typer.Option(min=0.001, help="time compression: 144 plays a day in 10 minutes")] = 1.0,
    peak_rps: Annotated[
        float | None, typer.Option(min=0.001, help="scale so the trace's maximum is this req/s")
    ] = None,
    scale: Annotated[float | None, typer.Option(min=0.0, help="req/s per trace unit (instead of --peak-rps)")] = None,
    duration: Annotated[float | None, typer.Option(min=0.001, help="stop after this many seconds")] = None,
    mix: Annotated[str, typer.Option(help="route weights")] = "get=70,list=20,post=10",
    max_id: Annotated[int, typer.Option(min=1, help="shipment ids are drawn from 1..max-id")] = 20000,
    customers: Annotated[int, typer.Option(min=1, help="customer ids are drawn from 1..customers")] = 1000,
    connections: Annotated[int, typer.Option(min=1, help="HTTP connections, at most")] = 64,
    max_in_flight: Annotated[int, typer.Option(min=1, help="outstanding requests before dropping arrivals")] = 512,
    timeout: Annotated[float, typer.Option(min=0.001, help="request timeout, seconds")] = 10.0,
    seed: Annotated[int | None, typer.Option(help="random seed for arrivals and routes")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON object")] = False,
    timeline: Annotated[Path | None, typer.Option(help="write the per-second timeline to this CSV")] = None,
) -> None:
    """Replay a trace open loop: Poisson arrivals at the trace's (compressed, scaled) rate."""
    from tmsops.loadgen import ReplayOptions, RouteMix, rate_schedule, read_trace, run_replay, summary, write_timeline

    loaded = read_trace(trace, step)
    schedule = rate_schedule(loaded, compress=compress, peak_rps=peak_rps, scale=scale, max_duration_s=duration)
    options = ReplayOptions(
        mix=RouteMix.parse(mix),
        max_id=max_id,
        customers=customers,
        connections=connections,
        max_in_flight=max_in_flight,
        timeout_s=timeout,
        seed=seed,
    )
    _stderr(f"replaying {trace} against {url}: {schedule.duration_s:.1f} s, peak {schedule.max_rate:.1f} req/s")
    report = run_replay(schedule, url, options, trace=str(trace), progress=_stderr)
    if timeline is not None:
        write_timeline(report, timeline)
    typer.echo(report.model_dump_json(indent=2) if as_json else summary(report))


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main() -> None:
    """Run ``load`` alone (``python -m tmsops.loadgen_cli``), a tmsops error as one line and exit code 2."""
    try:
        app()
    except TmsopsError as error:
        _stderr(f"error: {error.message}")
        sys.exit(2)


if __name__ == "__main__":
    main()
