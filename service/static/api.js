// The API, from the browser: fetch with the stored Bearer token, errors as one sentence, and
// the event stream read with fetch() (EventSource cannot send an Authorization header).

import { FINAL } from "./ui.js";

const TOKEN_KEY = "tapefit.token";

export const token = {
  get: () => localStorage.getItem(TOKEN_KEY) || "",
  set: (value) => (value ? localStorage.setItem(TOKEN_KEY, value) : localStorage.removeItem(TOKEN_KEY)),
};

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

// Called with every 401, so the page can ask for a token.
let onUnauthorized = () => {};
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

function headers(extra = {}) {
  const value = token.get();
  return value ? { ...extra, Authorization: `Bearer ${value}` } : extra;
}

async function failure(response) {
  let message = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    message = body.message || (typeof body.detail === "string" ? body.detail : null) || body.error || message;
  } catch {
    /* not JSON: keep the status */
  }
  if (response.status === 401) {
    onUnauthorized();
    message = token.get() ? "the server refused this token" : "this server needs an API token";
  }
  return new ApiError(message, response.status);
}

export async function api(path, { method = "GET", json, body, signal } = {}) {
  const init = { method, signal, headers: headers(json ? { "Content-Type": "application/json" } : {}) };
  if (json !== undefined) init.body = JSON.stringify(json);
  else if (body !== undefined) init.body = body;
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError("the server does not answer", 0);
  }
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

// Reads GET {path} as Server-Sent Events and calls onEvent(type, data, id) for each, until
// the server ends the stream after a final state. A broken connection is resumed with the
// last event id, so no event is lost or repeated. Resolves when the job is final.
export async function follow(path, { lastEventId = null, onEvent, onError = () => {}, signal }) {
  let finished = false;
  while (!finished && !signal.aborted) {
    try {
      const extra = { Accept: "text/event-stream" };
      if (lastEventId) extra["Last-Event-ID"] = lastEventId;
      const response = await fetch(path, { headers: headers(extra), signal, cache: "no-store" });
      if (!response.ok) throw await failure(response);
      for await (const event of parse(response.body, signal)) {
        if (event.id !== null) lastEventId = event.id;
        onEvent(event.type, event.data, event.id);
        if (event.type === "state" && FINAL.includes(event.data.state)) finished = true;
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && error.status >= 400 && error.status < 500) throw error;
      onError(error);
    }
    if (!finished) await sleep(2000, signal);
  }
}

async function* parse(stream, signal) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  signal.addEventListener("abort", () => reader.cancel().catch(() => {}), { once: true });
  let buffer = "";
  let type = "message";
  let data = [];
  let id = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const lines = buffer.split("\n");
    buffer = lines.pop();
    for (const raw of lines) {
      const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
      if (line === "") {
        if (data.length) yield { type, data: JSON.parse(data.join("\n")), id };
        type = "message";
        data = [];
        id = null;
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let rest = colon < 0 ? "" : line.slice(colon + 1);
      if (rest.startsWith(" ")) rest = rest.slice(1);
      if (field === "event") type = rest;
      else if (field === "data") data.push(rest);
      else if (field === "id") id = rest;
    }
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}
