// tmsops dashboards: hand-written SVG charts and page helpers. No dependencies, nothing from the network
// but this service's own /dashboard. Every chart's <svg class="chart"> carries data-points="N" (0 = empty).
//   tmsopsChart(parent, {title, yLabel, series: [{name, color, points: [[ms, v]], band: [[ms, lo, hi]], step, dash}],
//                        markers: [{t, v, color, shape: up|down|dot|ring|x, title}], refs: [{v, label, color}],
//                        spans: [{from, to, label, color}], now, x: [t0, t1], integer, legend: [...], empty})
//   tmsopsTimeline(parent, {title, lanes: [{label, title, spans: [{from, to, color, title}], marks: [{t, color,
//                           shape, title}]}], legend, empty})
//   tmsopsBars(parent, {title, unit, better: lower|higher, rows: [{label, before, after, color, status, title}]})
//   tmsops.live(render): render the page's embedded JSON now, then the service's JSON every refresh interval.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 960, PAD = {left: 70, right: 20, top: 14, bottom: 46};
  let clipCount = 0;

  function svg(name, attrs, parent, text) {
    const node = document.createElementNS(NS, name);
    for (const [key, value] of Object.entries(attrs || {})) if (value !== undefined) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  // An HTML element: h("td", {class: "ok"}, "text", childNode, ...); strings are text, never HTML.
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("data-") || key === "title" || key === "href" || key === "role") node.setAttribute(key, value);
      else node[key === "class" ? "className" : key] = value;
    }
    for (const child of children.flat()) {
      if (child !== undefined && child !== null) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function table(head, rows, cls) {
    return h("table", {class: cls}, h("thead", {}, h("tr", {}, head.map((cell) => h("th", {}, cell)))),
      h("tbody", {}, rows.map((row) => h("tr", {}, row.map((cell) =>
        cell instanceof Node ? h("td", {}, cell) : Array.isArray(cell) ? h("td", {class: cell[1]}, cell[0])
          : h("td", {}, cell))))));
  }

  const pad2 = (n) => String(n).padStart(2, "0");
  function clock(ms, seconds = true) {
    const d = new Date(ms);
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}` + (seconds ? `:${pad2(d.getSeconds())}` : "");
  }
  function number(v, digits) {
    if (v === null || v === undefined || !Number.isFinite(v)) return "–";
    const size = Math.abs(v);
    const places = digits ?? (size >= 100 || Number.isInteger(v) ? 0 : size >= 10 ? 1 : 2);
    return v.toLocaleString("en", {maximumFractionDigits: places, minimumFractionDigits: 0});
  }
  function duration(seconds) {
    if (!Number.isFinite(seconds)) return "–";
    if (seconds < 90) return `${number(seconds, 1)} s`;
    return seconds < 5400 ? `${number(seconds / 60, 1)} min` : `${number(seconds / 3600, 1)} h`;
  }

  function niceTicks(low, high, count, integer) {
    const raw = (high - low) / count || 1, magnitude = 10 ** Math.floor(Math.log10(raw)), norm = raw / magnitude;
    let step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * magnitude;
    if (integer) step = Math.max(1, Math.round(step));
    const ticks = [];
    for (let v = Math.floor(low / step) * step; v <= high + step * 0.999; v += step) ticks.push(+v.toPrecision(12));
    return ticks;
  }

  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
  function timeTicks(t0, t1) {
    const step = 1000 * (TIME_STEPS.find((s) => (t1 - t0) / (s * 1000) <= 7) || 604800);
    const offset = -new Date(t0).getTimezoneOffset() * 60000;  // align ticks on local hours and minutes
    const ticks = [];
    for (let t = Math.ceil((t0 + offset) / step) * step - offset; t <= t1; t += step) ticks.push(t);
    return {ticks, seconds: step < 60000};
  }

  function legend(parent, items) {
    const box = h("div", {class: "legend"});
    for (const item of items) {
      const key = svg("svg", {width: 26, height: 12, class: "key"});
      if (item.band || item.solid) {
        svg("rect", {x: 1, y: 1, width: 24, height: 10, fill: item.color, "fill-opacity": item.solid ? 1 : 0.22}, key);
      }
      if (item.line) svg("line", {x1: 1, x2: 25, y1: 6, y2: 6, stroke: item.color, "stroke-width": 2.5,
        "stroke-dasharray": item.dash ? "5 3" : undefined}, key);
      if (item.shape) mark(key, 13, 6, item.shape, item.color, 5);
      box.append(h("span", {class: "item"}, key, item.label));
    }
    parent.append(box);
  }

  function mark(parent, x, y, shape, color, size = 6) {
    const s = size;
    const paths = {up: `M${x},${y - s}L${x + s},${y + s * 0.8}L${x - s},${y + s * 0.8}Z`,
      down: `M${x},${y + s}L${x + s},${y - s * 0.8}L${x - s},${y - s * 0.8}Z`,
      x: `M${x - s},${y - s}L${x + s},${y + s}M${x - s},${y + s}L${x + s},${y - s}`};
    if (shape in paths) {
      return svg("path", {d: paths[shape], fill: shape === "x" ? "none" : color, stroke: color,
        "stroke-width": shape === "x" ? 2.5 : 1, class: "mark"}, parent);
    }
    return svg("circle", {cx: x, cy: y, r: s * 0.75, fill: shape === "ring" ? "#fff" : color, stroke: color,
      "stroke-width": 2, class: "mark"}, parent);
  }

  // A figure with a title, an optional legend and an <svg> sized W x height, carrying data-points.
  function figure(parent, spec, height, count) {
    const fig = h("figure", {class: "figure"}, h("figcaption", {}, spec.title || ""));
    if (count && spec.legendItems && spec.legendItems.length) legend(fig, spec.legendItems);
    const root = svg("svg", {viewBox: `0 0 ${W} ${height}`, class: "chart", role: "img",
      "aria-label": spec.title || "", "data-points": count}, fig);
    if (!count) {
      svg("rect", {x: 1, y: 1, width: W - 2, height: height - 2, class: "empty-box"}, root);
      svg("text", {x: W / 2, y: height / 2 + 5, "text-anchor": "middle", class: "empty"}, root,
        spec.empty || "no data yet");
    }
    parent.append(fig);
    return root;
  }

  function xAxis(root, x, t0, t1, top, bottom, left, right, label) {
    const {ticks, seconds} = timeTicks(t0, t1);
    for (const t of ticks) {
      svg("line", {x1: x(t), x2: x(t), y1: top, y2: bottom, class: "grid"}, root);
      svg("text", {x: x(t), y: bottom + 16, "text-anchor": "middle", class: "axis"}, root, clock(t, seconds));
    }
    svg("line", {x1: left, x2: right, y1: bottom, y2: bottom, class: "axis-line"}, root);
    svg("text", {x: (left + right) / 2, y: bottom + 36, "text-anchor": "middle", class: "axis-label"}, root,
      label || "time (this browser's clock)");
  }

  function chart(parent, spec) {
    const height = spec.height || 260;
    const series = spec.series || [], markers = spec.markers || [];
    const times = [], values = [];
    let count = markers.length;
    for (const s of series) {
      for (const [t, v] of s.points || []) { if (v !== null) { times.push(t); values.push(v); count++; } }
      for (const [t, low, high] of s.band || []) { times.push(t); values.push(low, high); count++; }
    }
    for (const m of markers) { times.push(m.t); values.push(m.v); }
    for (const r of spec.refs || []) values.push(r.v);
    const items = series.filter((s) => s.name).flatMap((s) => [
      ...(s.band && s.band.length ? [{band: true, color: s.color, label: s.bandName || `${s.name} p10–p90`}] : []),
      ...(s.points && s.points.length ? [{line: true, dash: s.dash, color: s.color, label: s.name}] : [])]);
    const root = figure(parent, {...spec, legendItems: items.concat(spec.legend || [])}, height, count);
    if (!count) return root;
    let [t0, t1] = spec.x || [Math.min(...times), Math.max(...times)];
    if (t1 - t0 < 1000) { t0 -= 30000; t1 += 30000; }
    const finite = values.filter(Number.isFinite);
    let low = finite.length ? Math.min(...finite) : 0, high = finite.length ? Math.max(...finite) : 1;
    if (spec.zero !== false) low = Math.min(low, 0);
    if (high - low < (spec.integer ? 2 : 1e-9)) high = low + (spec.integer ? 2 : 1);
    const yTicks = niceTicks(low, high + (high - low) * 0.05, 4, spec.integer);
    low = yTicks[0]; high = yTicks[yTicks.length - 1];
    const left = spec.left || PAD.left, right = W - PAD.right, top = PAD.top, bottom = height - PAD.bottom;
    const x = (t) => left + (t - t0) / (t1 - t0) * (right - left);
    const y = (v) => bottom - (v - low) / (high - low) * (bottom - top);
    for (const v of yTicks) {
      svg("line", {x1: left, x2: right, y1: y(v), y2: y(v), class: "grid"}, root);
      svg("text", {x: left - 8, y: y(v) + 4, "text-anchor": "end", class: "axis"}, root, number(v));
    }
    svg("text", {transform: `translate(${left - 54} ${(top + bottom) / 2}) rotate(-90)`, "text-anchor": "middle",
      class: "axis-label"}, root, spec.yLabel || "");
    xAxis(root, x, t0, t1, top, bottom, left, right, spec.xLabel);
    const clip = `tmsops-clip-${++clipCount}`;
    svg("rect", {x: left, y: top - 8, width: right - left, height: bottom - top + 16},
      svg("clipPath", {id: clip}, svg("defs", {}, root)));
    const plot = svg("g", {"clip-path": `url(#${clip})`}, root);
    for (const span of spec.spans || []) {
      const from = x(span.from), to = x(span.to ?? t1);
      const area = svg("rect", {x: from, y: top, width: Math.max(2, to - from), height: bottom - top,
        fill: span.color || "#b3261e", "fill-opacity": 0.1, class: "span"}, plot);
      if (span.title) svg("title", {}, area, span.title);
      if (span.label) {
        svg("text", {x: from + 4, y: top + 12, class: "span-label", fill: span.color || "#b3261e"}, plot, span.label);
      }
    }
    let previous = {y: -Infinity, left: true};  // a label too close to the one above it goes to the other end
    for (const r of (spec.refs || []).slice().sort((a, b) => b.v - a.v)) {
      const at = y(r.v), onLeft = at - previous.y < 16 && !previous.left;
      svg("line", {x1: left, x2: right, y1: at, y2: at, stroke: r.color || "#6b7385", "stroke-dasharray": "6 4",
        class: "ref"}, plot);
      svg("text", {x: onLeft ? left + 6 : right - 40, y: at - 4, "text-anchor": onLeft ? "start" : "end",
        class: "ref-label", fill: r.color || "#6b7385"}, plot, r.label);
      previous = {y: at, left: onLeft};
    }
    if (spec.now !== undefined && spec.now >= t0 && spec.now <= t1) {
      const at = x(spec.now), end = at > right - 36;
      svg("line", {x1: at, x2: at, y1: top, y2: bottom, class: "now"}, plot);
      svg("text", {x: end ? at - 4 : at + 4, y: top + 10, "text-anchor": end ? "end" : "start", class: "ref-label",
        fill: "#1d2330"}, plot, "now");
    }
    for (const s of series) {
      if (s.band && s.band.length) {
        const upper = s.band.map(([t, , hi]) => `${x(t)},${y(hi)}`);
        const lower = s.band.slice().reverse().map(([t, lo]) => `${x(t)},${y(lo)}`);
        svg("polygon", {points: upper.concat(lower).join(" "), fill: s.color, "fill-opacity": 0.2, class: "band",
          "data-series": s.bandName || s.name, "data-points": s.band.length}, plot);
      }
      if (s.points && s.points.length) {
        svg("path", {d: line(s.points, x, y, s.step), stroke: s.color, fill: "none", "stroke-width": s.width || 2,
          "stroke-dasharray": s.dash ? "6 4" : undefined, class: "line", "data-series": s.name,
          "data-points": s.points.length}, plot);
      }
    }
    for (const m of markers) {
      const node = mark(plot, x(m.t), y(m.v), m.shape || "dot", m.color || "#1d2330", m.size || 6);
      if (m.title) svg("title", {}, node, m.title);
    }
    return root;
  }

  function line(points, x, y, step) {
    let d = "", previous = null;
    for (const [t, v] of points) {
      if (v === null || !Number.isFinite(v)) { previous = null; continue; }
      if (previous === null) d += `M${x(t)},${y(v)}`;
      else d += (step ? `L${x(t)},${y(previous)}` : "") + `L${x(t)},${y(v)}`;
      previous = v;
    }
    return d;
  }

  // [t0, t1] widened a little, so what happens at either end is not drawn on the frame.
  function padded(t0, t1) {
    const margin = Math.max((t1 - t0) * 0.03, 500);
    return [t0 - margin, t1 + margin];
  }

  function timeline(parent, spec) {
    const lanes = spec.lanes || [], lane = 30, labelWidth = spec.labelWidth || 230;
    const height = PAD.top + Math.max(lanes.length, 1) * lane + PAD.bottom;
    const times = [];
    let count = 0;
    for (const l of lanes) {
      for (const s of l.spans || []) { times.push(s.from, s.to ?? Date.now()); count++; }
      for (const m of l.marks || []) { times.push(m.t); count++; }
    }
    const root = figure(parent, {...spec, legendItems: spec.legend}, height, count);
    if (!count) return root;
    const [t0, t1] = spec.x || padded(Math.min(...times), Math.max(...times));
    const left = labelWidth, right = W - PAD.right, top = PAD.top, bottom = height - PAD.bottom;
    const x = (t) => left + (t - t0) / (t1 - t0) * (right - left);
    xAxis(root, x, t0, t1, top, bottom, left, right, spec.xLabel);
    lanes.forEach((l, index) => {
      const middle = top + index * lane + lane / 2;
      if (index % 2) svg("rect", {x: 0, y: middle - lane / 2, width: right, height: lane, class: "lane-band"}, root);
      const text = l.label.length > 34 ? `${l.label.slice(0, 33)}…` : l.label;
      const label = svg("text", {x: left - 8, y: middle + 4, "text-anchor": "end", class: "lane-label"}, root, text);
      svg("title", {}, label, l.title || l.label);
      for (const s of l.spans || []) {
        const from = x(s.from), to = x(s.to ?? Date.now()), thick = s.thin ? 6 : 16;
        const bar = svg("rect", {x: from, y: middle - thick / 2, width: Math.max(3, to - from), height: thick, rx: 3,
          fill: s.color, "fill-opacity": s.opacity ?? 0.85, class: "span-bar"}, root);
        if (s.title) svg("title", {}, bar, s.title);
      }
      for (const m of l.marks || []) {
        const node = mark(root, x(m.t), middle, m.shape || "dot", m.color || "#1d2330", m.size || 6);
        if (m.title) svg("title", {}, node, m.title);
      }
    });
    return root;
  }

  function bars(parent, spec) {
    const rows = spec.rows || [], row = 46, labelWidth = 300, valueRoom = 150;
    const height = PAD.top + Math.max(rows.length, 1) * row + PAD.bottom;
    const count = rows.reduce((n, r) => n + [r.before, r.after].filter(Number.isFinite).length, 0);
    const legendItems = [{solid: true, color: "#8a94a6", label: "before the change"},
      ...(spec.legend || [])];
    const root = figure(parent, {...spec, legendItems}, height, count);
    if (!count) return root;
    const high = niceTicks(0, Math.max(...rows.flatMap((r) => [r.before, r.after]).filter(Number.isFinite)) || 1, 4);
    const top = PAD.top, bottom = height - PAD.bottom, left = labelWidth, right = W - PAD.right - valueRoom;
    const max = high[high.length - 1];
    const x = (v) => left + v / max * (right - left);
    for (const v of high) {
      svg("line", {x1: x(v), x2: x(v), y1: top, y2: bottom, class: "grid"}, root);
      svg("text", {x: x(v), y: bottom + 16, "text-anchor": "middle", class: "axis"}, root, number(v));
    }
    svg("line", {x1: left, x2: right, y1: bottom, y2: bottom, class: "axis-line"}, root);
    svg("text", {x: (left + right) / 2, y: bottom + 36, "text-anchor": "middle", class: "axis-label"}, root,
      `${spec.unit}${spec.better ? ` (${spec.better} is better)` : ""}`);
    rows.forEach((r, index) => {
      const y0 = top + index * row + 6;
      const label = svg("text", {x: left - 10, y: y0 + 13, "text-anchor": "end", class: "lane-label"}, root,
        r.label.length > 38 ? `${r.label.slice(0, 37)}…` : r.label);
      svg("title", {}, label, r.title || r.label);
      svg("text", {x: left - 10, y: y0 + 29, "text-anchor": "end", class: `status ${r.statusClass || ""}`}, root,
        r.status || "");
      [["before", r.before, "#8a94a6"], ["after", r.after, r.color || "#2f6fdf"]].forEach(([name, v, color], i) => {
        if (!Number.isFinite(v)) return;
        const y = y0 + i * 17;
        const bar = svg("rect", {x: left, y, width: Math.max(1.5, x(v) - left), height: 14, fill: color, rx: 2,
          class: "bar", "data-name": name, "data-value": v}, root);
        svg("title", {}, bar, `${name}: ${number(v)} ${spec.unit}`);
        svg("text", {x: x(v) + 6, y: y + 11, class: "bar-value"}, root,
          `${name} ${number(v)}` + (i === 1 && r.change ? `  (${r.change})` : ""));
      });
    });
    return root;
  }

  // Render the embedded data now, then fetch this page's JSON every data-refresh seconds and render again.
  function live(render) {
    const body = document.body, refresh = Number(body.dataset.refresh || 15);
    const stamp = document.getElementById("updated");
    for (const link of document.querySelectorAll("a[data-port]")) {
      link.href = `${location.protocol}//${location.hostname}:${link.dataset.port}/dashboard`;
    }
    const draw = (data) => {
      render(data);
      stamp.textContent = `updated ${clock(Date.now())} · refreshes every ${refresh} s`;
      stamp.className = "updated";
    };
    draw(JSON.parse(document.getElementById("data").textContent));
    setInterval(async () => {
      if (document.hidden) return;
      try {
        const answer = await fetch(location.pathname, {headers: {Accept: "application/json"}, cache: "no-store"});
        if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
        draw(await answer.json());
      } catch (error) {
        stamp.textContent = `refresh failed at ${clock(Date.now())} (${error.message}): showing older data, retrying`;
        stamp.className = "updated bad";
      }
    }, refresh * 1000);
  }

  window.tmsopsChart = chart;
  window.tmsopsTimeline = timeline;
  window.tmsopsBars = bars;
  window.tmsops = {h, table, clock, number, duration, padded, live, chart, timeline, bars};
})();
