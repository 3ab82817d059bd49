"""``GET /dashboard``: the timeline of experiments, their probe results and rollbacks, and resilience scores.

Each experiment gets a chart: the fault in effect (1 from the injection to the confirmed
rollback) and each probe's result (1 passed, 0 failed) over time, and a table of its
injections and rollbacks. Services are listed with their resilience score.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from chaos.journal import FINAL, ExperimentRecord, InjectionRecord, Journal, ProbeRecord
from chaos.safety import SafetyController
from chaos.score import service_score

EXPERIMENTS_SHOWN = 20
COLORS = ("#2f6fdf", "#1b7f3b", "#7048e8", "#a15c00", "#0b7285", "#c2255c")

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tmsops chaos</title>
<link rel="stylesheet" href="/static/dashboard.css"><script src="/static/charts.js"></script></head>
<body><h1>tmsops chaos</h1>
<div class="meta" id="meta"></div>
<div class="card"><h2>resilience by service</h2><table id="services"></table></div>
<div id="experiments"></div>
<script id="data" type="application/json">{data}</script>
<script>
const data = JSON.parse(document.getElementById("data").textContent);
function add(parent, tag, text, cls) {{
  const node = document.createElement(tag);
  node.textContent = text ?? "";
  if (cls) node.className = cls;
  parent.appendChild(node);
  return node;
}}
function table(node, head, rows) {{
  const top = add(node, "tr");
  for (const h of head) add(top, "th", h);
  for (const r of rows) {{
    const row = add(node, "tr");
    for (const [text, cls] of r) add(row, "td", text, cls);
  }}
}}
const fmt = (s) => s ? new Date(s).toLocaleTimeString() : "";
const score = (v) => v === null ? "none" : v.toFixed(1);
const stop = data.emergencyStop;
const meta = document.getElementById("meta");
meta.textContent = (stop.engaged ? `EMERGENCY STOP ENGAGED by ${{stop.by}} at ${{stop.at}}` : "emergency stop armed")
  + ` \u00b7 blast radius limit ${{data.limits.blastRadiusLimit}} %`
  + ` \u00b7 max duration ${{data.limits.maxExperimentDuration}} s \u00b7 updated ${{data.updated}}`;
if (stop.engaged) meta.className = "meta bad";
table(document.getElementById("services"), ["service", "resilience score", "finished experiments"],
  data.services.map(s => [[s.name], [score(s.score)], [String(s.finished)]]));
const root = document.getElementById("experiments");
const statusClass = {{completed: "ok", deviated: "warn", aborted: "bad", failed: "bad", running: "warn"}};
for (const e of data.experiments) {{
  const card = add(root, "div", "", "card");
  card.dataset.experiment = e.id;
  add(card, "h2", `${{e.name}} \u2014 ${{e.faultType}} on ${{e.service}}`);
  const reason = e.reason ? `: ${{e.reason}}` : "";
  add(card, "div", `${{e.status}}${{reason}} \u00b7 score ${{score(e.score)}} \u00b7 ${{e.id}}`,
      "meta " + (statusClass[e.status] || ""));
  const series = [{{name: "fault in effect", color: "#b3261e", points: e.fault, step: true}}];
  e.probes.forEach((p, i) => series.push(
    {{name: p.name, color: data.colors[i % data.colors.length], points: p.points, step: true}}));
  tmsopsChart(card, {{title: "fault (1 = in effect) and probes (1 = passed)", series}});
  table(add(card, "table"), ["injected", "fault", "replicas", "rolled back", "target says", "attempts"],
    e.injections.map(i => [
      [fmt(i.injectedAt || i.requestedAt)], [i.faultId || i.state], [i.replicas.join(", ")], [fmt(i.revertedAt)],
      [i.targetState || i.state, i.state === "reverted" ? "ok" : "warn"], [String(i.revertAttempts)]]));
}}
if (!data.experiments.length) add(root, "div", "no experiment yet", "card");
</script></body></html>
"""


def service_scores(journal: Journal) -> dict[str, float | None]:
    """Each service's resilience score over its finished experiments."""
    finished: dict[str, list[tuple[float | None, float]]] = {}
    for record in journal.experiments(status=[status.value for status in FINAL], limit=100_000):
        finished.setdefault(record.service, []).append((record.score, float(record.spec.get("weight", 1.0))))
    return {service: service_score(scores) for service, scores in finished.items()}


def dashboard_data(journal: Journal, safety: SafetyController) -> dict[str, Any]:
    records = journal.experiments(limit=EXPERIMENTS_SHOWN)
    finished = journal.experiments(status=[status.value for status in FINAL], limit=100_000)
    scores = service_scores(journal)
    stop = journal.read_state("emergency_stop") or {}
    return {
        "updated": datetime.now(UTC).strftime("%H:%M:%S UTC"),
        "emergencyStop": {"engaged": bool(stop.get("engaged")), "at": stop.get("at"), "by": stop.get("by")},
        "limits": safety.policy.describe(),
        "colors": COLORS,
        "services": [
            {"name": name, "score": score, "finished": sum(record.service == name for record in finished)}
            for name, score in sorted(scores.items())
        ],
        "experiments": [_experiment(journal, record) for record in records],
    }


def _experiment(journal: Journal, record: ExperimentRecord) -> dict[str, Any]:
    injections = journal.injections(record.id)
    return {
        "id": record.id,
        "name": record.name,
        "kind": record.kind,
        "service": record.service,
        "faultType": record.fault_type,
        "status": record.status.value,
        "reason": record.reason,
        "score": record.score,
        "createdAt": record.created_at.isoformat(),
        "fault": _fault_series(injections),
        "probes": _probe_series(journal.probes(record.id)),
        "injections": [
            {
                "state": item.state.value,
                "faultId": item.fault_id,
                "replicas": item.request.get("replicas", []),
                "requestedAt": item.requested_at.isoformat(),
                "injectedAt": _iso(item.injected_at),
                "revertedAt": _iso(item.reverted_at),
                "targetState": item.target_state,
                "revertAttempts": item.revert_attempts,
            }
            for item in injections
        ],
    }


def _fault_series(injections: list[InjectionRecord]) -> list[list[float]]:
    points: list[list[float]] = []
    for item in injections:
        if item.injected_at is None:
            continue
        points.append([_ms(item.injected_at), 1])
        end = item.reverted_at or datetime.now(UTC)
        points.append([_ms(end), 0 if item.reverted_at else 1])
    return points


def _probe_series(probes: list[ProbeRecord]) -> list[dict[str, Any]]:
    series: dict[str, list[list[float]]] = {}
    for probe in probes:
        series.setdefault(probe.probe, []).append([_ms(probe.at), 1 if probe.ok else 0])
    return [{"name": name, "points": points} for name, points in series.items()]


def render_dashboard(data: dict[str, Any]) -> str:
    return PAGE.format(data=json.dumps(data).replace("</", "<\\/"))


def _ms(moment: datetime) -> float:
    return moment.timestamp() * 1000


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
