// The jobs page: a form to start a job, and the jobs with their live state and progress.

import { api } from "./api.js";
import { comparePanel } from "./compare.js";
import { datasetSelect } from "./datasets.js";
import { FINAL, ago, badge, describeModel, describeTraining, fixed, h, parseLayers, percent } from "./ui.js";

const OPTIMIZERS = ["rmsprop", "adam", "sgd", "momentum", "manual_sgd"];
// The book's MNIST examples: chapter 2's dense net and chapter 8's convnet (99% in 5 epochs).
const BOOK = { implementation: "keras", optimizer: "rmsprop", learning_rate: "0.001", epochs: "5" };
const PRESETS = {
  dense: { label: "Dense 512 → 10 (chapter 2)", fields: { ...BOOK, layers: "512, 10", batch_size: "128" } },
  convnet: {
    label: "Convnet (chapter 8)",
    fields: { ...BOOK, layers: "conv:32:3, pool:2, conv:64:3, pool:2, conv:128:3, flatten, 10", batch_size: "64" },
  },
};
const REFRESH_MS = 1500;
// The jobs ticked for comparison; kept while the page refreshes (and across visits).
const picked = new Set();

function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", { class: "field-label" }, label), input,
    hint ? h("span", { class: "field-hint" }, hint) : null);
}

function form() {
  const inputs = {
    layers: h("input", { name: "layers", value: "512, 10", autocomplete: "off", spellcheck: "false" }),
    implementation: h("select", { name: "implementation" },
      h("option", { value: "keras" }, "Keras layers"), h("option", { value: "naive" }, "NaiveDense (from scratch, dense only)")),
    optimizer: h("select", { name: "optimizer" }, OPTIMIZERS.map((o) => h("option", { value: o }, o))),
    learning_rate: h("input", { name: "learning_rate", type: "number", value: "0.001", step: "any", min: "0" }),
    epochs: h("input", { name: "epochs", type: "number", value: "5", min: "1", max: "100" }),
    batch_size: h("input", { name: "batch_size", type: "number", value: "128", min: "1" }),
    train_limit: h("input", { name: "train_limit", type: "number", min: "1", placeholder: "all" }),
    shuffle: h("input", { name: "shuffle", type: "checkbox", checked: true }),
    validation_split: h("input", { name: "validation_split", type: "number", value: "0", min: "0", max: "0.5", step: "0.05" }),
    patience: h("input", { name: "patience", type: "number", min: "0", max: "100", placeholder: "off" }),
    restore_best: h("input", { name: "restore_best", type: "checkbox" }),
  };
  const layersHint = h("span", { class: "field-hint" }, "dense units (512, 10), or conv:32:3, pool:2, avgpool:2, gap, flatten, dropout:0.5, batchnorm; the last is dense with the 10 digits");
  const limitHint = h("span", { class: "field-hint" }, "the first N of 60,000; empty: all");
  // A dataset's classes set the last layer's units (one per class) and its size the limit's hint.
  let classes = 10;
  const lastUnits = () => {
    inputs.layers.value = inputs.layers.value.replace(/\d+(?=(:\w+)?\s*$)/, String(classes));
  };
  inputs.dataset = datasetSelect((dataset) => {
    if (!dataset) return;
    classes = dataset.classes.length;
    lastUnits();
    layersHint.textContent = `dense units (64, ${classes}), or conv:32:3, pool:2, avgpool:2, gap, flatten, dropout:0.5, batchnorm; the last is dense with ${classes} units, one per class of ${dataset.name}`;
    limitHint.textContent = dataset.train_count
      ? `the first N of ${dataset.train_count.toLocaleString("en-US")}; empty: all` : "empty: all";
  });
  // A preset fills in the model and its training; editing the layers makes the form custom.
  const preset = h("select", { name: "preset" },
    h("option", { value: "" }, "Custom"),
    Object.entries(PRESETS).map(([value, { label }]) => h("option", { value }, label)));
  preset.addEventListener("change", () => {
    for (const [name, value] of Object.entries(PRESETS[preset.value]?.fields ?? {})) inputs[name].value = value;
    lastUnits();
  });
  inputs.layers.addEventListener("input", () => { preset.value = ""; });
  const error = h("div", { class: "error", hidden: true });
  const button = h("button", { class: "button primary", type: "submit" }, "Start training");

  async function submit(event) {
    event.preventDefault();
    error.hidden = true;
    let spec;
    try {
      spec = {
        model: { implementation: inputs.implementation.value, layers: parseLayers(inputs.layers.value) },
        optimizer: { name: inputs.optimizer.value, learning_rate: Number(inputs.learning_rate.value) },
        epochs: Number(inputs.epochs.value),
        batch_size: Number(inputs.batch_size.value),
        dataset: {
          ...(inputs.dataset.value === "mnist" ? {} : { id: Number(inputs.dataset.value) }),
          train_limit: inputs.train_limit.value ? Number(inputs.train_limit.value) : null,
        },
        shuffle: inputs.shuffle.checked,
        ...controls(inputs),
      };
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
      return;
    }
    button.disabled = true;
    try {
      const job = await api("/jobs", { method: "POST", json: spec });
      location.hash = `#/jobs/${job.id}`;
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  return h("form", { class: "card job-form", onsubmit: submit, novalidate: true },
    h("div", { class: "card-head" }, h("h2", {}, "New training job")),
    h("p", { class: "muted small" }, "Trained batch by batch with GradientTape. Every field has the book's default, on MNIST."),
    field("Dataset", inputs.dataset),
    h("label", { class: "field" }, h("span", { class: "field-label" }, "Layers"), inputs.layers, layersHint),
    h("div", { class: "row" }, field("Preset", preset), field("Implementation", inputs.implementation)),
    h("div", { class: "row" }, field("Optimizer", inputs.optimizer), field("Learning rate", inputs.learning_rate)),
    h("div", { class: "row" }, field("Epochs", inputs.epochs), field("Batch size", inputs.batch_size)),
    h("label", { class: "field" }, h("span", { class: "field-label" }, "Training samples"), inputs.train_limit, limitHint),
    field("Shuffle each epoch", inputs.shuffle, "off: in order, as the book's BatchGenerator"),
    h("div", { class: "row" },
      field("Validation split", inputs.validation_split, "held out for val loss and accuracy"),
      field("Early stopping", inputs.patience, "patience in epochs; empty: off")),
    field("Restore the best epoch", inputs.restore_best, "with early stopping: end with its weights"),
    error,
    button);
}

// The form's training controls as job spec fields: early stopping watches the validation
// loss when there is a validation split, else the training loss.
function controls(inputs) {
  const split = Number(inputs.validation_split.value || 0);
  const spec = { validation_split: split };
  if (inputs.patience.value !== "") {
    spec.early_stopping = {
      monitor: split > 0 ? "val_loss" : "train_loss",
      patience: Number(inputs.patience.value),
      restore_best_weights: inputs.restore_best.checked,
    };
  }
  return spec;
}

function progressCell(job) {
  const p = job.progress;
  const fraction = job.state === "succeeded" ? 1 : p.fraction;
  const label = job.state === "queued"
    ? (job.queue_position ? `#${job.queue_position} in queue` : "queued")
    : job.state === "running" ? `epoch ${Math.min(p.epoch + 1, p.epochs)}/${p.epochs}` : `${p.epochs} epoch${p.epochs === 1 ? "" : "s"}`;
  return h("td", { class: "progress-cell" },
    h("div", { class: `meter ${job.state}` }, h("div", { style: `width: ${(fraction * 100).toFixed(1)}%` })),
    h("span", { class: "muted small" }, label));
}

function row(job, refresh, admin) {
  const open = () => { location.hash = `#/jobs/${job.id}`; };
  const cancel = async (event) => {
    event.stopPropagation();
    event.target.disabled = true;
    try {
      await api(`/jobs/${job.id}/cancel`, { method: "POST" });
    } finally {
      refresh();
    }
  };
  // A finished job can be deleted, with its loss curve and model.
  const remove = async (event) => {
    event.stopPropagation();
    if (!confirm(`Delete job #${job.id}, its loss curve and its model?`)) return;
    event.target.disabled = true;
    try {
      await api(`/jobs/${job.id}`, { method: "DELETE" });
    } finally {
      refresh();
    }
  };
  const pick = h("input", { type: "checkbox", class: "pick", value: String(job.id), checked: picked.has(job.id),
    "aria-label": `compare job ${job.id}`, onclick: (event) => event.stopPropagation(),
    onchange: (event) => { if (event.target.checked) picked.add(job.id); else picked.delete(job.id); refresh.picked?.(); } });
  return h("tr", { class: "job-row", dataset: { id: job.id, state: job.state }, onclick: open },
    h("td", { class: "pick" }, pick),
    h("td", { class: "num" }, h("a", { href: `#/jobs/${job.id}` }, `#${job.id}`)),
    // Admins see every key's jobs: whose each is (no key: the admin token's).
    h("td", { class: "muted small owner", hidden: !admin }, job.owner_name ?? "admin"),
    h("td", {}, badge(job)),
    h("td", { class: "model" }, h("div", {}, describeModel(job.spec)), h("div", { class: "muted small" }, describeTraining(job.spec))),
    progressCell(job),
    h("td", { class: "num" }, fixed(job.loss)),
    h("td", { class: "num" }, percent(job.test_accuracy)),
    h("td", { class: "muted small when" }, ago(job.created_at)),
    h("td", { class: "actions" }, FINAL.includes(job.state)
      ? h("button", { class: "button small", type: "button", onclick: remove }, "Delete")
      : job.cancel_requested ? null
        : h("button", { class: "button small danger", type: "button", onclick: cancel }, "Cancel")));
}

export function jobsView(signal) {
  const body = h("tbody");
  const total = h("span", { class: "muted" });
  const error = h("div", { class: "error", hidden: true });
  const empty = h("div", { class: "empty", hidden: true }, "No jobs yet. Start one with the form.");
  const headings = ["", "Job", "Owner", "State", "Model", "Progress", "Loss", "Test acc.", "Created", ""];
  const heads = headings.map((t) => h("th", { class: t === "Created" ? "when" : null, hidden: t === "Owner" }, t));
  const table = h("table", { class: "jobs", hidden: true }, h("thead", {}, h("tr", {}, heads)), body);
  // Who this token is: an admin's list holds every key's jobs, so it shows their owners.
  let admin = false;
  api("/keys/me", { signal }).then((me) => {
    admin = me.admin;
    heads[2].hidden = !admin;
    refresh();
  }, () => {});

  let timer = 0;
  const compare = comparePanel(picked, signal);
  async function refresh() {
    clearTimeout(timer);
    try {
      const page = await api("/jobs?limit=50", { signal });
      body.replaceChildren(...page.items.map((job) => row(job, refresh, admin)));
      total.textContent = page.total ? `${page.total} in all` : "";
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
  refresh.picked = () => compare.update();
  refresh();

  return h("div", { class: "layout jobs-layout" },
    form(),
    h("div", {},
      h("section", { class: "card" },
        h("div", { class: "card-head" }, h("h2", {}, "Jobs"), total),
        error, empty, h("div", { class: "table-wrap" }, table)),
      compare));
}
