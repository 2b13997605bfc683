// The public JSON API with the signed-in key: fetch with `Authorization: Bearer`, uploads with progress,
// thumbnails as blob: URLs and a job's Server-Sent Events read through fetch (EventSource cannot send headers).

export const ROOT = globalThis.document?.body?.dataset.root || ""; // (no document: the Node test of the parser)
const KEY = "visiontune.apiKey"; // sessionStorage: this tab only, gone when it closes; never a cookie or URL

export const getKey = () => sessionStorage.getItem(KEY);
export const setKey = (key) => sessionStorage.setItem(KEY, key);
export const clearKey = () => sessionStorage.removeItem(KEY);

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

function authHeaders(extra) {
  const headers = new Headers(extra);
  const key = getKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  return headers;
}

/** The ApiError of a 4xx/5xx answer: the server's {error: {code, message, details}} when the body has one (else the
 * status line), and the Retry-After wait of a 429/503. Shared by fetch (errorOf) and the XHR upload. */
function errorFrom(status, statusText, body, retryAfter) {
  let code = `http_${status}`;
  let message = `${status} ${statusText}`;
  let details;
  if (body && body.error) ({ code, message, details } = body.error);
  if ((status === 429 || status === 503) && retryAfter) message += ` (retry in ${retryAfter} s)`;
  return new ApiError(status, code, message, details);
}

async function errorOf(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON: keep the status line */
  }
  return errorFrom(res.status, res.statusText, body, res.headers.get("Retry-After"));
}

function check(err) {
  if (err.status === 401) onUnauthorized(err);
  return err;
}

/** Call the API; JSON in and out. Throws ApiError with the server's {code, message} on a 4xx/5xx. */
export async function api(path, { method = "GET", json, form, signal, headers } = {}) {
  const h = authHeaders(headers);
  let body;
  if (json !== undefined) {
    h.set("Content-Type", "application/json");
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  let res;
  try {
    res = await fetch(ROOT + path, { method, headers: h, body, signal, cache: "no-store" });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "network_error", `could not reach the server (${e.message})`);
  }
  if (!res.ok) throw check(await errorOf(res));
  if (res.status === 204) return null;
  const type = res.headers.get("content-type") || "";
  return type.includes("json") ? res.json() : res;
}

/** POST a multipart form with upload progress (fetch has none): onProgress(loaded, total). */
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", ROOT + path);
    const key = getKey();
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (e) => e.lengthComputable && onProgress(e.loaded, e.total));
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) return resolve(xhr.response);
      reject(check(errorFrom(xhr.status, xhr.statusText, xhr.response, xhr.getResponseHeader("Retry-After"))));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "network_error", "the upload was interrupted")));
    xhr.send(form);
  });
}

/** Images fetched with the key become blob: URLs; a page revokes its own when it is left. */
export class BlobUrls {
  constructor() {
    this.urls = new Map();
  }
  async get(path, signal) {
    if (!this.urls.has(path)) {
      const promise = api(path, { signal })
        .then((res) => res.blob())
        .then((blob) => URL.createObjectURL(blob));
      this.urls.set(path, promise);
      promise.catch(() => this.urls.delete(path));
    }
    return this.urls.get(path);
  }
  revoke() {
    for (const p of this.urls.values()) p.then((u) => URL.revokeObjectURL(u), () => {});
    this.urls.clear();
  }
}

/** A job's statuses: still to run or running, and final (a job in one of these does not change again). */
export const ACTIVE = new Set(["queued", "running"]);
export const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => (clearTimeout(t), resolve()), { once: true });
  });

/** Parse a text/event-stream body: onEvent({type, id, data}) per event; state.lastId follows the ids seen. */
async function readStream(body, state, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  try {
    await readEvents(reader, state, onEvent);
  } finally {
    reader.cancel().catch(() => {}); // left early (an error): close the connection instead of leaving it open
  }
}

async function readEvents(reader, state, onEvent) {
  let buffer = "";
  let event = { type: "message", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (let m = buffer.match(/\r\n|\r|\n/); m; m = buffer.match(/\r\n|\r|\n/)) {
      if (m[0] === "\r" && m.index === buffer.length - 1) break; // maybe a \r\n split across chunks
      const line = buffer.slice(0, m.index);
      buffer = buffer.slice(m.index + m[0].length);
      if (line === "") {
        if (event.id !== null) state.lastId = event.id;
        if (event.data.length) {
          const text = event.data.join("\n");
          let data = text;
          try {
            data = JSON.parse(text);
          } catch {
            /* keep the text */
          }
          onEvent({ type: event.type, id: event.id, data });
        }
        event = { type: "message", data: [], id: null };
        continue;
      }
      if (line.startsWith(":")) continue; // a comment (keep-alive)
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? "" : line.slice(colon + 1);
      if (val.startsWith(" ")) val = val.slice(1);
      if (field === "event") event.type = val;
      else if (field === "data") event.data.push(val);
      else if (field === "id") event.id = val;
    }
  }
}

export const POLL_MS = 3000;

/**
 * Follow a job's events until its terminal status (or until signal aborts). A dropped connection is resumed
 * with Last-Event-ID, so nothing is lost or seen twice. onState("live" | "reconnecting" | "polling" | "closed",
 * error?).
 *
 * Last-Event-ID is the transport's cursor: it moves when an event has been received, before onEvent runs. An
 * onEvent that throws is a bug of the page, which a reconnect would not fix (the same event would come back and
 * fail again, forever), so its error is logged and the stream goes on with the next event.
 *
 * A server without live events (no Redis: GET /jobs/{id}/events answers 503) gets polled instead, as the SDK
 * does: `poll()` every pollMs (it fetches the job and returns its status) until a terminal status; onState says
 * "polling" so the page can show that live updates are off. Without `poll`, a 503 is retried like a dropped
 * connection.
 */
export async function followEvents(jobId, { onEvent, onState = () => {}, poll, pollMs = POLL_MS, signal }) {
  const state = { lastId: null };
  let done = false;
  let delay = 1000;
  const handle = (e) => {
    delay = 1000;
    if (e.type === "status" && TERMINAL.has(e.data.status)) done = true;
    try {
      onEvent(e);
    } catch (err) {
      console.error(`visiontune: the page failed on the ${e.type} event ${e.id}`, err);
    }
  };
  while (!signal.aborted && !done) {
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (state.lastId) headers.set("Last-Event-ID", state.lastId);
    try {
      const res = await fetch(`${ROOT}/jobs/${jobId}/events`, { headers, signal, cache: "no-store" });
      if (!res.ok) {
        const err = check(await errorOf(res));
        if (res.status === 503 && poll) return pollJob(poll, pollMs, onState, signal);
        if (res.status < 500) return onState("closed", err);
        throw err;
      }
      onState("live");
      await readStream(res.body, state, handle);
    } catch (e) {
      if (signal.aborted) return;
      onState("reconnecting", e);
    }
    if (done || signal.aborted) break;
    onState("reconnecting");
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 15000);
  }
  onState("closed");
}

/** poll() every pollMs until it returns a terminal status; a failed poll is retried, more slowly (up to 30 s). */
async function pollJob(poll, pollMs, onState, signal) {
  onState("polling");
  let delay = pollMs;
  while (!signal.aborted) {
    await sleep(delay, signal);
    if (signal.aborted) return;
    try {
      const status = await poll();
      delay = pollMs;
      onState("polling");
      if (TERMINAL.has(status)) break;
    } catch (e) {
      if (signal.aborted || e.name === "AbortError") return;
      if (e.status >= 400 && e.status < 500 && e.status !== 429) return onState("closed", e); // 404: deleted
      onState("polling", e);
      delay = Math.min(delay * 2, 30000);
    }
  }
  onState("closed");
}
