"""``GET /dashboard``: every change with its measured before and after, and the latest advice.

The page reads only the journal and the last ranking of bottlenecks (``GET
/analysis/bottlenecks`` refreshes it), so it answers at once even when an analysis would take
seconds.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from actuators.optimizer.journal import Kind, Optimization

if TYPE_CHECKING:
    from actuators.optimizer.optimizer import Optimizer

CHANGES_SHOWN = 30

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tmsops optimizer</title>
<link rel="stylesheet" href="/static/dashboard.css"><script src="/static/charts.js"></script></head>
<body><h1>tmsops optimizer</h1>
<div class="meta">{counts} &middot; updated {updated} &middot; <a href="/dashboard">refresh</a>
&middot; <a href="/recommendations">recommendations</a> &middot; <a href="/docs">API</a></div>
<div class="card" id="measured"><h2>measured effect of each change</h2></div>
<div class="card" id="changes"><h2>changes</h2></div>
<div class="card" id="advice"><h2>latest advice</h2></div>
<script id="data" type="application/json">{data}</script>
<script>
const data = JSON.parse(document.getElementById("data").textContent);
const entities = {{"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}};
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => entities[c]);
tmsopsBars(document.getElementById("measured"), {{title: data.measure_title, groups: data.measured}});
const rows = data.changes.map(c => `<tr><td>${{new Date(c.at).toLocaleString()}}</td><td>${{esc(c.kind)}}</td>`
  + `<td>${{esc(c.service)}}</td><td>${{esc(c.subject)}}</td><td class="${{c.css}}">${{esc(c.status)}}</td>`
  + `<td>${{esc(c.effect)}}</td><td>${{esc(c.reason)}}</td></tr>`).join("");
document.getElementById("changes").insertAdjacentHTML("beforeend", data.changes.length
  ? "<table><tr><th>time</th><th>kind</th><th>service</th><th>subject</th><th>status</th>"
    + `<th>effect</th><th>reason</th></tr>${{rows}}</table>`
  : "<div class='meta'>no change yet</div>");
const advice = data.advice.map(a => `<tr><td>${{esc(a.part)}}</td><td>${{esc(a.service)}}</td>`
  + `<td>${{esc(a.subject)}}</td>`
  + `<td>${{esc(a.detail)}}</td><td><code>${{esc(a.recommendation)}}</code></td></tr>`).join("");
document.getElementById("advice").insertAdjacentHTML("beforeend", data.advice.length
  ? "<table><tr><th>part</th><th>service</th><th>subject</th><th>finding</th><th>recommendation</th></tr>"
    + `${{advice}}</table>`
  : "<div class='meta'>no analysis yet: open <a href='/analysis/bottlenecks'>/analysis/bottlenecks</a></div>");
</script></body></html>
"""


async def dashboard_data(optimizer: Optimizer) -> dict[str, Any]:
    entries = optimizer.journal.recent(limit=CHANGES_SHOWN)
    counts = optimizer._change_counts()
    return {
        "updated": datetime.now(UTC).isoformat(),
        "counts": counts.model_dump(),
        "measure_title": "before and after (index: read time, ms; cache: hit rate, %; resources: requested)",
        "measured": [group for entry in reversed(entries) if (group := _measured(entry)) is not None],
        "changes": [_change(entry) for entry in entries],
        "advice": [item.model_dump() for item in optimizer.last_bottlenecks[:20]],
    }


def render_dashboard(data: dict[str, Any]) -> str:
    counts = data["counts"]
    summary = (
        ", ".join(f"{value} {name.replace('_', ' ')}" for name, value in counts.items() if value) or "no change yet"
    )
    payload = json.dumps(data).replace("</", "<\\/")
    return PAGE.format(counts=html.escape(summary), updated=html.escape(data["updated"][:19]), data=payload)


def _before_after(entry: Optimization) -> tuple[float, float] | None:
    """The measured figure before and after (index: read time, ms; cache: hit rate), when both exist."""
    key = {Kind.INDEX: "weighted_ms", Kind.CACHE: "hit_rate"}.get(entry.kind)
    before, after = (entry.before or {}).get(key or ""), (entry.after or {}).get(key or "")
    if not isinstance(before, int | float) or not isinstance(after, int | float):
        return None
    return float(before), float(after)


def _measured(entry: Optimization) -> dict[str, Any] | None:
    figures = _before_after(entry)
    if figures is None:
        return None
    scale = 100.0 if entry.kind == Kind.CACHE else 1.0
    return {
        "label": f"#{entry.id} {entry.subject}",
        "status": entry.status.value,
        "values": [
            {"name": "before", "value": round(figures[0] * scale, 3)},
            {"name": "after", "value": round(figures[1] * scale, 3)},
        ],
    }


def _change(entry: Optimization) -> dict[str, Any]:
    css = {"kept": "ok", "rolled_back": "warn", "failed": "bad"}.get(entry.status.value, "")
    return {
        "id": entry.id,
        "at": entry.created_at.isoformat(),
        "kind": entry.kind.value,
        "service": entry.service,
        "subject": entry.subject,
        "status": entry.status.value,
        "css": css,
        "effect": _effect(entry),
        "reason": entry.reason,
    }


def _effect(entry: Optimization) -> str:
    figures = _before_after(entry)
    if figures is None:
        return ""
    if entry.kind == Kind.INDEX:
        return f"read time {figures[0]:.1f} -> {figures[1]:.1f} ms"
    return f"hit rate {figures[0]:.1%} -> {figures[1]:.1%}"
