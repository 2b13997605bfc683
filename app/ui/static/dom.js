// Small DOM helpers: elements are built with properties and text nodes, never from HTML strings.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value" || k === "checked" || k === "selected" || k === "indeterminate") el[k] = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Append children to el, skipping null/false (the DOM's own append would write "null"). */
export const put = (el, ...children) => append(el, children);

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

let uid = 0;
export const nextId = (prefix) => `${prefix}-${++uid}`;

export const pct = (x, digits = 1) => (x === null || x === undefined ? "—" : `${(100 * x).toFixed(digits)}%`);
export const num = (x, digits = 3) =>
  x === null || x === undefined ? "—" : Number(x).toLocaleString("en", { maximumFractionDigits: digits });

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "—";
  s = Math.max(0, Math.round(s));
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  const seconds = s % 60;
  if (hours) return `${hours} h ${minutes} min`;
  if (minutes) return `${minutes} min ${seconds} s`;
  return `${seconds} s`;
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString("en", { dateStyle: "medium", timeStyle: "short" });
}

export const shortId = (id) => (id ? String(id).slice(0, 8) : "—");

export function badge(status) {
  return h("span", { class: `badge ${status}` }, status);
}

/** A labelled progress bar (a <progress> element and its text). */
export function progressBar(label) {
  const id = nextId("progress");
  const bar = h("progress", { id, max: 1000, value: 0 });
  const text = h("span", { class: "progress-text" });
  const wrap = h("div", { class: "progress" }, h("label", { for: id, class: "sr-only" }, label), bar, text);
  return {
    el: wrap,
    bar,
    set(fraction, caption) {
      bar.value = Math.round(Math.max(0, Math.min(1, fraction)) * 1000);
      text.textContent = caption ?? `${(100 * fraction).toFixed(0)}%`;
    },
  };
}

/** An error of the API (or anything thrown) as a readable alert box. */
export function errorBox(err) {
  const code = err && err.code ? h("code", {}, err.code) : null;
  if (err?.status === 403) {
    // A valid key without the scope this needs (the server's message names it: "this API key lacks the 'read'
    // scope (it has predict)"): say so plainly instead of a bare error.
    return h(
      "div",
      { class: "error forbidden", role: "alert" },
      h("strong", {}, "This key cannot do this. "),
      code,
      " ",
      err.message,
      ". Sign out and sign in with a key that has that scope.",
    );
  }
  return h("div", { class: "error", role: "alert" }, code, code ? " " : null, err?.message || String(err));
}

/** A table from column specs {label, cell(row) -> node|text, class?}. */
export function table(columns, rows, { caption, empty = "Nothing yet." } = {}) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.class }, c.label)))),
      h(
        "tbody",
        {},
        rows.map((r) => h("tr", {}, columns.map((c) => h("td", { class: c.class }, c.cell(r))))),
      ),
    ),
  );
}

/** A drop zone around a labelled file input: dropping or choosing files calls onFiles(FileList). */
export function dropZone({ label, hint, accept, multiple = false, onFiles }) {
  const id = nextId("file");
  const input = h("input", { type: "file", id, accept, multiple, class: "file-input" });
  const zone = h(
    "div",
    { class: "dropzone" },
    h("label", { for: id }, h("strong", {}, label), h("span", { class: "muted" }, hint)),
    input,
  );
  input.addEventListener("change", () => {
    if (input.files.length) onFiles(input.files);
    input.value = "";
  });
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) onFiles(e.dataTransfer.files);
  });
  return { el: zone, input };
}
