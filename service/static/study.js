// Studies: the list (#/studies) and one study (#/studies/{id}): its trials table, the
// best-so-far curve, a parallel-coordinates view of the params against the objective, and
// the trials' validation curves overlaid. Refreshed every 2 s while the study runs.

import { api } from "./api.js";
import { LinesChart, PALETTE, ParallelChart, swatch } from "./compare.js";
import { ago, fixed, h } from "./ui.js";

const REFRESH_MS = 2000;

function studyBadge(state) {
  return h("span", { class: `badge ${state}` }, state);
}

// optimizer.learning_rate -> learning_rate; model.layers.0.units -> layers.0.units
function shortName(path) {
  const parts = path.split(".");
  const keep = parts.length > 2 && /^\d+$/.test(parts[parts.length - 2]) ? 3 : 1;
  return parts.slice(-keep).join(".");
}

function paramText(value) {
  return typeof value === "number" ? fixed(value, 4).replace(/\.?0+$/, "") || "0" : String(value);
}

export function studiesView(signal) {
  const body = h("tbody");
  const empty = h("div", { class: "empty", hidden: true },
    "No studies yet. Start one with POST /studies or `tapefit study create`.");
  const error = h("div", { class: "error", hidden: true });
  const table = h("table", { class: "jobs studies", hidden: true },
    h("thead", {}, h("tr", {}, ["Study", "State", "Name", "Trials", "Best", "Created"].map((t) => h("th", {}, t)))),
    body);
  let timer = 0;
  async function refresh() {
    clearTimeout(timer);
    try {
      const page = await api("/studies?limit=100", { signal });
      body.replaceChildren(...page.items.map((s) => h("tr", {
        class: "job-row", dataset: { id: s.id }, onclick: () => { location.hash = `#/studies/${s.id}`; },
      },
      h("td", { class: "num" }, h("a", { href: `#/studies/${s.id}` }, `#${s.id}`)),
      h("td", {}, studyBadge(s.state)),
      h("td", {}, s.name),
      h("td", { class: "num" }, `${s.trials}/${s.trials_planned}`),
      h("td", { class: "num" }, s.best ? fixed(s.best.value) : "—"),
      h("td", { class: "muted small" }, ago(s.created_at)))));
      empty.hidden = page.items.length > 0;
      table.hidden = page.items.length === 0;
      error.hidden = true;
    } catch (e) {
      if (signal.aborted) return;
      error.textContent = e.message;
      error.hidden = false;
    }
    if (!signal.aborted) timer = setTimeout(refresh, REFRESH_MS);
  }
  signal.addEventListener("abort", () => clearTimeout(timer));
  refresh();
  return h("section", { class: "card" }, h("div", { class: "card-head" }, h("h2", {}, "Studies")),
    error, empty, h("div", { class: "table-wrap" }, table));
}

export function studyView(id, signal) {
  const title = h("h2", {}, `Study #${id}`);
  const state = h("span");
  const summary = h("p", { class: "muted" });
  const error = h("div", { class: "error", hidden: true });
  const cancel = h("button", { class: "button small danger", type: "button", hidden: true, onclick: stop }, "Cancel study");
  const body = h("tbody");
  const head = h("tr");
  const table = h("table", { class: "jobs trials" }, h("thead", {}, head), body);
  const bestCanvas = h("canvas", { class: "study-chart", id: "best-chart", "aria-label": "best value so far" });
  const parallelCanvas = h("canvas", { class: "study-chart", id: "parallel-chart", "aria-label": "params against the objective" });
  const curvesCanvas = h("canvas", { class: "study-chart", id: "curves-chart", "aria-label": "the trials' validation curves" });
  const legend = h("div", { class: "legend" });
  let best = null;
  let parallel = null;
  let curves = null;
  const epochs = new Map(); // job id -> {count, rows}: re-read only when a trial reports
  let timer = 0;

  async function stop() {
    cancel.disabled = true;
    try {
      await api(`/studies/${id}/cancel`, { method: "POST", signal });
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    }
    refresh();
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const study = await api(`/studies/${id}`, { signal });
      await render(study);
      error.hidden = true;
      if (study.state === "running" && !signal.aborted) timer = setTimeout(refresh, REFRESH_MS);
    } catch (e) {
      if (signal.aborted) return;
      error.textContent = e.message;
      error.hidden = false;
      timer = setTimeout(refresh, REFRESH_MS * 2);
    }
  }

  async function render(study) {
    const { metric, direction } = study.spec.objective;
    const paths = Object.keys(study.spec.space);
    title.textContent = `Study #${study.id}: ${study.name}`;
    state.replaceChildren(studyBadge(study.state));
    cancel.hidden = study.state !== "running";
    summary.textContent = `${study.trials.length}/${study.spec.trials} trials · ${study.spec.sampler} sampler · `
      + `${study.spec.pruner} pruner · ${study.spec.parallel} at a time · ${metric} (${direction}) · `
      + `${study.epochs_run} epochs run`
      + (study.best ? ` · best: trial ${study.best.number}, ${fixed(study.best.value)} (model study-${study.id})` : "");
    head.replaceChildren(...["Trial", "Job", "State", "Epochs", metric, ...paths.map(shortName)].map((t) => h("th", {}, t)));
    body.replaceChildren(...study.trials.map((t) => h("tr", {
      class: `trial-row${study.best && study.best.number === t.number ? " best" : ""}`, dataset: { number: t.number, state: t.state },
    },
    h("td", { class: "num" }, String(t.number)),
    h("td", { class: "num" }, t.job_id ? h("a", { href: `#/jobs/${t.job_id}` }, `#${t.job_id}`) : "—"),
    h("td", {}, h("span", { class: `badge ${t.state}` }, t.state)),
    h("td", { class: "num" }, String(t.epochs_run)),
    h("td", { class: "num" }, fixed(t.value)),
    ...paths.map((p) => h("td", { class: "num" }, paramText(t.params[p]))))));

    // The best value so far, trial by trial, in the order they ended.
    const ended = study.trials.filter((t) => t.value !== null && t.state === "succeeded")
      .sort((a, b) => a.number - b.number);
    const better = direction === "maximize" ? (a, b) => a > b : (a, b) => a < b;
    let running = null;
    const points = ended.map((t) => {
      if (running === null || better(t.value, running)) running = t.value;
      return [t.number, running];
    });
    best ??= new LinesChart(bestCanvas, { xLabel: "trial", yLabel: `best ${metric}`, steps: true });
    best.set([
      { label: "trials", color: "rgba(154, 161, 178, 0.9)", points: ended.map((t) => [t.number, t.value]), width: 0.01 },
      { label: "best so far", color: PALETTE[0], points },
    ]);

    // Parallel coordinates: one axis per param, then the objective (pruned trials at their last value).
    parallel ??= new ParallelChart(parallelCanvas);
    const dimensions = paths.map((p) => {
      const d = study.spec.space[p];
      return d.choices ? { name: shortName(p), path: p, categorical: true, levels: d.choices.map(String) }
        : { name: shortName(p), path: p, log: Boolean(d.log), low: d.low, high: d.high };
    });
    dimensions.push({ name: metric, path: null });
    const values = study.trials.map((t) => t.value).filter((v) => v !== null);
    const [lo, hi] = [Math.min(...values), Math.max(...values)];
    const shade = (v) => {
      if (v === null || !(hi > lo)) return PALETTE[0];
      const good = direction === "maximize" ? (v - lo) / (hi - lo) : (hi - v) / (hi - lo);
      return `hsl(${Math.round(10 + good * 130)}, 70%, 42%)`;
    };
    parallel.set(dimensions, study.trials.filter((t) => t.value !== null).map((t) => ({
      values: Object.fromEntries(dimensions.map((d) => [d.name, d.path ? t.params[d.path] : t.value])),
      color: t.state === "pruned" ? "rgba(154, 161, 178, 0.7)" : shade(t.value),
      strong: study.best && study.best.number === t.number,
    })));

    // Each trial's objective per epoch, overlaid: pruned trials stop early.
    const withJobs = study.trials.filter((t) => t.job_id && t.epochs_run > 0);
    await Promise.all(withJobs.map(async (t) => {
      const known = epochs.get(t.job_id);
      if (known && known.count === t.epochs_run) return;
      const rows = await api(`/jobs/${t.job_id}/epochs`, { signal });
      epochs.set(t.job_id, { count: rows.length, rows });
    }));
    curves ??= new LinesChart(curvesCanvas, { xLabel: "epoch", yLabel: metric });
    const series = withJobs.map((t) => ({
      label: `trial ${t.number}`,
      color: PALETTE[t.number % PALETTE.length],
      dashed: t.state === "pruned",
      points: (epochs.get(t.job_id)?.rows ?? []).map((e) => [e.epoch + 1, e[metric]]).filter(([, v]) => v !== null),
    }));
    curves.set(series);
    legend.replaceChildren(...series.map((s) => h("span", { class: "legend-item" }, swatch(s.color),
      s.dashed ? `${s.label} (pruned)` : s.label)));
  }

  signal.addEventListener("abort", () => clearTimeout(timer));
  refresh();
  return h("div", { class: "study-page" },
    h("section", { class: "card" },
      h("div", { class: "card-head" }, title, state, cancel), summary, error,
      h("div", { class: "table-wrap" }, table)),
    h("div", { class: "study-charts" },
      h("section", { class: "card" }, h("h3", {}, "Best so far"), bestCanvas),
      h("section", { class: "card" }, h("h3", {}, "Params against the objective"), parallelCanvas)),
    h("section", { class: "card" }, h("h3", {}, "Validation curves"), legend, curvesCanvas));
}
