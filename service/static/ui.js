// Small DOM and formatting helpers shared by the views.

// h("div", {class: "card"}, child, "text", ...): an element; on* attributes become listeners.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    // Through the CSSOM: the page's Content-Security-Policy refuses style="" attributes.
    else if (key === "style") el.style.cssText = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// service.schemas.FINAL_STATES: a pruned job is a study's trial its pruner stopped.
export const FINAL = ["succeeded", "failed", "cancelled", "pruned"];

export function badge(job) {
  const label = job.state === "running" && job.cancel_requested ? "stopping" : job.state;
  return h("span", { class: `badge ${job.state}` }, label);
}

export function percent(value, digits = 1) {
  return value === null || value === undefined ? "—" : `${(value * 100).toFixed(digits)}%`;
}

export function fixed(value, digits = 4) {
  if (value === null || value === undefined) return "—";
  // A loss near zero keeps two significant digits instead of reading 0.0000.
  return value !== 0 && Math.abs(value) < 10 ** -(digits - 1) ? value.toExponential(1) : value.toFixed(digits);
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.round(seconds);
  const [hours, minutes, secs] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60), s % 60];
  const pad = (n) => String(n).padStart(2, "0");
  return hours ? `${hours}:${pad(minutes)}:${pad(secs)}` : `${minutes}:${pad(secs)}`;
}

// One layer in a few characters, as the CLI's summary line: 512, conv32x3, maxpool2, bn.
export function describeLayer(layer) {
  const type = layer.type ?? "dense"; // no type: dense, as the specs before typed layers
  if (type === "dense") return String(layer.units);
  if (type === "conv2d") {
    const strides = layer.strides ?? 1;
    return `conv${layer.filters}x${layer.kernel_size}${strides === 1 ? "" : `/${strides}`}`;
  }
  if (type === "max_pool2d" || type === "avg_pool2d") return `${type.slice(0, 3)}pool${layer.pool_size}`;
  if (type === "dropout") return `dropout${layer.rate}`;
  return { global_avg_pool2d: "gap", batch_norm: "bn" }[type] ?? type;
}

export function describeModel(spec) {
  const layers = spec.model.layers.map(describeLayer).join("–");
  return `${spec.model.implementation} ${layers}`;
}

export function describeTraining(spec) {
  let images = spec.dataset.train_limit ? `${spec.dataset.train_limit.toLocaleString("en-US")} images` : "all images";
  if (spec.dataset.id) {  // an uploaded dataset: its samples, not MNIST's images
    images = `dataset ${spec.dataset.id} (${spec.dataset.train_limit ? spec.dataset.train_limit.toLocaleString("en-US") : "all"} samples)`;
  }
  const order = spec.shuffle === false ? " · in order" : "";
  return `${spec.optimizer.name} lr ${spec.optimizer.learning_rate} · ${spec.epochs} epoch${spec.epochs === 1 ? "" : "s"} · batch ${spec.batch_size} · ${images}${order}`;
}

export function ago(iso) {
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

// How each layer is written in the form, as the CLI's --layers.
const SYNTAX = {
  dense: "UNITS[:ACTIVATION]", conv2d: "conv:FILTERS:KERNEL[:STRIDES][:same][:ACTIVATION]",
  max_pool2d: "pool[:SIZE[:STRIDES]]", avg_pool2d: "avgpool[:SIZE[:STRIDES]]",
  global_avg_pool2d: "gap", flatten: "flatten", dropout: "dropout:RATE", batch_norm: "batchnorm",
};
const LAYER_NAMES = {
  dense: "dense", conv: "conv2d", conv2d: "conv2d", pool: "max_pool2d", maxpool: "max_pool2d",
  max_pool2d: "max_pool2d", avgpool: "avg_pool2d", avg_pool2d: "avg_pool2d",
  gap: "global_avg_pool2d", global_avg_pool2d: "global_avg_pool2d", flatten: "flatten",
  dropout: "dropout", batchnorm: "batch_norm", batch_norm: "batch_norm", bn: "batch_norm",
};
// How many numbers each layer takes (the rest are words: an activation, a padding).
const NUMBERS = { dense: [1, 1], conv2d: [2, 3], max_pool2d: [0, 2], avg_pool2d: [0, 2], dropout: [1, 1] };

// "512, 10", "256:tanh, 10" or "conv:32:3, pool:2, flatten, 10": layers for a job spec
// (convs and hidden dense layers relu, the last softmax by default).
export function parseLayers(text) {
  const parts = text.split(",").map((p) => p.trim()).filter(Boolean);
  if (!parts.length) throw new Error("layers: give the layers, e.g. 512, 10");
  return parts.map((part, i) => parseLayer(part, i === parts.length - 1));
}

function parseLayer(part, last) {
  let [name, ...args] = part.split(":").map((p) => p.trim());
  if (/^\d+$/.test(name)) [name, args] = ["dense", [name, ...args]];
  const type = LAYER_NAMES[name];
  if (!type) throw new Error(`layers: '${part}' is not a layer; each is one of ${Object.values(SYNTAX).join(", ")}`);
  const isNumber = (a) => a !== "" && !Number.isNaN(Number(a));
  const numbers = args.filter(isNumber);
  const words = args.filter((a) => !isNumber(a));
  const activations = words.filter((w) => w !== "same" && w !== "valid");
  const [min, max] = NUMBERS[type] ?? [0, 0];
  const takesWords = type === "dense" || type === "conv2d";
  if (numbers.length < min || numbers.length > max || (words.length && !takesWords)
      || activations.length > 1 || (type === "dense" && words.length > activations.length)) {
    throw new Error(`layers: '${part}': a ${type} layer is written ${SYNTAX[type]}`);
  }
  const whole = (n) => {
    if (!/^\d+$/.test(n)) throw new Error(`layers: '${n}' in '${part}' is not a whole number`);
    return Number(n);
  };
  const layer = type === "dense" ? { units: whole(numbers[0]) } : { type };
  if (type === "conv2d") {
    [layer.filters, layer.kernel_size] = numbers.slice(0, 2).map(whole);
    if (numbers.length === 3) layer.strides = whole(numbers[2]);
    if (words.includes("same") || words.includes("valid")) layer.padding = words.includes("same") ? "same" : "valid";
  } else if (type === "max_pool2d" || type === "avg_pool2d") {
    layer.pool_size = numbers.length ? whole(numbers[0]) : 2;
    if (numbers.length === 2) layer.strides = whole(numbers[1]);
  } else if (type === "dropout") {
    layer.rate = Number(numbers[0]);
  }
  if (takesWords) layer.activation = activations[0] || (last && type === "dense" ? "softmax" : "relu");
  return layer;
}
