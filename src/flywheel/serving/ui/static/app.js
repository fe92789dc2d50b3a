// flywheel dashboard: draws the overview's charts as SVG from the JSON the server embeds
// (#charts-data), and asks before a forget. No dependencies, no build step.
"use strict";

const NS = "http://www.w3.org/2000/svg";
const W = 460, H = 230, PAD = { l: 44, r: 12, t: 10, b: 76 };
const CHAR = 6.2; // px per character of a 10px tick label (system-ui), a safe upper bound

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

// A label cut to fit `px` (with an ellipsis), its full text on hover.
function label(parent, x, y, s, px, attrs) {
  const full = String(s), room = Math.max(1, Math.floor(px / CHAR));
  const shown = full.length <= room ? full : full.slice(0, Math.max(1, room - 1)) + "…";
  const t = text(parent, x, y, shown, { class: "tick", ...(attrs || {}) });
  if (shown !== full) el("title", {}, t).textContent = full;
  t.dataset.full = full;
  return t;
}

// A round top for the y axis: 1, 2 or 5 times a power of ten per tick.
function niceTop(ymax, ticks) {
  if (ymax <= 1) return 1;
  const raw = ymax / ticks, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((v) => v >= raw);
  return step * ticks;
}

function frame(svg, top, ticks) {
  const ih = H - PAD.t - PAD.b;
  for (let i = 0; i <= ticks; i++) {
    const v = (top * i) / ticks, y = PAD.t + ih - (ih * i) / ticks;
    el("line", { x1: PAD.l, x2: W - PAD.r, y1: y, y2: y, class: "grid" }, svg);
    text(svg, PAD.l - 6, y + 4, top <= 1 ? v.toFixed(2) : String(Math.round(v)), { class: "tick ytick", "text-anchor": "end" });
  }
}

// Category or time labels under `step`-wide slots: level when every one fits its slot,
// else upright (rotated a quarter turn) and cut to the space below the plot; a label
// every `every` slots when the slots are too narrow for one each.
function xlabels(svg, xs, step) {
  const longest = Math.max(0, ...xs.map((x) => String(x).length)) * CHAR;
  const level = longest <= step - 4;
  const every = level ? 1 : Math.max(1, Math.ceil(13 / step));
  xs.forEach((x, i) => {
    if (i % every) return;
    const px = PAD.l + step * (i + 0.5), py = H - PAD.b + 14;
    if (level) label(svg, px, py, x, step - 4, { "text-anchor": "middle", class: "tick xtick" });
    else label(svg, px + 3, H - PAD.b + 6, x, PAD.b - 10, { "text-anchor": "end", class: "tick xtick", transform: `rotate(-90 ${px + 3} ${H - PAD.b + 6})` });
  });
}

function bar(svg, c) {
  const ys = c.y, n = ys.length, ymax = Math.max(1, ...ys);
  const iw = W - PAD.l - PAD.r, ih = H - PAD.t - PAD.b, step = iw / Math.max(1, n);
  const top = niceTop(Math.max(...ys, 0) <= 1 && !c.time ? 1 : ymax, 4);
  frame(svg, top, 4);
  ys.forEach((y, i) => {
    const h = (ih * y) / top;
    const r = el("rect", { x: PAD.l + step * i + step * 0.1, y: PAD.t + ih - h, width: Math.max(1, step * 0.8), height: h, class: "mark bar", "data-x": c.x[i], "data-y": y }, svg);
    el("title", {}, r).textContent = `${c.time ? c.stamps[i] : c.x[i]}: ${y}`;
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
  // Its own geometry: square cells, the row names on the left and the column names
  // upright below, each cut to 12 characters (full on hover).
  const n = c.x.length, cell = Math.max(18, Math.min(34, 340 / n));
  const names = Math.min(12, Math.max(...c.x.map((x) => String(x).length))) * CHAR + 8;
  const left = names, top = PAD.t, w = left + n * cell + 8, h = top + n * cell + names;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  const zmax = Math.max(1, ...c.z.flat());
  c.z.forEach((row, i) => row.forEach((z, j) => {
    const g = el("g", {}, svg);
    const a = z / zmax;
    const r = el("rect", { x: left + j * cell, y: top + i * cell, width: cell, height: cell, class: "mark cell", fill: `rgba(200, 40, 30, ${a.toFixed(3)})`, "data-x": c.x[j], "data-y": c.y[i], "data-z": z }, g);
    el("title", {}, r).textContent = `truth ${c.y[i]}, predicted ${c.x[j]}: ${z}`;
    if (cell > 14) text(g, left + j * cell + cell / 2, top + i * cell + cell / 2 + 4, String(z), { class: "cellnum", "text-anchor": "middle" });
  }));
  c.x.forEach((x, j) => {
    const px = left + j * cell + cell / 2 + 3, py = top + n * cell + 6;
    label(svg, px, py, x, names - 8, { "text-anchor": "end", class: "tick xtick", transform: `rotate(-90 ${px} ${py})` });
  });
  c.y.forEach((y, i) => label(svg, left - 6, top + i * cell + cell / 2 + 4, y, names - 8, { "text-anchor": "end", class: "tick ytick" }));
  return n * n;
}

function draw() {
  const data = document.getElementById("charts-data");
  if (!data) return;
  const charts = JSON.parse(data.textContent);
  for (const fig of document.querySelectorAll("figure.chart")) {
    const c = charts[fig.dataset.chart];
    if (c.empty || !c.x.length) {  // an empty state says what would fill it
      const p = document.createElement("p");
      p.className = "muted empty";
      p.textContent = c.empty || "nothing to draw yet";
      fig.appendChild(p);
      fig.dataset.drawn = "true";
      continue;
    }
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
