"""``GET /dashboard``: the timeline of experiments, their probe results and rollbacks, and resilience scores.

At the top, every recent experiment on one time axis: its run coloured by the verdict, the
fault in effect (from the injection to the confirmed rollback), the rollback and an abort
marked. Then one card per experiment: the fault and each steady-state probe on a timeline (a
green dot per passing check, a red cross per failing one), the HTTP probes' latency against
their limit, and the injections with their rollbacks. Services are listed with their
resilience score.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from chaos.journal import FINAL, ExperimentRecord, InjectionRecord, Journal, ProbeRecord
from chaos.safety import SafetyController
from chaos.score import service_score
from tmsops.dashboard import render_page
from tmsops.settings import ServicePorts

EXPERIMENTS_SHOWN = 20
COLORS = ("#2f6fdf", "#1b7f3b", "#7048e8", "#a15c00", "#0b7285", "#c2255c")

SCRIPT = """
const {h, table, clock, number, duration} = tmsops;
const fact = (value, label, cls) => h("div", {class: `fact ${cls || ""}`}, h("b", {}, value), h("span", {}, label));
const STATUS = {completed: ["#1b7f3b", "ok"], deviated: ["#a15c00", "warn"], aborted: ["#b3261e", "bad"],
  failed: ["#b3261e", "bad"], running: ["#2f6fdf", ""], created: ["#8a94a6", ""]};
const FAULT = "#b3261e", PASS = "#1b7f3b", FAIL = "#b3261e", ROLLBACK = "#1d2330";
const score = (v) => v === null || v === undefined ? "none yet" : number(v, 1);

function render(data) {
  const root = document.getElementById("root");
  root.replaceChildren();
  const stop = data.emergencyStop, limits = data.limits;
  root.append(h("div", {class: "facts"},
    stop.engaged ? fact("ENGAGED", `emergency stop by ${stop.by} at ${stop.at}`, "bad")
      : fact("armed", "emergency stop"),
    fact(`${number(limits.blastRadiusLimit)} %`, "blast radius limit"),
    fact(duration(limits.maxExperimentDuration), "longest experiment allowed"),
    fact(limits.autoRollback ? "on" : "off", "automatic rollback"),
    fact(data.experiments.length, "recent experiments")));
  if (!data.experiments.length) {
    root.append(h("div", {class: "empty-state"}, h("b", {}, "No experiment yet. "),
      "Create one with ", h("code", {}, "POST /experiments"), " (a steady-state hypothesis, a fault, a duration) ",
      "and run it with ", h("code", {}, "POST /experiments/{id}/start"), "; see the API docs. ",
      "Its timeline appears here."));
    return;
  }
  const overview = h("section", {class: "card", id: "timeline"}, h("h2", {}, "Experiments over time"));
  root.append(overview);
  const ordered = data.experiments.slice().reverse();
  tmsopsTimeline(overview, {title: "Each experiment's run (coloured by verdict), its fault in effect and its rollback",
    legend: [{band: true, color: STATUS.completed[0], label: "run: completed"},
      {band: true, color: STATUS.deviated[0], label: "deviated"},
      {band: true, color: STATUS.aborted[0], label: "aborted / failed"},
      {line: true, color: FAULT, label: "fault in effect"}, {shape: "ring", color: ROLLBACK, label: "rolled back"},
      {shape: "x", color: FAIL, label: "aborted"}],
    lanes: ordered.map((e) => ({label: `${e.name} · ${e.faultType}`, title: `${e.name}: ${e.faultType} on ${e.service}`,
      spans: runSpans(e, data.now), marks: endMarks(e)}))});
  const services = h("section", {class: "card"}, h("h2", {}, "Resilience by service"),
    h("div", {class: "meta"}, "Share of steady-state checks that held under faults, over the finished experiments "
      + "(100 = every check passed)."));
  services.append(table(["service", "resilience score", "finished experiments"],
    data.services.map((s) => [s.name, score(s.score), s.finished])));
  root.append(services);
  for (const e of data.experiments) root.append(experiment(e, data));
}

function runSpans(e, now) {
  const spans = [];
  if (e.startedAt) spans.push({from: e.startedAt, to: e.endedAt ?? now, color: (STATUS[e.status] || STATUS.created)[0],
    opacity: 0.45, title: `${e.status}${e.reason ? `: ${e.reason}` : ""}`});
  for (const i of e.injections) {
    if (i.injectedAt) spans.push({from: i.injectedAt, to: i.revertedAt ?? now, color: FAULT, thin: true, opacity: 1,
      title: `${e.faultType} in effect ${clock(i.injectedAt)}–${i.revertedAt ? clock(i.revertedAt) : "now"}`});
  }
  return spans;
}

function endMarks(e) {
  const marks = e.injections.filter((i) => i.revertedAt).map((i) => ({t: i.revertedAt, shape: "ring", color: ROLLBACK,
    title: `rolled back at ${clock(i.revertedAt)} (target says ${i.targetState || i.state})`}));
  if (e.endedAt && (e.status === "aborted" || e.status === "failed")) {
    marks.push({t: e.endedAt, shape: "x", color: FAIL, size: 7,
      title: `${e.status} at ${clock(e.endedAt)}: ${e.reason}`});
  }
  return marks;
}

function experiment(e, data) {
  const [, cls] = STATUS[e.status] || STATUS.created;
  const card = h("section", {class: "card", "data-experiment": e.id});
  card.append(h("div", {class: "head"}, h("h2", {}, e.name), h("span", {class: `badge ${cls}`}, e.status),
    h("span", {class: "meta"}, `${e.faultType} on ${e.service} · score ${score(e.score)} · ${e.id}`)));
  if (e.reason) card.append(h("div", {class: `meta ${cls}`}, e.reason));
  const faultLane = {label: "fault in effect", spans: runSpans({...e, startedAt: null}, data.now), marks: endMarks(e)};
  const lanes = [faultLane, ...e.probes.map((p) => ({label: `probe ${p.name}`, title: `${p.type} probe ${p.name}`,
    marks: p.results.map((r) => ({t: r.at, shape: r.ok ? "dot" : "x", color: r.ok ? PASS : FAIL, size: r.ok ? 5 : 6,
      title: `${clock(r.at)} ${r.phase}: ${r.ok ? "passed" : "FAILED"} — ${r.detail}`}))}))];
  const x = e.startedAt ? tmsops.padded(e.startedAt, e.endedAt ?? data.now) : undefined;
  tmsopsTimeline(card, {title: "Fault and steady-state checks (before, during and after the fault)", lanes, x,
    legend: [{line: true, color: FAULT, label: "fault in effect"}, {shape: "dot", color: PASS, label: "check passed"},
      {shape: "x", color: FAIL, label: "check failed"}, {shape: "ring", color: ROLLBACK, label: "rolled back"},
      {shape: "x", color: FAIL, label: "aborted"}],
    empty: "not started yet: no fault injected, no probe run"});
  const http = e.probes.filter((p) => p.type === "http" && p.results.some((r) => r.value !== null));
  if (http.length) {
    tmsopsChart(card, {title: "HTTP probes: response time against the limit", yLabel: "response time (ms)", height: 220,
      x, left: 230,
      spans: e.injections.filter((i) => i.injectedAt).map((i) => ({from: i.injectedAt, to: i.revertedAt ?? data.now,
        color: FAULT, label: "fault in effect"})),
      refs: http.filter((p) => p.maxLatencyMs).map((p) => ({v: p.maxLatencyMs, color: FAIL,
        label: `${p.name}: limit ${p.maxLatencyMs} ms`})),
      series: http.map((p, i) => ({name: p.name, color: data.colors[i % data.colors.length],
        points: p.results.map((r) => [r.at, r.value])})),
      markers: http.flatMap((p) => p.results.filter((r) => r.value !== null).map((r) => ({t: r.at, v: r.value,
        shape: r.ok ? "dot" : "x", color: r.ok ? PASS : FAIL, size: 5,
        title: `${clock(r.at)} ${r.phase}: ${r.detail}`})))});
  }
  card.append(h("h3", {}, "Injections and rollbacks"));
  card.append(e.injections.length
    ? table(["injected", "fault", "replicas", "rolled back", "target says", "revert attempts"],
      e.injections.map((i) => [
        i.injectedAt ? clock(i.injectedAt) : "not injected", i.faultId || i.state, i.replicas.join(", ") || "–",
        i.revertedAt ? clock(i.revertedAt) : "–", [i.targetState || i.state, i.state === "reverted" ? "ok" : "warn"],
        i.revertAttempts]))
    : h("div", {class: "meta"}, "nothing injected"));
  return card;
}
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
        "now": _ms(datetime.now(UTC)),
        "emergencyStop": {"engaged": bool(stop.get("engaged")), "at": stop.get("at"), "by": stop.get("by")},
        "limits": safety.policy.describe(),
        "colors": COLORS,
        "services": [
            {"name": name, "score": score, "finished": sum(record.service == name for record in finished)}
            for name, score in sorted(scores.items())
        ],
        "experiments": [_experiment(journal, record) for record in records],
    }


def render_dashboard(data: dict[str, Any], ports: ServicePorts) -> str:
    return render_page(
        "chaos",
        title="Chaos: safeguarded experiments",
        lead="Each experiment's fault, its steady-state checks before, during and after it, and its rollback; "
        "an experiment aborts and rolls back as soon as the steady state breaks.",
        data=data,
        script=SCRIPT,
        ports=ports,
    )


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
        "startedAt": _ms_or_none(record.started_at),
        "endedAt": _ms_or_none(record.ended_at),
        "fault": _fault_series(injections),
        "probes": _probe_series(journal.probes(record.id), record.spec),
        "injections": [
            {
                "state": item.state.value,
                "faultId": item.fault_id,
                "replicas": item.request.get("replicas", []),
                "requestedAt": _ms(item.requested_at),
                "injectedAt": _ms_or_none(item.injected_at),
                "revertedAt": _ms_or_none(item.reverted_at),
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


def _probe_series(probes: list[ProbeRecord], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Per probe: its results (``points``: [ms, 1 passed / 0 failed]) and, for HTTP, its latency limit."""
    declared = {probe.get("name"): probe for probe in (spec.get("steadyState") or {}).get("probes", [])}
    series: dict[str, dict[str, Any]] = {}
    for probe in probes:
        entry = series.setdefault(
            probe.probe,
            {
                "name": probe.probe,
                "type": probe.type,
                "maxLatencyMs": declared.get(probe.probe, {}).get("maxLatencyMs"),
                "points": [],
                "results": [],
            },
        )
        entry["points"].append([_ms(probe.at), 1 if probe.ok else 0])
        entry["results"].append(
            {"at": _ms(probe.at), "ok": probe.ok, "phase": probe.phase, "value": probe.value, "detail": probe.detail}
        )
    return list(series.values())


def _ms(moment: datetime) -> float:
    return moment.timestamp() * 1000


def _ms_or_none(moment: datetime | None) -> float | None:
    return _ms(moment) if moment else None
