// One job: live figures, the loss curve from the event stream, its epochs, and, once it has
// trained, a pad to try its model on.

import { api, follow } from "./api.js";
import { LossChart } from "./chart.js";
import { datasetPredictor } from "./datasets.js";
import { predictor } from "./predictor.js";
import { FINAL, badge, describeModel, describeTraining, duration, fixed, h, percent } from "./ui.js";

// The history is fetched downsampled to about this many points, then the stream adds each batch.
const HISTORY_POINTS = 1500;

function tile(label) {
  const name = h("div", { class: "tile-label" }, label);
  const value = h("div", { class: "tile-value" }, "—");
  const node = h("div", { class: "tile" }, name, value);
  return {
    node,
    set: (text, newLabel = label) => {
      value.textContent = text;
      name.textContent = newLabel;
    },
  };
}

export function jobView(id, signal) {
  const title = h("h1", {}, `Job ${id}`);
  const state = h("span", { class: "state-box" });
  const cancel = h("button", { class: "button danger", type: "button", hidden: true }, "Cancel job");
  const spec = h("div", { class: "muted" });
  const failure = h("div", { class: "error", hidden: true });
  const tiles = {
    epoch: tile("Epoch"), step: tile("Step"), loss: tile("Loss"),
    speed: tile("Throughput"), eta: tile("Time left"), accuracy: tile("Test accuracy"),
  };
  const meterFill = h("div");
  const meter = h("div", { class: "meter wide" }, meterFill);
  const canvas = h("canvas", { class: "chart", dataset: { points: "0" } });
  const chart = new LossChart(canvas);
  const log = h("input", { type: "checkbox", onchange: (e) => chart.setLog(e.target.checked) });
  const epochRows = h("tbody");
  const epochsCard = h("section", { class: "card", hidden: true },
    h("div", { class: "card-head" }, h("h2", {}, "Epochs")),
    h("table", { class: "epochs" },
      h("thead", {}, h("tr", {}, ["Epoch", "Train loss", "Train acc.", "Val loss", "Val acc.", "Test loss", "Test acc.", "Time"].map((t) => h("th", {}, t)))),
      epochRows));
  const aside = h("div", { class: "aside" });

  let job = null;
  const epochs = new Map();
  let perEpoch = null;

  function showJob(next) {
    job = next;
    state.replaceChildren(badge(job));
    spec.textContent = `${describeModel(job.spec)} · ${describeTraining(job.spec)}`;
    cancel.hidden = FINAL.includes(job.state) || job.cancel_requested;
    failure.hidden = job.state !== "failed";
    failure.textContent = job.error ? `This job failed: ${job.error}` : "";
    const total = job.progress.total_steps;
    if (total) {
      perEpoch = total / job.spec.epochs;
      chart.setTotalSteps(total);
    }
    showProgress(job.progress);
    tiles.loss.set(fixed(job.loss));
    showAccuracy();
    if (job.state === "running") {
      showSpeed(job.samples_per_second, job.eta_seconds);
    } else {
      tiles.speed.set("—");
      const took = job.started_at && job.finished_at ? (new Date(job.finished_at) - new Date(job.started_at)) / 1000 : null;
      if (job.state === "queued") tiles.eta.set(job.queue_position ? `#${job.queue_position} in queue` : "—", "Queue");
      else tiles.eta.set(took !== null ? duration(took) : "—", "Duration");
    }
    if (FINAL.includes(job.state)) chart.setEmptyText("No batch was trained.");
    if (job.state === "succeeded" && !aside.firstChild) {
      aside.append(job.spec.dataset.id
        ? datasetPredictor({ model: String(job.id), datasetId: job.spec.dataset.id })
        : predictor({ model: String(job.id), title: "Try this model" }));
    }
  }

  function showProgress(p) {
    tiles.epoch.set(`${Math.min(p.epoch + (job && job.state === "running" ? 1 : 0), p.epochs) || 0} / ${p.epochs}`);
    tiles.step.set(p.total_steps ? `${p.step.toLocaleString("en-US")} / ${p.total_steps.toLocaleString("en-US")}` : "—");
    const fraction = job && job.state === "succeeded" ? 1 : p.fraction;
    meterFill.style.width = `${(fraction * 100).toFixed(1)}%`;
    meter.className = `meter wide ${job ? job.state : ""}`;
  }

  // The final test accuracy; while training, the last epoch's.
  function showAccuracy() {
    const last = [...epochs.values()].sort((a, b) => b.epoch - a.epoch)[0];
    if (job && job.test_accuracy !== null) tiles.accuracy.set(percent(job.test_accuracy, 2), "Test accuracy");
    else if (last) tiles.accuracy.set(percent(last.test_accuracy, 2), `Test acc. (epoch ${last.epoch + 1})`);
    else tiles.accuracy.set("—", "Test accuracy");
  }

  function showSpeed(samples, eta) {
    tiles.speed.set(samples ? `${Math.round(samples).toLocaleString("en-US")} /s` : "—");
    tiles.eta.set(eta !== null && eta !== undefined ? duration(eta) : "—");
  }

  function addEpoch(row) {
    epochs.set(row.epoch, row);
    const sorted = [...epochs.values()].sort((a, b) => a.epoch - b.epoch);
    epochRows.replaceChildren(...sorted.map((e) => h("tr", {},
      h("td", { class: "num" }, String(e.epoch + 1)),
      h("td", { class: "num" }, fixed(e.train_loss)),
      h("td", { class: "num" }, percent(e.train_accuracy, 2)),
      h("td", { class: "num" }, fixed(e.val_loss ?? null)),
      h("td", { class: "num" }, percent(e.val_accuracy ?? null, 2)),
      h("td", { class: "num" }, fixed(e.test_loss)),
      h("td", { class: "num" }, percent(e.test_accuracy, 2)),
      h("td", { class: "num" }, `${e.seconds < 0.1 ? e.seconds.toFixed(2) : e.seconds.toFixed(1)} s`))));
    epochsCard.hidden = false;
    showAccuracy();
    if (perEpoch) {
      chart.setEpochs(sorted.map((e) => ({ epoch: e.epoch, x: (e.epoch + 1) * perEpoch - 1, accuracy: e.test_accuracy, validation: e.val_accuracy ?? null })));
    }
  }

  function onEvent(type, data) {
    if (type === "state") {
      showJob(data);
      for (const e of epochs.values()) addEpoch(e); // total_steps may be known now
    } else if (type === "batch") {
      chart.addPoint(data.step, data.loss);
      tiles.loss.set(fixed(data.loss));
    } else if (type === "epoch") {
      addEpoch(data);
    } else if (type === "progress") {
      if (data.total_steps) {
        perEpoch = data.total_steps / data.epochs;
        chart.setTotalSteps(data.total_steps);
      }
      showProgress(data);
      showSpeed(data.samples_per_second, data.eta_seconds);
    }
  }

  async function start() {
    try {
      showJob(await api(`/jobs/${id}`, { signal }));
      // The history first, folded into at most HISTORY_POINTS buckets; then the epochs; then
      // the stream from the last step the history holds (the map of epochs drops repeats).
      const summary = await api(`/jobs/${id}/metrics?max_points=${HISTORY_POINTS}`, { signal });
      chart.setHistory(summary.items);
      for (const row of await api(`/jobs/${id}/epochs`, { signal })) addEpoch(row);
      const last = summary.items.length ? String(summary.items[summary.items.length - 1].step_end) : null;
      await follow(`/jobs/${id}/events`, { lastEventId: last, onEvent, signal });
    } catch (e) {
      if (signal.aborted) return;
      failure.textContent = e.message;
      failure.hidden = false;
    }
  }

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      showJob(await api(`/jobs/${id}/cancel`, { method: "POST" }));
    } catch (e) {
      failure.textContent = e.message;
      failure.hidden = false;
    } finally {
      cancel.disabled = false;
    }
  });
  start();

  return h("div", { class: "job-page" },
    h("div", { class: "job-head" },
      h("div", {}, h("a", { class: "back", href: "#/" }, "← All jobs"),
        h("div", { class: "title-line" }, title, state), spec),
      cancel),
    failure,
    h("div", { class: "tiles" }, Object.values(tiles).map((t) => t.node)),
    meter,
    h("div", { class: "layout job-layout" },
      h("div", { class: "main-column" },
        h("section", { class: "card chart-card" },
          h("div", { class: "card-head" }, h("h2", {}, "Training loss"),
            h("div", { class: "legend" },
              h("span", { class: "key loss" }, "loss per batch"),
              h("span", { class: "key accuracy" }, "test accuracy per epoch"),
              h("label", { class: "toggle" }, log, "log scale"))),
          canvas),
        epochsCard),
      aside));
}
