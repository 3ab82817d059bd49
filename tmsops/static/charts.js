// tmsops dashboards: small SVG line charts with an optional band, no dependencies.
// chart(element, {title, unit, series: [{name, color, points: [[ms, value], ...], band: [[ms, low, high], ...], step}]})
// bars(element, {title, groups: [{label, status, values: [{name, value}, ...]}]}): paired bars on a log scale
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 720, H = 220, PAD = {left: 52, right: 12, top: 24, bottom: 28};

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (parent) parent.appendChild(node);
    return node;
  }

  function extent(values) {
    let low = Infinity, high = -Infinity;
    for (const value of values) { if (Number.isFinite(value)) { low = Math.min(low, value); high = Math.max(high, value); } }
    if (low === Infinity) return [0, 1];
    if (low === high) return [low - 1, high + 1];
    return [Math.min(low, 0), high + (high - low) * 0.08];
  }

  function path(points, x, y, step) {
    let d = "";
    points.forEach(([t, v], i) => {
      if (!Number.isFinite(v)) return;
      if (step && i > 0) d += `L${x(t)},${y(points[i - 1][1])}`;
      d += `${d ? "L" : "M"}${x(t)},${y(v)}`;
    });
    return d;
  }

  function chart(target, spec) {
    const svg = el("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": spec.title || ""});
    const times = [], values = [];
    for (const s of spec.series) {
      for (const [t, v] of s.points || []) { times.push(t); values.push(v); }
      for (const [t, low, high] of s.band || []) { times.push(t); values.push(low, high); }
    }
    if (!times.length) {
      el("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty"}, svg).textContent = "no data yet";
      target.appendChild(svg);
      return svg;
    }
    const [t0, t1] = [Math.min(...times), Math.max(...times, Math.min(...times) + 1)];
    const [v0, v1] = extent(values);
    const x = (t) => PAD.left + (t - t0) / (t1 - t0) * (W - PAD.left - PAD.right);
    const y = (v) => H - PAD.bottom - (v - v0) / (v1 - v0) * (H - PAD.top - PAD.bottom);
    el("text", {x: PAD.left, y: 16, class: "title"}, svg).textContent = spec.title || "";
    for (let i = 0; i <= 4; i++) {
      const v = v0 + (v1 - v0) * i / 4;
      el("line", {x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: "grid"}, svg);
      el("text", {x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end", class: "axis"}, svg).textContent =
        v >= 100 ? v.toFixed(0) : v.toFixed(1);
    }
    for (let i = 0; i <= 4; i++) {
      const t = t0 + (t1 - t0) * i / 4;
      el("text", {x: x(t), y: H - 8, "text-anchor": "middle", class: "axis"}, svg).textContent =
        new Date(t).toLocaleTimeString();
    }
    spec.series.forEach((s, index) => {
      if (s.band && s.band.length) {
        const upper = s.band.map(([t, , high]) => `${x(t)},${y(high)}`);
        const lower = s.band.slice().reverse().map(([t, low]) => `${x(t)},${y(low)}`);
        el("polygon", {points: upper.concat(lower).join(" "), fill: s.color, "fill-opacity": 0.18, class: "band"}, svg);
      }
      if (s.points && s.points.length) {
        el("path", {d: path(s.points, x, y, s.step), stroke: s.color, fill: "none", "stroke-width": 2,
                    class: "line", "data-series": s.name, "data-points": s.points.length}, svg);
      }
      el("text", {x: PAD.left + 260 + index * 120, y: 16, class: "legend", fill: s.color}, svg)
        .textContent = s.name;
    });
    target.appendChild(svg);
    return svg;
  }

  const BAR_COLORS = ["#8a94a6", "#2f6fdf", "#d9480f", "#1b7f3b"];

  function bars(target, spec) {
    const groups = spec.groups || [];
    const height = PAD.top + PAD.bottom + Math.max(groups.length, 1) * 34;
    const svg = el("svg", {viewBox: `0 0 ${W} ${height}`, class: "chart bars", role: "img", "aria-label": spec.title || ""});
    el("text", {x: PAD.left, y: 16, class: "title"}, svg).textContent = spec.title || "";
    if (!groups.length) {
      el("text", {x: W / 2, y: height / 2 + 6, "text-anchor": "middle", class: "empty"}, svg).textContent = "no measured change yet";
      target.appendChild(svg);
      return svg;
    }
    const values = groups.flatMap((g) => g.values.map((v) => v.value)).filter((v) => v > 0);
    const high = Math.log10(Math.max(...values, 1)) + 0.2, low = Math.min(Math.log10(Math.min(...values, 1)), 0) - 0.2;
    const left = 230, right = W - 60;
    const x = (v) => left + (Math.log10(Math.max(v, 10 ** low)) - low) / (high - low) * (right - left);
    groups.forEach((group, row) => {
      const top = PAD.top + row * 34;
      el("text", {x: left - 8, y: top + 17, "text-anchor": "end", class: "axis"}, svg).textContent =
        `${group.label} (${group.status})`.slice(0, 40);
      group.values.forEach((item, index) => {
        const y = top + 4 + index * 13;
        el("rect", {x: left, y, width: Math.max(1, x(item.value) - left), height: 11, fill: BAR_COLORS[index % 4],
                    class: "bar", "data-name": item.name, "data-value": item.value}, svg);
        el("text", {x: x(item.value) + 4, y: y + 10, class: "axis"}, svg).textContent = `${item.name} ${item.value}`;
      });
    });
    target.appendChild(svg);
    return svg;
  }

  window.tmsopsChart = chart;
  window.tmsopsBars = bars;
})();
