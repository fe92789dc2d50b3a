// flywheel dashboard: draws the overview's charts as SVG from the JSON the server embeds
// (#charts-data), and asks before a forget. No dependencies, no build step.
"use strict";

const NS = "http://www.w3.org/2000/svg";
const W = 460, H = 220, PAD = { l: 44, r: 12, t: 10, b: 46 };

function el(name, attrs, parent) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function text(parent, x, y, s, attrs) {
  const t = el("text", { x, y, ...(attrs || {}) }, parent);
  t.textContent = s;
  return t;
}

function frame(svg, ymax, ticks) {
  const ih = H - PAD.t - PAD.b;
  for (let i = 0; i <= ticks; i++) {
    const v = (ymax * i) / ticks, y = PAD.t + ih - (ih * i) / ticks;
    el("line", { x1: PAD.l, x2: W - PAD.r, y1: y, y2: y, class: "grid" }, svg);
    text(svg, PAD.l - 6, y + 4, ymax <= 1 ? v.toFixed(2) : String(Math.round(v)), { class: "tick", "text-anchor": "end" });
  }
}

function xlabels(svg, xs, step) {
  const every = Math.max(1, Math.ceil(xs.length / 12));
  xs.forEach((x, i) => {
    if (i % every) return;
    const px = PAD.l + step * (i + 0.5);
    text(svg, px, H - PAD.b + 14, String(x).slice(-8), { class: "tick", "text-anchor": "end", transform: `rotate(-35 ${px} ${H - PAD.b + 14})` });
  });
}

function bar(svg, c) {
  const ys = c.y, n = ys.length, ymax = Math.max(1, ...ys);
  const iw = W - PAD.l - PAD.r, ih = H - PAD.t - PAD.b, step = iw / Math.max(1, n);
  frame(svg, ymax <= 1 ? 1 : ymax, 4);
  const top = ymax <= 1 ? 1 : ymax;
  ys.forEach((y, i) => {
    const h = (ih * y) / top;
    const r = el("rect", { x: PAD.l + step * i + step * 0.1, y: PAD.t + ih - h, width: Math.max(1, step * 0.8), height: h, class: "mark bar", "data-x": c.x[i], "data-y": y }, svg);
    el("title", {}, r).textContent = `${c.x[i]}: ${y}`;
  });
  xlabels(svg, c.x, step);
  return n;
}

function line(svg, c) {
  // c.y (blue) and c.series2 (orange) on [0, c.ymax || 1]; c.rule: a dashed level line.
  const n = c.y.length, iw = W - PAD.l - PAD.r, ih = H - PAD.t - PAD.b, step = iw / Math.max(1, n);
  const top = c.ymax || 1;
  frame(svg, top, 4);
  const names = c.names || ["held-out", "live (feedback)"];
  if (c.rule !== undefined) {
    const ry = PAD.t + ih - (ih * c.rule) / top;
    el("line", { x1: PAD.l, x2: W - PAD.r, y1: ry, y2: ry, class: "rule" }, svg);
  }
  const series = [[c.y, "mark point", names[0]], [c.series2 || [], "mark2 point live", names[1]]];
  for (const [ys, cls, name] of series) {
    const pts = [];
    ys.forEach((y, i) => {
      if (y === null || y === undefined) return;
      const px = PAD.l + step * (i + 0.5), py = PAD.t + ih - (ih * Math.min(y, top)) / top;
      pts.push(`${px},${py}`);
      const p = el("circle", { cx: px, cy: py, r: 4, class: cls, "data-x": c.x[i], "data-y": y }, svg);
      el("title", {}, p).textContent = `${name} ${c.x[i]}: ${Number(y).toFixed(4)}`;
    });
    if (pts.length > 1) el("polyline", { points: pts.join(" "), class: cls.split(" ")[0] + "-line" }, svg);
  }
  xlabels(svg, c.x, step);
  return c.y.length;
}

function matrix(svg, c) {
  const n = c.x.length, size = Math.min((W - PAD.l - PAD.r) / n, (H - PAD.t - 20) / n);
  const zmax = Math.max(1, ...c.z.flat());
  c.z.forEach((row, i) => row.forEach((z, j) => {
    const g = el("g", {}, svg);
    const a = z / zmax;
    el("rect", { x: PAD.l + j * size, y: PAD.t + i * size, width: size, height: size, class: "mark cell", fill: `rgba(200, 40, 30, ${a.toFixed(3)})`, "data-x": c.x[j], "data-y": c.y[i], "data-z": z }, g);
    if (size > 14) text(g, PAD.l + j * size + size / 2, PAD.t + i * size + size / 2 + 4, String(z), { class: "cellnum", "text-anchor": "middle" });
  }));
  c.x.forEach((x, j) => text(svg, PAD.l + j * size + size / 2, PAD.t + n * size + 12, String(x), { class: "tick", "text-anchor": "middle" }));
  c.y.forEach((y, i) => text(svg, PAD.l - 6, PAD.t + i * size + size / 2 + 4, String(y), { class: "tick", "text-anchor": "end" }));
  return n * n;
}

function draw() {
  const data = document.getElementById("charts-data");
  if (!data) return;
  const charts = JSON.parse(data.textContent);
  for (const fig of document.querySelectorAll("figure.chart")) {
    const c = charts[fig.dataset.chart];
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": c.title }, null);
    const marks = { bar, line, matrix }[c.kind](svg, c);
    svg.dataset.marks = String(marks);
    fig.appendChild(svg);
    fig.dataset.drawn = "true";
  }
  document.body.dataset.chartsDrawn = "true";
}

function confirmForget() {
  for (const form of document.querySelectorAll("form.forget")) {
    form.addEventListener("submit", (ev) => {
      if (!window.confirm("Forget this user? Their rows, inputs and every model trained on them are removed. This cannot be undone.")) ev.preventDefault();
    });
  }
}

document.addEventListener("DOMContentLoaded", () => { draw(); confirmForget(); });
