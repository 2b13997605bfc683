// The dashboard's shell: sign-in gate, navigation and hash routes (#/jobs/<id>, #/models/<name>, ...).

import { ApiError, api, clearKey, getKey, setKey, setUnauthorizedHandler } from "./api.js";
import { clear, errorBox, h, nextId } from "./dom.js";
import { isModelName, isUuid, routeParams } from "./params.js";
import * as compare from "./compare.js";
import * as datasets from "./datasets.js";
import * as job from "./job.js";
import * as jobs from "./jobs.js";
import * as models from "./models.js";
import * as newJob from "./newjob.js";
import * as predict from "./predict.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const signOut = document.getElementById("signout");
const banner = document.getElementById("banner");

// [pattern, page, nav entry, a check per captured segment]; the first match wins.
const ROUTES = [
  [/^datasets$/, datasets.list, "datasets", []],
  [/^datasets\/([^/]+)$/, datasets.detail, "datasets", [isUuid]],
  [/^new$/, newJob.render, "new", []],
  [/^jobs$/, jobs.render, "jobs", []],
  [/^jobs\/([^/]+)$/, job.render, "jobs", [isUuid]],
  [/^compare$/, compare.render, "compare", []],
  [/^models$/, models.list, "models", []],
  [/^models\/([^/]+)$/, models.detail, "models", [isModelName]],
  [/^predict$/, predict.render, "predict", []],
];

let current = null; // {controller, cleanup} of the page on screen

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  return { path: path || "jobs", query: new URLSearchParams(query) };
}

function showVendorBanner() {
  const missing = document.body.dataset.vendorMissing;
  if (!missing) return;
  banner.hidden = false;
  clear(
    banner,
    "Charts are off: the pinned JavaScript library ",
    h("code", {}, missing),
    " is not installed. Run ",
    h("code", {}, document.body.dataset.installHint),
    " and reload.",
  );
}

function signInPage(message) {
  nav.hidden = true;
  signOut.hidden = true;
  const id = nextId("key");
  const status = h("div", { class: "form-status", "aria-live": "polite" }, message ? errorBox(message) : null);
  const input = h("input", {
    id,
    type: "password",
    name: "api-key",
    required: true,
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "vt_…",
  });
  const form = h(
    "form",
    { class: "card signin", novalidate: true },
    h("h1", {}, "Sign in"),
    h(
      "p",
      { class: "muted" },
      "Paste an API key. It stays in this browser tab (session storage) and is sent as a bearer header; ",
      "`make run` prints the first admin key and keeps it in var/admin_key.",
    ),
    h("label", { for: id }, "API key"),
    input,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    status,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) return clear(status, errorBox(new Error("Enter an API key.")));
    setKey(key);
    clear(status, h("p", { class: "muted" }, "Checking the key…"));
    let landing = "#/jobs";
    try {
      await api("/datasets?limit=1");
    } catch (err) {
      if (err instanceof ApiError && err.status === 403) {
        // The server knows the key (401 otherwise) but it lacks the read scope, e.g. a predict-only key: valid,
        // and Predict is the page it can use; the others say which scope they need.
        landing = "#/predict";
      } else {
        fail(err);
        return;
      }
    }
    if (!location.hash || location.hash.startsWith("#/signin")) location.hash = landing;
    else route();
  });
  function fail(err) {
    clearKey();
    const text =
      err instanceof ApiError && err.status === 401 ? new ApiError(401, err.code, `The server refused this key: ${err.message}`) : err;
    clear(status, errorBox(text));
  }
  clear(main, form);
  input.focus();
}

async function route() {
  leavePage();
  const { path, query } = parseHash();
  if (!getKey() || path === "signin") {
    signInPage();
    return;
  }
  nav.hidden = false;
  signOut.hidden = false;
  const match = ROUTES.map(([re, page, entry, checks]) => [path.match(re), page, entry, checks]).find(([m]) => m);
  for (const a of nav.querySelectorAll("a")) {
    a.classList.toggle("active", !!match && a.dataset.page === match[2]);
    if (match && a.dataset.page === match[2]) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const controller = new AbortController();
  current = { controller, cleanup: null };
  clear(main);
  // Each captured segment is decoded and checked before the page runs (and so before any fetch it makes).
  const params = match && routeParams(match[0].slice(1), match[3]);
  if (!params) {
    main.append(errorBox(new Error(`No page at #/${path}.`)));
    return;
  }
  const page = match[1];
  try {
    const cleanup = await page(main, { params, query, signal: controller.signal });
    if (current && current.controller === controller) current.cleanup = cleanup;
    else if (typeof cleanup === "function") cleanup();
  } catch (err) {
    if (err.name === "AbortError" || controller.signal.aborted || err.status === 401) return;
    main.append(errorBox(err));
  }
}

function leavePage() {
  if (!current) return;
  current.controller.abort();
  if (typeof current.cleanup === "function") current.cleanup();
  current = null;
}

setUnauthorizedHandler((err) => {
  leavePage(); // a revoked or expired key: stop the page's requests and streams, ask for a key again
  clearKey();
  signInPage(new ApiError(401, err.code, `The server refused the key (${err.message}). Sign in again.`));
});

signOut.addEventListener("click", () => {
  clearKey();
  location.hash = "#/signin";
});

window.addEventListener("hashchange", route);
showVendorBanner();
route();
