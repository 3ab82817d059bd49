"""``GET /dashboard``: every change with its measured before and after, and the latest advice.

One chart per measure: indexes by the call-weighted read time of the statements they serve,
cache changes by the hit rate, resources changes by the CPU and memory requests; each change
a pair of bars (before, after) coloured by the verdict (kept, rolled back, failed). Then every
change in a table, and the last ranking of bottlenecks.

The page reads only the journal and the last ranking of bottlenecks (``GET
/analysis/bottlenecks`` refreshes it), so it answers at once even when an analysis would take
seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from actuators.optimizer.journal import Kind, Optimization, Status
from tmsops.dashboard import render_page
from tmsops.settings import ServicePorts

if TYPE_CHECKING:
    from actuators.optimizer.optimizer import Optimizer

CHANGES_SHOWN = 30
MI = 2**20

SCRIPT = """
const {h, table, clock, number} = tmsops;
const fact = (value, label, cls) => h("div", {class: `fact ${cls || ""}`}, h("b", {}, value), h("span", {}, label));
const VERDICT = {kept: ["#1b7f3b", "ok"], rolled_back: ["#d9480f", "warn"], failed: ["#b3261e", "bad"]};
const HOW = {
  index: "POST /optimization/database (or /auto-optimize) times the statements an index serves before and after "
    + "building it, and keeps it only when the read time falls",
  cache: "POST /optimization/cache measures the hit rate before and after a new maxmemory and eviction policy "
    + "(needs optimization.cache.redisUrl)",
  resources: "POST /auto-optimize with scope resources right-sizes CPU and memory requests from the usage seen"};

function render(data) {
  const root = document.getElementById("root");
  root.replaceChildren();
  const c = data.counts;
  root.append(h("div", {class: "facts"}, fact(c.kept, "kept", "ok"), fact(c.rolled_back, "rolled back"),
    fact(c.failed, "failed"), fact(c.dry_run, "dry runs (nothing changed)"), fact(c.in_progress, "in progress")));
  const measured = h("section", {class: "card", id: "measured"}, h("h2", {}, "Measured effect of each change"),
    h("div", {class: "meta"}, "Grey: measured before the change; coloured: after it, green when kept, orange when "
      + "rolled back (it did not help), red when it failed. Hover a bar for its value."));
  root.append(measured);
  const groups = new Map();
  for (const m of data.measured) {
    if (!groups.has(m.metric)) groups.set(m.metric, []);
    groups.get(m.metric).push(m);
  }
  if (!groups.size) {
    measured.append(h("div", {class: "empty-state"}, h("b", {}, "No measured change yet. "),
      "The optimizer measures every change before and after and keeps it only when it helps: ", HOW.index,
      ". Dry runs change nothing and are not charted."));
  }
  for (const [metric, items] of groups) {
    const first = items[0];
    tmsopsBars(measured, {title: `${first.kind_title}: ${metric}`, unit: first.unit, better: first.better,
      legend: [{solid: true, color: VERDICT.kept[0], label: "after: kept"},
        {solid: true, color: VERDICT.rolled_back[0], label: "after: rolled back"}],
      rows: items.map((m) => ({label: m.label, title: `${m.subject} — ${m.reason}`, before: m.before, after: m.after,
        color: (VERDICT[m.status] || ["#2f6fdf"])[0], status: m.status.replace("_", " "),
        statusClass: (VERDICT[m.status] || ["", ""])[1], change: m.change}))});
  }
  const missing = ["index", "cache", "resources"].filter((kind) => !data.measured.some((m) => m.kind === kind));
  if (groups.size && missing.length) {
    measured.append(h("div", {class: "meta"}, ...missing.map((kind) =>
      h("div", {}, h("b", {}, `No measured ${kind} change yet: `), `${HOW[kind]}.`))));
  }
  const changes = h("section", {class: "card", id: "changes"}, h("h2", {}, "Changes (newest first)"));
  changes.append(data.changes.length
    ? table(["time", "kind", "service", "subject", "status", "effect", "reason"], data.changes.map((x) => [
        clock(Date.parse(x.at)), x.kind, x.service, x.subject,
        h("span", {class: `badge ${x.css}`}, x.status.replace("_", " ")), x.effect, x.reason]))
    : h("div", {class: "empty-state"}, h("b", {}, "No change yet. "), "Plan one with a dry run: ",
        h("code", {}, 'POST /optimization/database {"dryRun": true}'), " (see API docs)."));
  root.append(changes);
  const advice = h("section", {class: "card", id: "advice"}, h("h2", {}, "Latest advice (bottlenecks, worst first)"));
  advice.append(data.advice.length
    ? table(["part", "service", "subject", "finding", "recommendation"], data.advice.map((a) => [
        a.part, a.service, a.subject, a.detail, a.recommendation ? h("code", {}, a.recommendation) : "–"]))
    : h("div", {class: "empty-state"}, h("b", {}, "No analysis yet. "), "Open ",
        h("a", {href: "/analysis/bottlenecks"}, "/analysis/bottlenecks"), " to rank the bottlenecks now."));
  root.append(advice);
}
"""


async def dashboard_data(optimizer: Optimizer) -> dict[str, Any]:
    entries = optimizer.journal.recent(limit=CHANGES_SHOWN)
    counts = optimizer._change_counts()
    return {
        "updated": datetime.now(UTC).isoformat(),
        "counts": counts.model_dump(),
        "measured": [item for entry in reversed(entries) for item in _measured(entry)],
        "changes": [_change(entry) for entry in entries],
        "advice": [item.model_dump() for item in optimizer.last_bottlenecks[:20]],
    }


def render_dashboard(data: dict[str, Any], ports: ServicePorts) -> str:
    return render_page(
        "optimizer",
        title="Optimizer: measured changes",
        lead="Every index, cache and resources change with its measured before and after, kept only when it "
        "helped; then the change log and the latest advice.",
        data=data,
        script=SCRIPT,
        ports=ports,
    )


def _figures(entry: Optimization) -> list[tuple[str, str, str, float, float]]:
    """(measure, unit, better, before, after) for each figure measured both before and after the change."""
    before, after = entry.before or {}, entry.after or {}
    if entry.kind == Kind.INDEX:
        pairs = [("read time, weighted by calls", "ms", "lower", before.get("weighted_ms"), after.get("weighted_ms"))]
    elif entry.kind == Kind.CACHE:
        pairs = [("hit rate", "%", "higher", _scaled(before.get("hit_rate"), 100), _scaled(after.get("hit_rate"), 100))]
    else:
        old, new = before.get("resources") or {}, after.get("resources") or {}
        pairs = [
            (measure, unit, "", _scaled(_field(old, name), factor), _scaled(_field(new, name), factor))
            for measure, unit, name, factor in (
                ("CPU request", "millicores", "cpu_request", 1000),
                ("memory request", "MiB", "memory_request", 1 / MI),
            )
        ]
    return [
        (measure, unit, better, float(old_value), float(new_value))
        for measure, unit, better, old_value, new_value in pairs
        if isinstance(old_value, int | float) and isinstance(new_value, int | float)
    ]


def _measured(entry: Optimization) -> list[dict[str, Any]]:
    if entry.status in (Status.DRY_RUN, Status.APPLYING):
        return []
    return [
        {
            "id": entry.id,
            "kind": entry.kind.value,
            "kind_title": {Kind.INDEX: "Indexes", Kind.CACHE: "Cache", Kind.RESOURCES: "Resources"}[entry.kind],
            "metric": f"{measure} ({unit})",
            "unit": unit,
            "better": better,
            "label": f"#{entry.id} {_short_subject(entry)}",
            "subject": entry.subject,
            "service": entry.service,
            "status": entry.status.value,
            "reason": entry.reason,
            "before": round(before, 3),
            "after": round(after, 3),
            "change": f"{(after - before) / before:+.0%}" if before else "",
            "values": [{"name": "before", "value": round(before, 3)}, {"name": "after", "value": round(after, 3)}],
        }
        for measure, unit, better, before, after in _figures(entry)
    ]


def _short_subject(entry: Optimization) -> str:
    if entry.kind == Kind.INDEX and entry.change.get("table"):
        return f"{entry.change['table']} ({', '.join(entry.change.get('columns', []))})"
    return entry.subject


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
    return "; ".join(
        f"{measure} {before:,.1f} → {after:,.1f} {unit}" for measure, unit, _, before, after in _figures(entry)
    )


def _field(resources: dict[str, Any], name: str) -> Any:
    camel = "".join(part.capitalize() if index else part for index, part in enumerate(name.split("_")))
    return resources.get(name, resources.get(camel))


def _scaled(value: Any, factor: float) -> float | None:
    return value * factor if isinstance(value, int | float) else None
