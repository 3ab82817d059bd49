"""``GET /dashboard``: per service, the forecast band against actual demand, replicas and decisions.

For each service: demand as observed every interval against the forecast (p50 and the p10..p90
band; left of "now" each step as it was forecast one step earlier, right of it the latest
forecast), the running and the recommended replicas with every scaling decision marked (its
reason on hover and in the table), and CPU utilisation against the scale-up and scale-down
thresholds. The JSON form (``Accept: application/json``) is the data the page draws.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from actuators.autoscaler.policy import ForecastView
from tmsops.dashboard import render_page
from tmsops.settings import ServicePorts

if TYPE_CHECKING:
    from actuators.autoscaler.loop import Autoscaler, ServiceState
    from actuators.autoscaler.records import DecisionRecord

DECISIONS_KEPT = 200

SCRIPT = """
const {h, table, clock, number, duration} = tmsops;
const fact = (value, label, cls) => h("div", {class: `fact ${cls || ""}`}, h("b", {}, value), h("span", {}, label));
const COLORS = {demand: "#2f6fdf", forecast: "#d9480f", running: "#1b7f3b", recommended: "#7048e8", cpu: "#0b7285"};

function render(data) {
  const root = document.getElementById("root");
  root.replaceChildren();
  const model = data.model_error ? ["reactive only", `forecasts unavailable: ${data.model_error}`, "bad"]
    : data.model_version ? [`version ${data.model_version}`, "forecaster in use"]
    : ["not yet", "no forecast asked for yet"];
  root.append(h("div", {class: "facts"},
    fact(data.mode, data.mode === "forecastAndScale" ? "decides and scales" : "recommends only: scales nothing"),
    fact(`every ${number(data.interval_s)} s`, "a decision per service"),
    fact(duration(data.forecast_step_s), "forecast step"),
    fact(...model),
    fact(`${data.min_replicas}–${data.max_replicas}`, "replicas the policy allows (within a service's own)")));
  if (!data.services.length) {
    root.append(h("div", {class: "empty-state"}, h("b", {}, "No service observed yet. "),
      `The autoscaler observes the target's services every ${number(data.interval_s)} s; if none appears, `,
      "check /health and the target settings."));
    return;
  }
  for (const s of data.services) root.append(service(s, data));
}

function service(s, data) {
  const card = h("section", {class: "card", "data-service": s.name});
  const replicas = s.replicas.length ? s.replicas[s.replicas.length - 1][1] : null;
  const demand = s.demand.length ? s.demand[s.demand.length - 1][1] : null;
  card.append(h("div", {class: "head"}, h("h2", {}, s.name),
    h("span", {class: "badge"}, `${replicas ?? "?"} ${replicas === 1 ? "replica" : "replicas"} running`),
    h("span", {class: "badge"}, `demand ${number(demand)} requests/s`),
    h("span", {class: "badge"}, `${s.min_replicas}–${s.max_replicas} replicas allowed`)));
  card.append(h("div", {class: "meta"}, `Last decision: ${s.summary}`));
  const times = [...s.demand, ...s.replicas].map(([t]) => t);
  const forecast = s.forecast_history_p50.concat(s.forecast_p50);
  const band = s.forecast_history_band.concat(s.forecast_band);
  const end = Math.max(data.now, ...forecast.map(([t]) => t));
  const x = times.length ? [Math.min(...times), end] : undefined;
  const ahead = s.forecast_p50.length;
  tmsopsChart(card, {
    title: "Demand: actual against the forecast", yLabel: "requests/s", x, now: data.now,
    series: [
      {name: "forecast p50", bandName: "forecast p10–p90", color: COLORS.forecast, points: forecast, band},
      {name: "actual demand", color: COLORS.demand, points: s.demand, width: 2.5}],
    empty: `no demand measured yet — the autoscaler observes every ${number(data.interval_s)} s`});
  card.append(h("div", {class: "meta"}, s.forecast_note
    ? `No forecast: ${s.forecast_note}.`
    : `Left of "now": each forecast step as forecast one step (${duration(data.forecast_step_s)}) earlier; `
      + `right of it: the latest forecast, ${ahead} steps ahead.`));
  const changes = s.decisions.filter((d) => d.current !== d.desired);
  const markers = changes.map((d) => ({t: d.at_ms, v: d.desired, shape: d.desired > d.current ? "up" : "down",
    color: d.error ? "#b3261e" : d.applied ? "#2f6fdf" : "#8a94a6", size: 7,
    title: `${clock(d.at_ms)}  ${d.current} → ${d.desired} replicas (${status(d)[0]})\\n${d.reason}`}));
  tmsopsChart(card, {
    title: "Replicas: running, recommended, and each scaling decision (hover a triangle for its reason)",
    yLabel: "replicas", integer: true, x, now: data.now, height: 220,
    refs: [{v: s.max_replicas, label: `maxReplicas ${s.max_replicas}`},
      ...(s.min_replicas > 1 ? [{v: s.min_replicas, label: `minReplicas ${s.min_replicas}`}] : [])],
    series: [
      {name: "running", color: COLORS.running, points: s.replicas, step: true, width: 2.5},
      {name: "recommended", color: COLORS.recommended, points: s.recommended, step: true, dash: true}],
    markers, legend: [{shape: "up", color: "#2f6fdf", label: "decision applied"},
      {shape: "up", color: "#8a94a6", label: "recommended, not applied"},
      {shape: "up", color: "#b3261e", label: "failed"}],
    empty: `no replica count observed yet — the autoscaler observes every ${number(data.interval_s)} s`});
  tmsopsChart(card, {
    title: "CPU utilisation against the scaling thresholds", yLabel: "% of the CPU request", x, now: data.now,
    height: 200, series: [{name: "CPU utilisation", color: COLORS.cpu, points: s.cpu}],
    refs: [
      {v: data.thresholds.cpu_scale_up, label: `scale up above ${data.thresholds.cpu_scale_up} %`, color: "#b3261e"},
      {v: data.thresholds.cpu_scale_down, label: `scale down below ${data.thresholds.cpu_scale_down} %`,
        color: "#1b7f3b"}],
    empty: "no CPU usage reported by the target yet"});
  card.append(h("h3", {}, "Scaling decisions (newest first)"));
  if (!changes.length) {
    card.append(h("div", {class: "empty-state"}, h("b", {}, "No scaling decision yet. "),
      `The autoscaler decides every ${number(data.interval_s)} s; decisions that keep the count are not listed.`));
  } else {
    card.append(table(["time", "replicas", "outcome", "by", "HPA rule says", "forecast says", "reason"],
      changes.slice(0, 20).map((d) => [clock(d.at_ms), `${d.current} → ${d.desired}`, status(d), d.source,
        d.reactive ?? "–", d.predictive ?? "–", d.error ? `${d.reason} — error: ${d.error}` : d.reason])));
  }
  return card;
}

function status(d) {
  if (d.error) return ["failed", "bad"];
  return d.applied ? ["applied", "ok"] : ["recommended", "warn"];
}
"""


def dashboard_data(scaler: Autoscaler) -> dict[str, Any]:
    records = scaler.store.recent(limit=2000)
    wall_offset = time.time() - time.monotonic()
    config = scaler.config
    return {
        "mode": scaler.settings.scaling.mode,
        "model_version": scaler.model.version,
        "model_error": scaler.model.error,
        "interval_s": config.interval_s,
        "forecast_step_s": scaler.settings.scaling.forecast_step.total_seconds(),
        "min_replicas": config.min_replicas,
        "max_replicas": config.max_replicas,
        "thresholds": {"cpu_scale_up": config.cpu_scale_up, "cpu_scale_down": config.cpu_scale_down},
        "now": time.time() * 1000,
        "services": [
            _service(scaler, name, state, [record for record in records if record.service == name], wall_offset)
            for name, state in sorted(scaler.services.items())
        ],
    }


def render_dashboard(data: dict[str, Any], ports: ServicePorts) -> str:
    return render_page(
        "autoscaler",
        title="Autoscaler: forecast-driven scaling",
        lead="Per service: demand against the forecast band, replicas with every scaling decision, and CPU "
        "against the thresholds of the HPA rule.",
        data=data,
        script=SCRIPT,
        ports=ports,
        refresh_s=min(max(data["interval_s"], 5), 60),
    )


def _service(
    scaler: Autoscaler, name: str, state: ServiceState, own: list[DecisionRecord], wall_offset: float
) -> dict[str, Any]:
    actuals = list(state.actuals)
    decision = state.decision
    latest, history = _forecasts(state, wall_offset)
    low, high = state.bounds or (scaler.config.min_replicas, scaler.config.max_replicas)
    return {
        "name": name,
        "min_replicas": low,
        "max_replicas": high,
        "summary": decision.reason if decision else "none yet",
        "demand": [[_ms(item["at"]), item["demand"]] for item in actuals if item["demand"] is not None],
        "replicas": [[_ms(item["at"]), item["replicas"]] for item in actuals],
        "cpu": [[_ms(item["at"]), item["cpu"]] for item in actuals if item.get("cpu") is not None],
        "recommended": [[_ms(record.at.timestamp()), record.desired] for record in reversed(own)],
        **latest,
        **history,
        "forecast_note": scaler.forecast_problem(state),
        "decisions": [_decision(record) for record in own if _changes(record)][:DECISIONS_KEPT],
    }


def _changes(record: DecisionRecord) -> bool:
    """A decision worth listing: one that changes the count, or one asked for through the API."""
    return record.desired != record.current or record.source == "api"


def _decision(record: DecisionRecord) -> dict[str, Any]:
    return {
        "at": record.at.isoformat(),
        "at_ms": _ms(record.at.timestamp()),
        "source": record.source,
        "current": record.current,
        "desired": record.desired,
        "reactive": record.reactive,
        "predictive": record.predictive,
        "applied": record.applied,
        "error": record.error,
        "reason": record.reason,
    }


def _forecasts(state: ServiceState, wall_offset: float) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """The latest forecast in full, and each forecast's first step: what was expected one step ahead.

    A forecast value is drawn when in its step it is the demand (the middle, for a step's mean).
    """
    history: dict[str, list[Any]] = {"forecast_history_p50": [], "forecast_history_band": []}
    for forecast in state.forecasts:
        if forecast is state.forecast:
            continue
        stamp = _stamps(forecast, wall_offset)[0]
        history["forecast_history_p50"].append([stamp, forecast.p50[0]])
        history["forecast_history_band"].append([stamp, forecast.p10[0], forecast.p90[0]])
    latest: dict[str, list[Any]] = {"forecast_p50": [], "forecast_band": []}
    if state.forecast is not None:
        stamps = _stamps(state.forecast, wall_offset)
        latest["forecast_p50"] = [[stamp, value] for stamp, value in zip(stamps, state.forecast.p50, strict=True)]
        latest["forecast_band"] = [
            [stamp, low, high] for stamp, low, high in zip(stamps, state.forecast.p10, state.forecast.p90, strict=True)
        ]
    return latest, history


def _stamps(forecast: ForecastView, wall_offset: float) -> list[float]:
    return [_ms(forecast.value_time(step) + wall_offset) for step in range(1, len(forecast.p50) + 1)]


def _ms(epoch_s: float) -> float:
    return epoch_s * 1000
