// A small canvas chart of a training run: the loss per batch (left axis, with a min-max band
// where the history was downsampled) and each epoch's test accuracy (right axis).

const COLORS = {
  loss: "#4f46e5",
  band: "rgba(79, 70, 229, 0.14)",
  accuracy: "#059669",
  grid: "#e7e9f0",
  axis: "#9aa1b2",
  text: "#5b6275",
  epoch: "#c9cedb",
};
const PAD = { left: 58, right: 58, top: 18, bottom: 40 };

// Round tick values that cover [min, max] with about `count` steps: 1, 2 or 5 times 10^k.
export function niceTicks(min, max, count = 5) {
  if (!(max > min)) return [min];
  const raw = (max - min) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) ticks.push(+v.toPrecision(12));
  return ticks;
}

function formatNumber(value) {
  if (value === 0) return "0";
  const abs = Math.abs(value);
  if (abs >= 10000) return `${Math.round(value / 1000)}k`;
  if (abs >= 1000) return value.toLocaleString("en-US");
  if (abs >= 1) return `${+value.toFixed(2)}`;
  return `${+value.toPrecision(2)}`;
}

export class LossChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.xs = [];
    this.ys = [];
    this.lo = []; // null where a point is exact
    this.hi = [];
    this.epochs = []; // {epoch, x, accuracy, validation}: test and validation accuracy
    this.totalSteps = null;
    this.log = false;
    this.emptyText = "Waiting for the first batch…";
    this.hover = null;
    this.frame = 0;
    new ResizeObserver(() => this.draw()).observe(canvas);
    canvas.addEventListener("mousemove", (e) => this.pointer(e));
    canvas.addEventListener("mouseleave", () => { this.hover = null; this.redraw(); });
  }

  // The downsampled history: buckets from GET /jobs/{id}/metrics?max_points=K.
  setHistory(buckets) {
    for (const b of buckets) {
      if (b.loss === null) continue;
      const exact = b.step === b.step_end;
      this.push((b.step + b.step_end) / 2, b.loss, exact ? null : b.loss_min, exact ? null : b.loss_max);
    }
    this.redraw();
  }

  addPoint(step, loss) {
    if (loss === null || !Number.isFinite(loss)) return;
    if (this.xs.length && step <= this.xs[this.xs.length - 1]) return;
    this.push(step, loss, null, null);
    this.redraw();
  }

  setEpochs(epochs) {
    this.epochs = epochs;
    this.redraw();
  }

  setTotalSteps(total) {
    if (total && total !== this.totalSteps) {
      this.totalSteps = total;
      this.redraw();
    }
  }

  // What an empty chart says: waiting, or that the job ended before its first batch.
  setEmptyText(text) {
    if (text !== this.emptyText) {
      this.emptyText = text;
      this.redraw();
    }
  }

  setLog(log) {
    this.log = log;
    this.redraw();
  }

  push(x, y, lo, hi) {
    this.xs.push(x);
    this.ys.push(y);
    this.lo.push(lo);
    this.hi.push(hi);
    this.canvas.dataset.points = String(this.xs.length);
  }

  // Coalesce many updates into one draw per animation frame.
  redraw() {
    if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.draw(); });
  }

  pointer(event) {
    const rect = this.canvas.getBoundingClientRect();
    this.hover = { x: event.clientX - rect.left, y: event.clientY - rect.top };
    this.redraw();
  }

  scales(width, height) {
    const n = this.xs.length;
    const xMax = Math.max(this.totalSteps ? this.totalSteps - 1 : 0, n ? this.xs[n - 1] : 0, 1);
    let yMin = Infinity;
    let yMax = -Infinity;
    for (let i = 0; i < n; i++) {
      yMin = Math.min(yMin, this.lo[i] ?? this.ys[i]);
      yMax = Math.max(yMax, this.hi[i] ?? this.ys[i]);
    }
    if (!n) [yMin, yMax] = [0.01, 2.5];
    const plot = { x0: PAD.left, x1: width - PAD.right, y0: PAD.top, y1: height - PAD.bottom };
    const sx = (x) => plot.x0 + (x / xMax) * (plot.x1 - plot.x0);
    let sy;
    let ticks;
    if (this.log) {
      const a = Math.log10(Math.max(yMin, 1e-6));
      const b = Math.log10(Math.max(yMax, yMin * 1.01, 1e-6));
      const lo = Math.floor(a * 4) / 4;
      const hi = Math.ceil(b * 4) / 4;
      sy = (y) => plot.y1 - ((Math.log10(Math.max(y, 1e-6)) - lo) / (hi - lo || 1)) * (plot.y1 - plot.y0);
      ticks = [];
      for (let p = Math.floor(lo); p <= Math.ceil(hi); p++) {
        for (const m of [1, 2, 5]) {
          const v = m * 10 ** p;
          if (Math.log10(v) >= lo - 1e-9 && Math.log10(v) <= hi + 1e-9) ticks.push(v);
        }
      }
    } else {
      ticks = niceTicks(0, yMax * 1.05, 5);
      const top = Math.max(ticks[ticks.length - 1], yMax);
      sy = (y) => plot.y1 - (y / top) * (plot.y1 - plot.y0);
    }
    const accs = this.epochs.flatMap((e) => [e.accuracy, e.validation ?? null]).filter((a) => a !== null);
    const accLow = accs.length ? Math.max(0, Math.floor(Math.min(...accs) * 10 - 0.5) / 10) : 0.8;
    const sa = (a) => plot.y1 - ((a - accLow) / (1 - accLow)) * (plot.y1 - plot.y0);
    return { plot, sx, sy, sa, xMax, ticks, accLow };
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "12px system-ui, -apple-system, 'Segoe UI', sans-serif";
    const s = this.scales(width, height);
    this.axes(ctx, s);
    if (!this.xs.length) {
      ctx.fillStyle = COLORS.text;
      ctx.textAlign = "center";
      ctx.fillText(this.emptyText, (s.plot.x0 + s.plot.x1) / 2, (s.plot.y0 + s.plot.y1) / 2);
      return;
    }
    ctx.save();
    ctx.beginPath();
    ctx.rect(s.plot.x0, s.plot.y0 - 2, s.plot.x1 - s.plot.x0, s.plot.y1 - s.plot.y0 + 4);
    ctx.clip();
    this.curve(ctx, s);
    ctx.restore();
    this.accuracy(ctx, s);
    this.tooltip(ctx, s);
  }

  axes(ctx, { plot, sx, sy, sa, xMax, ticks, accLow }) {
    ctx.lineWidth = 1;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (const t of ticks) {
      const y = Math.round(sy(t)) + 0.5;
      ctx.strokeStyle = COLORS.grid;
      ctx.beginPath();
      ctx.moveTo(plot.x0, y);
      ctx.lineTo(plot.x1, y);
      ctx.stroke();
      ctx.fillStyle = COLORS.text;
      ctx.fillText(formatNumber(t), plot.x0 - 8, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const xTicks = niceTicks(0, xMax, Math.max(2, Math.floor((plot.x1 - plot.x0) / 90)));
    for (const t of xTicks.filter(Number.isInteger)) {
      const x = Math.round(sx(t)) + 0.5;
      ctx.strokeStyle = COLORS.axis;
      ctx.beginPath();
      ctx.moveTo(x, plot.y1);
      ctx.lineTo(x, plot.y1 + 5);
      ctx.stroke();
      ctx.fillStyle = COLORS.text;
      ctx.fillText(formatNumber(t), x, plot.y1 + 8);
    }
    ctx.strokeStyle = COLORS.axis;
    ctx.beginPath();
    ctx.moveTo(plot.x0 + 0.5, plot.y0);
    ctx.lineTo(plot.x0 + 0.5, plot.y1 + 0.5);
    ctx.lineTo(plot.x1, plot.y1 + 0.5);
    ctx.stroke();
    ctx.fillStyle = COLORS.text;
    ctx.fillText("step", (plot.x0 + plot.x1) / 2, plot.y1 + 24);
    this.verticalLabel(ctx, this.log ? "loss (log scale)" : "loss", 14, (plot.y0 + plot.y1) / 2, COLORS.loss);
    if (this.epochs.some((e) => e.accuracy !== null)) {
      ctx.textAlign = "left";
      ctx.textBaseline = "middle";
      for (const t of niceTicks(accLow, 1, 4)) {
        ctx.fillStyle = COLORS.accuracy;
        ctx.fillText(`${+(t * 100).toFixed(1)}%`, plot.x1 + 8, sa(t));
      }
      this.verticalLabel(ctx, "test accuracy", ctx.canvas.clientWidth - 12, (plot.y0 + plot.y1) / 2, COLORS.accuracy);
    }
    // Epoch boundaries, thinned out when epochs are narrower than 24 pixels.
    ctx.setLineDash([3, 4]);
    ctx.strokeStyle = COLORS.epoch;
    const spacing = this.epochs.length ? sx(this.epochs[0].x + 0.5) - plot.x0 : Infinity;
    const every = Math.max(1, Math.ceil(24 / Math.max(spacing, 1)));
    for (const e of this.epochs) {
      if (e.x >= xMax || (e.epoch + 1) % every) continue;
      const x = Math.round(sx(e.x + 0.5)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, plot.y0);
      ctx.lineTo(x, plot.y1);
      ctx.stroke();
    }
    ctx.setLineDash([]);
  }

  verticalLabel(ctx, text, x, y, color) {
    ctx.save();
    ctx.translate(x, y);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillStyle = color;
    ctx.fillText(text, 0, 0);
    ctx.restore();
  }

  // The points, folded into one column per pixel when there are more points than pixels.
  columns({ plot, sx }) {
    const n = this.xs.length;
    if (n <= (plot.x1 - plot.x0) * 1.5) {
      return this.xs.map((x, i) => ({ x: sx(x), y: this.ys[i], lo: this.lo[i], hi: this.hi[i] }));
    }
    const out = [];
    let current = null;
    for (let i = 0; i < n; i++) {
      const px = Math.floor(sx(this.xs[i]));
      const lo = this.lo[i] ?? this.ys[i];
      const hi = this.hi[i] ?? this.ys[i];
      if (!current || current.px !== px) {
        current = { px, x: px + 0.5, sum: 0, count: 0, lo, hi };
        out.push(current);
      }
      current.sum += this.ys[i];
      current.count += 1;
      current.lo = Math.min(current.lo, lo);
      current.hi = Math.max(current.hi, hi);
    }
    for (const c of out) c.y = c.sum / c.count;
    return out;
  }

  curve(ctx, s) {
    const cols = this.columns(s);
    const banded = cols.filter((c) => c.lo !== null && c.hi !== null && c.hi > c.lo);
    if (banded.length) {
      ctx.fillStyle = COLORS.band;
      ctx.beginPath();
      cols.forEach((c, i) => ctx[i ? "lineTo" : "moveTo"](c.x, s.sy(c.hi ?? c.y)));
      for (let i = cols.length - 1; i >= 0; i--) ctx.lineTo(cols[i].x, s.sy(cols[i].lo ?? cols[i].y));
      ctx.closePath();
      ctx.fill();
    }
    ctx.strokeStyle = COLORS.loss;
    ctx.lineWidth = 1.6;
    ctx.lineJoin = "round";
    ctx.beginPath();
    cols.forEach((c, i) => ctx[i ? "lineTo" : "moveTo"](c.x, s.sy(c.y)));
    if (cols.length === 1) ctx.arc(cols[0].x, s.sy(cols[0].y), 1.5, 0, 2 * Math.PI);
    ctx.stroke();
  }

  accuracy(ctx, { sx, sa }) {
    // The validation accuracy (validation_split), dashed, under the test accuracy.
    const held = this.epochs.filter((e) => e.validation !== null && e.validation !== undefined);
    if (held.length) {
      ctx.strokeStyle = COLORS.accuracy;
      ctx.lineWidth = 1.5;
      ctx.setLineDash([5, 4]);
      ctx.beginPath();
      held.forEach((e, i) => ctx[i ? "lineTo" : "moveTo"](sx(e.x), sa(e.validation)));
      ctx.stroke();
      ctx.setLineDash([]);
    }
    const points = this.epochs.filter((e) => e.accuracy !== null);
    if (!points.length) return;
    ctx.strokeStyle = COLORS.accuracy;
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((e, i) => ctx[i ? "lineTo" : "moveTo"](sx(e.x), sa(e.accuracy)));
    ctx.stroke();
    for (const e of points) {
      ctx.fillStyle = "#fff";
      ctx.beginPath();
      ctx.arc(sx(e.x), sa(e.accuracy), 4.5, 0, 2 * Math.PI);
      ctx.fill();
      ctx.stroke();
    }
  }

  tooltip(ctx, s) {
    if (!this.hover) return;
    const { plot } = s;
    const { x: hx, y: hy } = this.hover;
    if (hx < plot.x0 || hx > plot.x1 || hy < plot.y0 || hy > plot.y1) return;
    const step = ((hx - plot.x0) / (plot.x1 - plot.x0)) * s.xMax;
    // The nearest point, by binary search on the sorted steps.
    let lo = 0;
    let hi = this.xs.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.xs[mid] < step) lo = mid + 1;
      else hi = mid;
    }
    if (lo > 0 && Math.abs(this.xs[lo - 1] - step) < Math.abs(this.xs[lo] - step)) lo -= 1;
    const x = s.sx(this.xs[lo]);
    const y = s.sy(this.ys[lo]);
    ctx.strokeStyle = COLORS.axis;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(x, plot.y0);
    ctx.lineTo(x, plot.y1);
    ctx.stroke();
    ctx.fillStyle = COLORS.loss;
    ctx.beginPath();
    ctx.arc(x, y, 3.5, 0, 2 * Math.PI);
    ctx.fill();
    const lines = [`step ${Math.round(this.xs[lo]).toLocaleString("en-US")}`, `loss ${this.ys[lo].toFixed(4)}`];
    const epoch = this.epochs.find((e) => e.x >= this.xs[lo]);
    if (epoch && epoch.accuracy !== null) lines.push(`epoch ${epoch.epoch + 1} test ${(epoch.accuracy * 100).toFixed(1)}%`);
    if (epoch && epoch.validation != null) lines.push(`epoch ${epoch.epoch + 1} val ${(epoch.validation * 100).toFixed(1)}%`);
    const w = Math.max(...lines.map((l) => ctx.measureText(l).width)) + 16;
    const h = lines.length * 16 + 10;
    const bx = x + 12 + w > plot.x1 ? x - 12 - w : x + 12;
    const by = Math.min(Math.max(plot.y0, y - h / 2), plot.y1 - h);
    ctx.fillStyle = "rgba(20, 23, 38, 0.88)";
    ctx.beginPath();
    ctx.roundRect(bx, by, w, h, 6);
    ctx.fill();
    ctx.fillStyle = "#fff";
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    lines.forEach((l, i) => ctx.fillText(l, bx + 8, by + 6 + i * 16));
  }
}
