// The dashboard's shell: the header, the API token, and a router over location.hash:
//   #/            jobs and the form to start one
//   #/jobs/{id}   one job, live
//   #/datasets    the datasets, and a form to upload one
//   #/studies     the studies; #/studies/{id} one study, live
//   #/draw        the draw-a-digit pad against any trained model

import { token, whenUnauthorized } from "./api.js";
import { datasetsView } from "./datasets.js";
import { jobView } from "./job.js";
import { jobsView } from "./jobs.js";
import { predictor } from "./predictor.js";
import { studiesView, studyView } from "./study.js";
import { h } from "./ui.js";

const view = document.getElementById("view");
let current = null; // the AbortController of the page on screen: it stops its requests

function route() {
  current?.abort();
  current = new AbortController();
  const path = location.hash.replace(/^#/, "") || "/";
  const job = path.match(/^\/jobs\/(\d+)$/);
  let page;
  const study = path.match(/^\/studies\/(\d+)$/);
  if (job) page = jobView(job[1], current.signal);
  else if (study) page = studyView(study[1], current.signal);
  else if (path === "/studies") page = studiesView(current.signal);
  else if (path === "/draw") page = h("div", { class: "draw-page" }, predictor({ title: "Draw a digit" }));
  else if (path === "/datasets") page = datasetsView(current.signal);
  else page = jobsView(current.signal);
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.getAttribute("href") === (["/draw", "/datasets"].includes(path) ? `#${path}`
      : path.startsWith("/studies") ? "#/studies" : "#/"));
  }
  view.replaceChildren(page);
  window.scrollTo(0, 0);
}

function tokenPanel() {
  const button = document.getElementById("token-button");
  const panel = document.getElementById("token-panel");
  const input = panel.querySelector("input");
  const banner = document.getElementById("banner");
  const label = () => {
    button.textContent = token.get() ? "Token set" : "API token";
    button.classList.toggle("set", Boolean(token.get()));
  };
  const open = (show) => {
    panel.hidden = !show;
    if (show) { input.value = token.get(); input.focus(); }
  };
  button.addEventListener("click", () => open(panel.hidden));
  panel.addEventListener("submit", (event) => {
    event.preventDefault();
    token.set(input.value.trim());
    label();
    open(false);
    banner.hidden = true;
    route();
  });
  panel.querySelector("[data-clear]").addEventListener("click", () => {
    token.set("");
    input.value = "";
    label();
  });
  whenUnauthorized(() => {
    banner.hidden = false;
    open(true);
  });
  label();
}

tokenPanel();
window.addEventListener("hashchange", route);
route();
