// The draw-a-digit card: a pad, the predicted digit, its 10 probabilities as bars, and the
// 28 x 28 image the model saw. It sends the drawing as a PNG upload (multipart `file`).

import { api } from "./api.js";
import { DrawPad } from "./pad.js";
import { h, percent } from "./ui.js";

export function predictor({ model = null, title = "Draw a digit" } = {}) {
  const select = h("select", { class: "model-select", "aria-label": "model" });
  const digit = h("div", { class: "guess-digit" }, "?");
  const confidence = h("div", { class: "guess-text" }, "Draw a digit from 0 to 9 on the pad.");
  const bars = [...Array(10).keys()].map((d) =>
    h("div", { class: "bar" },
      h("div", { class: "bar-value" }, ""),
      h("div", { class: "bar-track" }, h("div", { class: "bar-fill", style: "height: 0%" })),
      h("div", { class: "bar-label" }, String(d))));
  const seen = h("canvas", { class: "seen", width: 28, height: 28, title: "the 28 × 28 image the model read" });
  const error = h("div", { class: "error", hidden: true });
  const canvas = h("canvas", { class: "pad", "aria-label": "drawing pad" });
  const hint = h("div", { class: "pad-hint" }, "draw here");
  let pending = 0;
  let timer = 0;

  const pad = new DrawPad(canvas, {
    onStroke: () => {
      hint.hidden = true;
      clearTimeout(timer);
      timer = setTimeout(predict, 120);
    },
  });

  async function predict() {
    const name = model ?? select.value;
    if (pad.empty || !name) return;
    const ticket = ++pending;
    const form = new FormData();
    form.append("file", await pad.toBlob(), "digit.png");
    try {
      const result = await api(`/jobs/${encodeURIComponent(name)}/predict?explain=1`, { method: "POST", body: form });
      if (ticket === pending) show(result.predictions[0]);
    } catch (e) {
      if (ticket !== pending) return;
      error.textContent = e.message;
      error.hidden = false;
    }
  }

  function show(prediction) {
    error.hidden = true;
    const best = prediction.digit;
    digit.textContent = String(best);
    confidence.textContent = `${percent(prediction.probabilities[best])} sure`;
    card.dataset.digit = String(best);
    prediction.probabilities.forEach((p, d) => {
      bars[d].classList.toggle("top", d === best);
      bars[d].querySelector(".bar-fill").style.height = `${Math.max(p * 100, 0.5)}%`;
      bars[d].querySelector(".bar-value").textContent = p >= 0.01 ? `${Math.round(p * 100)}%` : "";
    });
    if (prediction.image) {
      const ctx = seen.getContext("2d");
      const pixels = ctx.createImageData(28, 28);
      prediction.image.flat().forEach((v, i) => {
        const c = Math.round(v * 255);
        pixels.data.set([c, c, c, 255], i * 4);
      });
      ctx.putImageData(pixels, 0, 0);
      seenBox.hidden = false;
    }
  }

  function clear() {
    pad.clear();
    pending++;
    hint.hidden = false;
    digit.textContent = "?";
    confidence.textContent = "Draw a digit from 0 to 9 on the pad.";
    delete card.dataset.digit;
    error.hidden = true;
    seenBox.hidden = true;
    for (const bar of bars) {
      bar.classList.remove("top");
      bar.querySelector(".bar-fill").style.height = "0%";
      bar.querySelector(".bar-value").textContent = "";
    }
  }

  async function loadModels() {
    try {
      const page = await api("/jobs?state=succeeded&limit=100");
      select.replaceChildren(
        ...(page.items.length
          ? [h("option", { value: "best" }, "best (highest test accuracy)"),
             h("option", { value: "latest" }, "latest"),
             // The pad draws digits: only MNIST models (an uploaded dataset's read its own inputs).
             ...page.items.filter((job) => !job.spec.dataset.id)
               .map((job) => h("option", { value: String(job.id) }, `job ${job.id} · ${percent(job.test_accuracy)}`))]
          : [h("option", { value: "" }, "no trained model yet")]));
      select.disabled = !page.items.length;
      if (!page.items.length) {
        confidence.textContent = "No job has finished training yet: train one first.";
      }
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    }
  }

  select.addEventListener("change", predict);
  const seenBox = h("div", { class: "seen-box", hidden: true }, seen, h("span", {}, "what the model saw"));
  const head = h("div", { class: "card-head" }, h("h2", {}, title),
    model === null ? select : h("span", { class: "muted" }, `model of job ${model}`));
  const card = h("section", { class: "card predictor" },
    head,
    h("div", { class: "predictor-body" },
      h("div", { class: "pad-column" },
        h("div", { class: "pad-wrap" }, canvas, hint),
        h("button", { class: "button ghost", type: "button", onclick: clear }, "Clear")),
      h("div", { class: "result" },
        h("div", { class: "guess" }, digit, h("div", {}, h("div", { class: "guess-label" }, "prediction"), confidence)),
        h("div", { class: "bars" }, bars),
        seenBox,
        error)));
  if (model === null) loadModels();
  return card;
}
