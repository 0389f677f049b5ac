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

export const FINAL = ["succeeded", "failed", "cancelled"];

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

export function describeModel(spec) {
  const layers = spec.model.layers.map((l) => l.units).join("–");
  return `${spec.model.implementation} ${layers}`;
}

export function describeTraining(spec) {
  const images = spec.dataset.train_limit ? `${spec.dataset.train_limit.toLocaleString("en-US")} images` : "all images";
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

// "512, 10" or "256:tanh, 10": layers for a job spec (hidden relu, last softmax by default).
export function parseLayers(text) {
  const parts = text.split(",").map((p) => p.trim()).filter(Boolean);
  if (!parts.length) throw new Error("layers: give the units per layer, e.g. 512, 10");
  return parts.map((part, i) => {
    const [units, activation] = part.split(":").map((p) => p.trim());
    if (!/^\d+$/.test(units)) throw new Error(`layers: '${part}' is not a number of units`);
    return { units: Number(units), activation: activation || (i === parts.length - 1 ? "softmax" : "relu") };
  });
}
