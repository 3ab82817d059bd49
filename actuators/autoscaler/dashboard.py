"""``GET /dashboard``: per service, the forecast band against actual demand, replicas and decisions."""

from __future__ import annotations

import html
import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actuators.autoscaler.loop import Autoscaler

DECISIONS_SHOWN = 20

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tmsops autoscaler</title>
<link rel="stylesheet" href="/static/dashboard.css"><script src="/static/charts.js"></script></head>
<body><h1>tmsops autoscaler</h1>
<div class="meta">mode <b>{mode}</b> &middot; model {model} &middot; every {interval} s &middot; updated {updated}
&middot; <a href="/dashboard">refresh</a> &middot; <a href="/docs">API</a></div>
<div id="services"></div>
<script id="data" type="application/json">{data}</script>
<script>
const data = JSON.parse(document.getElementById("data").textContent);
const root = document.getElementById("services");
for (const s of data.services) {{
  const card = document.createElement("div"); card.className = "card"; card.dataset.service = s.name;
  card.innerHTML = `<h2>${{s.name}}</h2><div class="meta">${{s.summary}}</div>`;
  root.appendChild(card);
  tmsopsChart(card, {{title: "demand (requests/s): actual and forecast p10..p90", series: [
    {{name: "actual", color: "#2f6fdf", points: s.demand}},
    {{name: "forecast p50", color: "#d9480f", points: s.forecast_p50, band: s.forecast_band}}]}});
  tmsopsChart(card, {{title: "replicas: running and recommended", series: [
    {{name: "running", color: "#1b7f3b", points: s.replicas, step: true}},
    {{name: "recommended", color: "#7048e8", points: s.recommended, step: true}}]}});
  const rows = s.decisions.map(d => `<tr><td>${{new Date(d.at).toLocaleTimeString()}}</td>`
    + `<td>${{d.current}} &rarr; ${{d.desired}}</td>`
    + `<td class="${{d.applied ? "ok" : "warn"}}">${{d.applied ? "applied" : "not applied"}}</td>`
    + `<td>${{d.reason}}</td></tr>`).join("");
  const head = "<tr><th>time</th><th>replicas</th><th></th><th>reason</th></tr>";
  card.insertAdjacentHTML("beforeend", `<table>${{head}}${{rows}}</table>`);
}}
if (!data.services.length) root.innerHTML = '<div class="card">no service observed yet</div>';
</script></body></html>
"""


def dashboard_data(scaler: Autoscaler) -> dict[str, Any]:
    records = scaler.store.recent(limit=2000)
    services = []
    for name, state in sorted(scaler.services.items()):
        actuals = list(state.actuals)
        own = [record for record in records if record.service == name]
        decision = state.decision
        services.append(
            {
                "name": name,
                "summary": html.escape(decision.reason if decision else "no decision yet"),
                "demand": [[_ms(item["at"]), item["demand"]] for item in actuals if item["demand"] is not None],
                "replicas": [[_ms(item["at"]), item["replicas"]] for item in actuals],
                "recommended": [[record.at.timestamp() * 1000, record.desired] for record in reversed(own)],
                **_forecast_series(state),
                "decisions": [
                    {
                        "at": record.at.isoformat(),
                        "current": record.current,
                        "desired": record.desired,
                        "applied": record.applied,
                        "reason": html.escape(record.reason),
                    }
                    for record in own
                    if record.desired != record.current or record.source == "api"
                ][:DECISIONS_SHOWN],
            }
        )
    return {
        "mode": scaler.settings.scaling.mode,
        "model_version": scaler.model.version,
        "model_error": scaler.model.error,
        "interval_s": scaler.config.interval_s,
        "services": services,
    }


def render_dashboard(data: dict[str, Any]) -> str:
    model = f"version {data['model_version']}" if data["model_version"] else "not used yet"
    if data["model_error"]:
        model = f"unavailable ({data['model_error']}): reactive only"
    return PAGE.format(
        mode=html.escape(data["mode"]),
        model=html.escape(model),
        interval=data["interval_s"],
        updated=datetime.now(UTC).strftime("%H:%M:%S UTC"),
        data=json.dumps(data).replace("</", "<\\/"),
    )


def _forecast_series(state: Any) -> dict[str, list[list[float]]]:
    forecast = state.forecast
    if forecast is None:
        return {"forecast_p50": [], "forecast_band": []}
    origin_ms = (time.time() - (time.monotonic() - forecast.at)) * 1000
    stamps = [origin_ms + forecast.step_s * 1000 * (index + 1) for index in range(len(forecast.p50))]
    return {
        "forecast_p50": [[stamp, value] for stamp, value in zip(stamps, forecast.p50, strict=True)],
        "forecast_band": [
            [stamp, low, high] for stamp, low, high in zip(stamps, forecast.p10, forecast.p90, strict=True)
        ],
    }


def _ms(epoch_s: float) -> float:
    return epoch_s * 1000
