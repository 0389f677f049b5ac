// Charts that put runs side by side, on a canvas (no library, no inline style: the CSP):
//   LinesChart      several curves on shared axes (loss curves of chosen jobs, the trials'
//                   validation curves, a study's best-so-far), with a legend
//   ParallelChart   a study's trials as lines across one axis per parameter and the objective
// and the jobs page's "compare" panel that overlays the loss curves of the jobs ticked there.

import { api } from "./api.js";
import { niceTicks } from "./chart.js";
import { h } from "./ui.js";

export const PALETTE = ["#4f46e5", "#059669", "#dc2626", "#d97706", "#0891b2", "#7c3aed",
  "#db2777", "#65a30d", "#475569", "#ea580c"];
const INK = { grid: "#e7e9f0", axis: "#9aa1b2", text: "#5b6275", faint: "rgba(154, 161, 178, 0.45)" };
const PAD = { left: 58, right: 16, top: 14, bottom: 36 };

function label(value) {
  if (typeof value !== "number") return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(1);
  return `${+value.toPrecision(3)}`;
}

// A canvas sized to its box, in device pixels; draw(ctx, width, height) on every resize.
function sizedCanvas(canvas, draw) {
  const paint = () => {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "12px system-ui, sans-serif";
    draw(ctx, width, height);
  };
  new ResizeObserver(paint).observe(canvas);
  return paint;
}

export class LinesChart {
  // series: [{label, color, points: [[x, y], ...], dashed}]
  constructor(canvas, { xLabel = "", yLabel = "", log = false, steps = false } = {}) {
    this.canvas = canvas;
    this.series = [];
    this.options = { xLabel, yLabel, log, steps };
    this.paint = sizedCanvas(canvas, (ctx, w, hgt) => this.draw(ctx, w, hgt));
  }

  set(series) {
    this.series = series.filter((s) => s.points.length);
    this.canvas.dataset.series = String(this.series.length);
    this.canvas.dataset.points = String(this.series.reduce((n, s) => n + s.points.length, 0));
    this.paint();
  }

  draw(ctx, width, height) {
    const plot = { x: PAD.left, y: PAD.top, w: width - PAD.left - PAD.right, h: height - PAD.top - PAD.bottom };
    const all = this.series.flatMap((s) => s.points);
    ctx.fillStyle = INK.text;
    if (!all.length) {
      ctx.textAlign = "center";
      ctx.fillText("Nothing to draw yet", width / 2, height / 2);
      return;
    }
    const ys = all.map(([, y]) => y).filter((y) => Number.isFinite(y) && (!this.options.log || y > 0));
    const xs = all.map(([x]) => x);
    let [yMin, yMax] = [Math.min(...ys), Math.max(...ys)];
    if (yMin === yMax) [yMin, yMax] = [yMin - 0.5, yMax + 0.5];
    const [xMin, xMax] = [Math.min(...xs), Math.max(Math.max(...xs), Math.min(...xs) + 1)];
    const f = this.options.log ? Math.log10 : (v) => v;
    const sx = (x) => plot.x + ((x - xMin) / (xMax - xMin)) * plot.w;
    const sy = (y) => plot.y + plot.h - ((f(y) - f(yMin)) / (f(yMax) - f(yMin))) * plot.h;
    ctx.strokeStyle = INK.grid;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const yTicks = this.options.log
      ? niceTicks(Math.log10(yMin), Math.log10(yMax)).map((t) => 10 ** t)
      : niceTicks(yMin, yMax);
    for (const t of yTicks) {
      ctx.beginPath(); ctx.moveTo(plot.x, sy(t)); ctx.lineTo(plot.x + plot.w, sy(t)); ctx.stroke();
      ctx.fillText(label(t), plot.x - 6, sy(t));
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    // Trials and epochs are whole numbers: no tick between them.
    const whole = xs.every(Number.isInteger);
    for (const t of niceTicks(xMin, xMax, 6)) {
      if (!whole || Number.isInteger(t)) ctx.fillText(label(t), sx(t), plot.y + plot.h + 6);
    }
    ctx.fillText(this.options.xLabel, plot.x + plot.w / 2, plot.y + plot.h + 20);
    ctx.save();
    ctx.translate(14, plot.y + plot.h / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(this.options.yLabel, 0, 0);
    ctx.restore();
    for (const s of this.series) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = s.width ?? 1.6;
      ctx.setLineDash(s.dashed ? [4, 3] : []);
      ctx.beginPath();
      let previous = null;
      for (const [x, y] of s.points) {
        if (!Number.isFinite(y) || (this.options.log && y <= 0)) continue;
        if (previous === null) ctx.moveTo(sx(x), sy(y));
        else if (this.options.steps) { ctx.lineTo(sx(x), sy(previous)); ctx.lineTo(sx(x), sy(y)); }
        else ctx.lineTo(sx(x), sy(y));
        previous = y;
      }
      ctx.stroke();
      if (s.points.length <= 40) {
        ctx.fillStyle = s.color;
        for (const [x, y] of s.points) {
          if (Number.isFinite(y)) { ctx.beginPath(); ctx.arc(sx(x), sy(y), 2.5, 0, 2 * Math.PI); ctx.fill(); }
        }
      }
    }
    ctx.setLineDash([]);
  }
}

// One vertical axis per dimension; each row is a line through its values. A dimension is
// {name, values: [...], log, categorical}; rows are {values: {name: v}, color, strong}.
export class ParallelChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.dimensions = [];
    this.rows = [];
    this.paint = sizedCanvas(canvas, (ctx, w, hgt) => this.draw(ctx, w, hgt));
  }

  set(dimensions, rows) {
    this.dimensions = dimensions;
    this.rows = rows;
    this.canvas.dataset.lines = String(rows.length);
    this.paint();
  }

  scale(dimension, top, bottom) {
    const values = this.rows.map((r) => r.values[dimension.name]).filter((v) => v !== null && v !== undefined);
    if (dimension.categorical || values.some((v) => typeof v !== "number")) {
      const levels = dimension.levels ?? [...new Set(values.map(String))];
      const at = (v) => levels.indexOf(String(v));
      const step = (bottom - top) / Math.max(levels.length - 1, 1);
      return { ticks: levels.map((l, i) => [l, bottom - i * step]), y: (v) => bottom - at(v) * step };
    }
    const f = dimension.log ? Math.log10 : (v) => v;
    let [lo, hi] = [Math.min(...values), Math.max(...values)];
    if (dimension.low !== undefined) [lo, hi] = [Math.min(lo, dimension.low), Math.max(hi, dimension.high)];
    if (!(hi > lo)) [lo, hi] = [lo - 1, hi + 1];
    const y = (v) => bottom - ((f(v) - f(lo)) / (f(hi) - f(lo))) * (bottom - top);
    return { ticks: [[label(hi), y(hi)], [label(lo), y(lo)]], y };
  }

  draw(ctx, width, height) {
    const dims = this.dimensions;
    ctx.fillStyle = INK.text;
    if (!dims.length || !this.rows.length) {
      ctx.textAlign = "center";
      ctx.fillText("No trial has reported yet", width / 2, height / 2);
      return;
    }
    const [top, bottom] = [28, height - 18];
    const gap = (width - 2 * 70) / Math.max(dims.length - 1, 1);
    const axes = dims.map((d, i) => ({ x: dims.length === 1 ? width / 2 : 70 + i * gap, ...this.scale(d, top, bottom) }));
    const ordered = [...this.rows].sort((a, b) => Number(Boolean(a.strong)) - Number(Boolean(b.strong)));
    for (const row of ordered) {
      ctx.strokeStyle = row.color;
      ctx.lineWidth = row.strong ? 2.4 : 1.3;
      ctx.beginPath();
      let started = false;
      dims.forEach((d, i) => {
        const v = row.values[d.name];
        if (v === null || v === undefined) { started = false; return; }
        const y = axes[i].y(v);
        if (started) ctx.lineTo(axes[i].x, y); else ctx.moveTo(axes[i].x, y);
        started = true;
      });
      ctx.stroke();
    }
    ctx.strokeStyle = INK.axis;
    ctx.lineWidth = 1;
    dims.forEach((d, i) => {
      const { x, ticks } = axes[i];
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, bottom); ctx.stroke();
      ctx.textAlign = "center";
      ctx.textBaseline = "bottom";
      ctx.fillStyle = INK.text;
      ctx.fillText(d.name, x, top - 8);
      ctx.textAlign = "left";
      ctx.textBaseline = "middle";
      for (const [text, y] of ticks) ctx.fillText(text, x + 4, y);
    });
  }
}

// The jobs page's comparison: the loss curves of the jobs in `picked` (a Set of ids).
export function comparePanel(picked, signal) {
  const canvas = h("canvas", { class: "compare-chart", "aria-label": "loss curves of the chosen jobs" });
  const chart = new LinesChart(canvas, { xLabel: "step", yLabel: "loss", log: true });
  const note = h("span", { class: "muted small" });
  const error = h("div", { class: "error", hidden: true });
  const legend = h("div", { class: "legend" });
  const button = h("button", { class: "button small", type: "button", disabled: true, onclick: draw },
    "Compare loss curves");
  const clear = h("button", { class: "button small ghost", type: "button", onclick: () => { picked.clear(); update(); } }, "Clear");
  const card = h("section", { class: "card compare" },
    h("div", { class: "card-head" }, h("h2", {}, "Compare runs"), note),
    h("p", { class: "muted small" }, "Tick jobs in the table, then overlay their loss curves."),
    h("div", { class: "compare-actions" }, button, clear), error, legend, canvas);

  async function draw() {
    error.hidden = true;
    const ids = [...picked].sort((a, b) => a - b);
    try {
      const curves = await Promise.all(ids.map((id) => api(`/jobs/${id}/metrics?max_points=400`, { signal })));
      const series = ids.map((id, i) => ({
        label: `#${id}`, color: PALETTE[i % PALETTE.length],
        points: curves[i].items.filter((b) => b.loss !== null).map((b) => [(b.step + b.step_end) / 2, b.loss]),
      }));
      chart.set(series);
      legend.replaceChildren(...series.map((s) => h("span", { class: "legend-item", dataset: { color: s.color } },
        swatch(s.color), `job ${s.label}`)));
    } catch (e) {
      if (signal.aborted) return;
      error.textContent = e.message;
      error.hidden = false;
    }
  }

  function update() {
    note.textContent = picked.size ? `${picked.size} chosen` : "";
    button.disabled = picked.size < 1;
    for (const box of document.querySelectorAll("input.pick")) box.checked = picked.has(Number(box.value));
  }
  card.update = update;
  return card;
}

// A legend's colour mark: a canvas, since the CSP refuses style attributes.
export function swatch(color) {
  const mark = h("canvas", { class: "swatch", width: 12, height: 12 });
  const ctx = mark.getContext("2d");
  ctx.fillStyle = color;
  ctx.fillRect(0, 0, 12, 12);
  return mark;
}
