// The datasets page: upload one (with a progress bar), and the list with shape, classes and
// counts, a strip of sample images for image datasets. Also the job form's dataset choice.

import { api, token } from "./api.js";
import { ago, h } from "./ui.js";

export function shape(dataset) {
  return dataset.input_shape.join(" × ");
}

export function classesText(dataset, count = 6) {
  const names = dataset.classes.slice(0, count).join(", ");
  return `${dataset.classes.length} classes: ${names}${dataset.classes.length > count ? ", …" : ""}`;
}

function megabytes(bytes) {
  return bytes === null || bytes === undefined ? "—" : `${(bytes / 1e6).toFixed(bytes < 1e6 ? 2 : 1)} MB`;
}

function counts(dataset) {
  if (dataset.train_count === null) return "—";
  return `${dataset.train_count.toLocaleString("en-US")} / ${dataset.test_count.toLocaleString("en-US")}`;
}

// POST a form with XMLHttpRequest, whose upload reports progress (fetch's does not).
function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    if (token.get()) xhr.setRequestHeader("Authorization", `Bearer ${token.get()}`);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.upload.addEventListener("load", () => onProgress(1));
    xhr.addEventListener("load", () => {
      const body = xhr.response || {};
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else if (xhr.status === 401) reject(new Error(token.get() ? "the server refused this token" : "this server needs an API token"));
      else reject(new Error(body.message || body.error || `HTTP ${xhr.status}`));
    });
    xhr.addEventListener("error", () => reject(new Error("the server does not answer")));
    xhr.send(form);
  });
}

function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", { class: "field-label" }, label), input,
    hint ? h("span", { class: "field-hint" }, hint) : null);
}

function uploadForm(onUploaded) {
  const inputs = {
    file: h("input", { name: "file", type: "file", accept: ".npz,.csv,.zip" }),
    name: h("input", { name: "name", autocomplete: "off", placeholder: "the file's name" }),
    label_column: h("input", { name: "label_column", autocomplete: "off", placeholder: "label" }),
    test_fraction: h("input", { name: "test_fraction", type: "number", step: "any", min: "0", max: "0.9", placeholder: "0.2" }),
    image_size: h("input", { name: "image_size", autocomplete: "off", placeholder: "most common", pattern: "\\d+x\\d+" }),
    color: h("select", { name: "color" }, h("option", { value: "" }, "as the images are"),
      h("option", { value: "grayscale" }, "grayscale"), h("option", { value: "rgb" }, "rgb")),
  };
  const bar = h("div", { class: "bar-fill-x" });
  const meter = h("div", { class: "meter upload-meter", hidden: true }, bar);
  const status = h("div", { class: "muted small upload-status" });
  const error = h("div", { class: "error", hidden: true });
  const button = h("button", { class: "button primary", type: "submit" }, "Upload");

  async function submit(event) {
    event.preventDefault();
    error.hidden = true;
    const file = inputs.file.files[0];
    if (!file) {
      error.textContent = "choose a file: .npz, .csv or .zip";
      error.hidden = false;
      return;
    }
    const form = new FormData();
    for (const [key, input] of Object.entries(inputs)) {
      if (key !== "file" && input.value.trim()) form.append(key, input.value.trim());
    }
    form.append("file", file, file.name);
    button.disabled = true;
    meter.hidden = false;
    bar.style.width = "0%";
    const show = (fraction) => {
      bar.style.width = `${(fraction * 100).toFixed(1)}%`;
      status.textContent = fraction < 1
        ? `uploading ${Math.round(fraction * 100)}% of ${megabytes(file.size)}`
        : "checking, splitting and storing it…";
    };
    show(0);
    try {
      const dataset = await upload("/datasets", form, show);
      status.textContent = `dataset ${dataset.id} stored: ${dataset.kind}, ${shape(dataset)}, ${classesText(dataset, 3)}`;
      inputs.file.value = "";
      onUploaded();
    } catch (e) {
      meter.hidden = true;
      status.textContent = "";
      error.textContent = e.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  return h("form", { class: "card job-form upload-form", onsubmit: submit, novalidate: true },
    h("div", { class: "card-head" }, h("h2", {}, "Upload a dataset")),
    h("p", { class: "muted small" }, "An .npz (x_train, y_train, x_test, y_test, or x, y), a .csv with a header row and a label column, or a .zip with a folder of PNG/JPEG images per class."),
    field("File", inputs.file),
    field("Name", inputs.name),
    h("div", { class: "row" }, field("Label column", inputs.label_column, "CSV"), field("Test fraction", inputs.test_fraction, "when the file has no test split")),
    h("div", { class: "row" }, field("Image size", inputs.image_size, "HxW, image folders"), field("Colour", inputs.color, "image folders")),
    meter, status, error, button);
}

function strip(dataset, signal) {
  const box = h("div", { class: "sample-strip" });
  api(`/datasets/${dataset.id}/samples`, { signal }).then((samples) => {
    const [count, height, width, channels] = samples.shape;
    const raw = Uint8Array.from(atob(samples.pixels), (c) => c.charCodeAt(0));
    for (let k = 0; k < count; k++) {
      const canvas = h("canvas", { class: "sample", width, height, title: samples.labels[k] });
      const ctx = canvas.getContext("2d");
      const image = ctx.createImageData(width, height);
      for (let i = 0; i < width * height; i++) {
        const at = (k * width * height + i) * channels;
        const [r, g, b] = channels === 1 ? [raw[at], raw[at], raw[at]] : [raw[at], raw[at + 1], raw[at + 2]];
        image.data.set([r, g, b, 255], i * 4);
      }
      ctx.putImageData(image, 0, 0);
      box.append(h("figure", {}, canvas, h("figcaption", {}, samples.labels[k])));
    }
  }).catch(() => {});
  return box;
}

function rows(dataset, refresh, signal) {
  const remove = async (event) => {
    event.target.disabled = true;
    try {
      await api(`/datasets/${dataset.id}`, { method: "DELETE" });
    } catch (e) {
      alert(e.message);
    } finally {
      refresh();
    }
  };
  const row = h("tr", { class: "dataset-row", dataset: { id: dataset.id ?? "mnist", kind: dataset.kind } },
    h("td", {}, h("div", {}, dataset.name), h("div", { class: "muted small" }, dataset.builtin ? "built in" : `#${dataset.id} · ${dataset.format}`)),
    h("td", {}, dataset.kind),
    h("td", { class: "num shape" }, shape(dataset)),
    h("td", { class: "classes" }, classesText(dataset)),
    h("td", { class: "num" }, counts(dataset)),
    h("td", { class: "num" }, megabytes(dataset.bytes)),
    h("td", { class: "muted small when" }, dataset.created_at ? ago(dataset.created_at) : ""),
    h("td", { class: "actions" }, dataset.builtin ? null
      : h("button", { class: "button small danger", type: "button", onclick: remove }, "Delete")));
  if (dataset.kind !== "image" || dataset.builtin) return [row];
  return [row, h("tr", { class: "strip-row" }, h("td", { colspan: 8 }, strip(dataset, signal)))];
}

export function datasetsView(signal) {
  const body = h("tbody");
  const total = h("span", { class: "muted" });
  const error = h("div", { class: "error", hidden: true });
  const headings = ["Dataset", "Kind", "Input", "Classes", "Train / test", "Stored", "Created", ""];
  const table = h("table", { class: "datasets" },
    h("thead", {}, h("tr", {}, headings.map((t) => h("th", { class: t === "Created" ? "when" : null }, t)))),
    body);

  async function refresh() {
    try {
      const page = await api("/datasets?limit=100", { signal });
      body.replaceChildren(...page.items.flatMap((d) => rows(d, refresh, signal)));
      total.textContent = `${page.total} in all`;
      error.hidden = true;
    } catch (e) {
      if (signal.aborted) return;
      error.textContent = e.message;
      error.hidden = false;
    }
  }
  refresh();

  return h("div", { class: "layout jobs-layout" },
    uploadForm(refresh),
    h("section", { class: "card" },
      h("div", { class: "card-head" }, h("h2", {}, "Datasets"), total),
      error, h("div", { class: "table-wrap" }, table)));
}

// The job form's dataset choice: a select of every dataset; calls onChange(dataset) with the
// chosen one (mnist first and by default).
export function datasetSelect(onChange) {
  const select = h("select", { name: "dataset" }, h("option", { value: "mnist" }, "mnist (built in)"));
  const known = new Map();
  select.addEventListener("change", () => onChange(known.get(select.value)));
  api("/datasets?limit=100").then((page) => {
    select.replaceChildren(...page.items.map((d) => {
      const value = d.builtin ? "mnist" : String(d.id);
      known.set(value, d);
      return h("option", { value }, d.builtin ? `${d.name} (built in)` : `#${d.id} ${d.name} · ${d.kind} · ${d.classes.length} classes`);
    }));
    onChange(known.get(select.value));
  }).catch(() => {});
  return select;
}

// "Try this model" for a job on an uploaded dataset: an image upload (image datasets) or a
// row of raw feature values (tabular ones), answered in the dataset's labels with the top
// probabilities as bars. (MNIST models keep the draw-a-digit pad.)
export function datasetPredictor({ model, datasetId }) {
  const result = h("div", { class: "dataset-result" });
  const error = h("div", { class: "error", hidden: true });
  const body = h("div", { class: "dataset-try" }, h("p", { class: "muted small" }, "Loading the dataset…"));
  const card = h("section", { class: "card predictor dataset-predictor" },
    h("div", { class: "card-head" }, h("h2", {}, "Try this model"), h("span", { class: "muted" }, `dataset ${datasetId}`)),
    body, error, result);

  function show(prediction, classes) {
    error.hidden = true;
    card.dataset.label = prediction.label;
    const top = prediction.probabilities.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, 5);
    result.replaceChildren(
      h("div", { class: "guess" }, h("div", { class: "guess-label" }, "prediction"),
        h("div", { class: "dataset-label" }, prediction.label),
        h("div", { class: "guess-text" }, `${(prediction.probabilities[prediction.class] * 100).toFixed(1)}% sure`)),
      h("div", { class: "dataset-bars" }, top.map(([p, i]) =>
        h("div", { class: `dataset-bar${i === prediction.class ? " top" : ""}` },
          h("span", { class: "dataset-bar-label" }, classes[i] ?? String(i)),
          h("span", { class: "meter" }, h("div", { style: `width: ${(p * 100).toFixed(1)}%` })),
          h("span", { class: "num small" }, `${(p * 100).toFixed(1)}%`)))));
  }

  async function ask(init, classes) {
    try {
      const answer = await api(`/jobs/${encodeURIComponent(model)}/predict`, { method: "POST", ...init });
      show(answer.predictions[0], classes);
    } catch (e) {
      result.replaceChildren();
      error.textContent = e.message;
      error.hidden = false;
    }
  }

  api(`/datasets/${datasetId}`).then((dataset) => {
    if (dataset.kind === "image") {
      const file = h("input", { type: "file", accept: ".png,.jpg,.jpeg", "aria-label": "image" });
      file.addEventListener("change", () => {
        if (!file.files[0]) return;
        const form = new FormData();
        form.append("file", file.files[0], file.files[0].name);
        ask({ body: form }, dataset.classes);
      });
      body.replaceChildren(h("p", { class: "muted small" }, `A PNG or JPEG, resized to ${dataset.input_shape.slice(0, 2).join(" × ")} as the training images were.`), file);
    } else {
      const row = h("input", { class: "feature-row", autocomplete: "off", spellcheck: "false",
        placeholder: `${dataset.input_shape[0]} numbers, comma-separated` });
      const go = h("button", { class: "button primary small", type: "submit" }, "Predict");
      const submit = (event) => {
        event.preventDefault();
        const values = row.value.split(",").map((v) => Number(v.trim()));
        if (values.some((v) => !Number.isFinite(v))) {
          error.textContent = "give numbers, separated by commas";
          error.hidden = false;
          return;
        }
        ask({ json: { instances: [values] } }, dataset.classes);
      };
      body.replaceChildren(h("form", { class: "row-form", onsubmit: submit, novalidate: true },
        h("p", { class: "muted small" }, "Raw feature values, as in the uploaded file: the model standardises them itself."), row, go));
    }
  }).catch((e) => {
    body.replaceChildren();
    error.textContent = e.message;
    error.hidden = false;
  });
  return card;
}
