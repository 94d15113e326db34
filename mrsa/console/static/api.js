// The REST API, with the tab's API key. The key lives in sessionStorage only (this tab, until it
// closes); it is sent as "Authorization: Bearer", never put in a URL.

const KEY_NAME = "mrsa.apiKey";
// The console is served at <prefix>/ui/: the API is at <prefix>/v1/… (a proxy may add a prefix).
export const BASE = location.pathname.replace(/\/ui(\/.*)?$/, "");

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY_NAME);
}

export function setKey(key) {
  sessionStorage.setItem(KEY_NAME, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_NAME);
}

// Asking for a key: set by app.js (it owns the dialog). Concurrent 401s share one prompt.
let keyPrompt = async () => false;
let pendingPrompt = null;

export function onKeyNeeded(prompt) {
  keyPrompt = prompt;
}

async function askKey(message) {
  if (!pendingPrompt) {
    pendingPrompt = keyPrompt(message).finally(() => {
      pendingPrompt = null;
    });
  }
  return pendingPrompt;
}

function headers(extra = {}) {
  const out = { ...extra };
  const key = getKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

async function errorBody(response) {
  try {
    return await response.json();
  } catch {
    return { message: `HTTP ${response.status} ${response.statusText}` };
  }
}

/** fetch() with the key; on 401 asks for a key and tries again. Returns the Response (ok). */
export async function send(path, { method = "GET", body, signal, extraHeaders } = {}) {
  for (;;) {
    const init = { method, signal, headers: headers(extraHeaders) };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(BASE + path, init);
    if (response.status === 401) {
      const err = await errorBody(response);
      if (await askKey(err.message)) continue;
      throw new ApiError(401, err);
    }
    if (!response.ok) throw new ApiError(response.status, await errorBody(response));
    return response;
  }
}

export async function getJson(path, options) {
  return (await send(path, options)).json();
}

export async function postJson(path, body, options = {}) {
  return (await send(path, { ...options, method: "POST", body })).json();
}

/** A blob: URL of a file fetched with the key (for <img>: an image request cannot carry it). */
export async function blobUrl(path, options) {
  const blob = await (await send(path, options)).blob();
  return URL.createObjectURL(blob);
}

/** The public OpenAPI schema (no key needed): the form follows the server's parameters. */
export async function openapi() {
  const response = await fetch(BASE + "/openapi.json");
  if (!response.ok) throw new ApiError(response.status, await errorBody(response));
  return response.json();
}

function parseEvent(block) {
  const event = { id: null, event: "message", data: [] };
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (name === "id") event.id = value;
    else if (name === "event") event.event = value;
    else if (name === "data") event.data.push(value);
  }
  return event.data.length ? { ...event, data: event.data.join("\n") } : null;
}

/**
 * Server-sent events read with fetch() (EventSource cannot send the Authorization header).
 * Calls onEvent({id, event, data}) per event; resumes after the last id when the connection drops;
 * returns after the "done" event (or once isOver() says the job ended), or when signal aborts.
 */
export async function followEvents(path, { signal, onEvent, onState = () => {}, isOver = async () => true }) {
  let lastId = null;
  let sawDone = false;
  let delay = 500;
  while (!sawDone && !signal.aborted) {
    try {
      const extra = lastId ? { "Last-Event-ID": lastId } : {};
      const response = await send(path, { signal, extraHeaders: { Accept: "text/event-stream", ...extra } });
      onState("live");
      delay = 500;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
          const event = parseEvent(block);
          if (!event) continue;
          if (event.id) lastId = event.id;
          if (event.event === "done") sawDone = true;
          onEvent(event);
        }
      }
      // A stream also ends when the server loses its store: go on unless the job is over.
      if (!sawDone && !(await isOver())) throw new Error("event stream ended early");
      sawDone = true;
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status !== 429 && err.status !== 503) throw err;
      onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }
  onState("ended");
}
