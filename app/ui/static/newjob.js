// New job: a form generated from the JobCreate schema of /openapi.json, presets and a time estimate.

import { api } from "./api.js";
import { clear, duration, errorBox, h, nextId, put } from "./dom.js";

// Values from the README: the quick linear probe, and its "CPU recipe above 90%" (LP-FT with `partial`).
export const PRESETS = {
  "quick: linear probe": {
    arch: "efficientnet_lite0",
    weights: "imagenet",
    strategy: "linear",
    epochs: 5,
    batch_size: 64,
    learning_rate: 0.001,
    image_size: 224,
  },
  "best accuracy: LP-FT partial": {
    arch: "efficientnet_lite0",
    weights: "imagenet",
    strategy: "partial",
    unfreeze_stages: 4,
    probe_epochs: 5,
    epochs: 5,
    batch_size: 32,
    learning_rate: 0.001,
    image_size: 224,
    augmentation: "basic",
    label_smoothing: 0.1,
  },
};

// Shown first; the rest go under "More settings".
const MAIN_FIELDS = [
  "dataset_id",
  "model_name",
  "arch",
  "weights",
  "strategy",
  "epochs",
  "batch_size",
  "learning_rate",
  "image_size",
];

const title = (name, prop) => prop.title || name.replace(/_/g, " ");

/** The non-null branch of `anyOf: [X, null]`, and whether null is allowed. */
function unwrap(prop) {
  if (!prop.anyOf) return [prop, false];
  const branches = prop.anyOf.filter((b) => b.type !== "null");
  const merged = { ...branches[0], title: prop.title, description: prop.description, default: prop.default };
  return [merged, branches.length < prop.anyOf.length];
}

/** One form control for one schema property: {el, read() -> value | undefined, write(value)}. */
function control(name, prop, datasets) {
  const id = nextId(name);
  const [schema, nullable] = unwrap(prop);
  const help = prop.description ? h("small", { id: `${id}-help`, class: "help" }, prop.description) : null;
  const describedBy = help ? `${id}-help` : undefined;
  const label = h("label", { for: id }, name === "dataset_id" ? "Dataset" : title(name, prop));
  let input;
  let read;
  let write;
  let wrapClass = "field";
  let suggestions = null;

  if (name === "dataset_id") {
    input = h(
      "select",
      { id, required: true, "aria-describedby": describedBy },
      h("option", { value: "" }, datasets.length ? "choose a dataset" : "no datasets: upload one first"),
      datasets.map((d) => h("option", { value: d.id }, `${d.name} (${d.num_images} images, ${d.num_classes} classes)`)),
    );
    read = () => input.value || undefined;
    write = (v) => (input.value = v ?? "");
  } else if (schema.enum) {
    input = h(
      "select",
      { id, "aria-describedby": describedBy },
      nullable || schema.default === undefined ? h("option", { value: "" }, "(default)") : null,
      schema.enum.map((v) => h("option", { value: v }, v)),
    );
    read = () => input.value || undefined;
    write = (v) => (input.value = v ?? "");
  } else if (schema.type === "array" && schema.items?.enum) {
    const boxes = schema.items.enum.map((v) => {
      const boxId = nextId(`${name}-${v}`);
      const box = h("input", { type: "checkbox", id: boxId, value: v });
      return [v, box, h("span", { class: "check" }, box, h("label", { for: boxId }, v))];
    });
    input = h("div", { id, class: "checks", role: "group", "aria-labelledby": `${id}-label` }, boxes.map((b) => b[2]));
    label.id = `${id}-label`;
    label.removeAttribute("for");
    read = () => {
      const picked = boxes.filter((b) => b[1].checked).map((b) => b[0]);
      return picked.length ? picked : undefined;
    };
    write = (v) => boxes.forEach((b) => (b[1].checked = (v || []).includes(b[0])));
  } else if (schema.type === "boolean") {
    input = h("input", { id, type: "checkbox", "aria-describedby": describedBy });
    wrapClass = "field check";
    read = () => input.checked;
    write = (v) => (input.checked = !!v);
  } else if (schema.type === "integer" || schema.type === "number") {
    const min = schema.minimum ?? schema.exclusiveMinimum;
    const max = schema.maximum ?? schema.exclusiveMaximum;
    input = h("input", {
      id,
      type: "number",
      inputmode: schema.type === "integer" ? "numeric" : "decimal",
      min,
      max,
      step: schema.type === "integer" ? 1 : "any",
      placeholder: nullable ? "auto" : undefined,
      "aria-describedby": describedBy,
    });
    read = () => (input.value === "" ? undefined : Number(input.value));
    write = (v) => (input.value = v ?? "");
  } else {
    input = h("input", {
      id,
      type: "text",
      maxlength: schema.maxLength,
      "aria-describedby": describedBy,
    });
    // "a|b|c|timm/<name>" descriptions (arch) become suggestions.
    if (prop.description && prop.description.includes("|")) {
      const listId = `${id}-list`;
      input.setAttribute("list", listId);
      suggestions = h(
        "datalist",
        { id: listId },
        prop.description
          .split("|")
          .filter((o) => !o.includes("<"))
          .map((o) => h("option", { value: o.trim() })),
      );
    }
    read = () => (input.value.trim() === "" ? undefined : input.value.trim());
    write = (v) => (input.value = v ?? "");
  }
  input.name = name;
  const el =
    wrapClass === "field check"
      ? h("div", { class: wrapClass }, input, label, help)
      : h("div", { class: wrapClass }, label, input, suggestions, help);
  return { el, input, read, write, default: schema.default ?? prop.default };
}

export async function render(main, { query, signal }) {
  const [spec, page] = await Promise.all([api("/openapi.json", { signal }), api("/datasets?limit=100", { signal })]);
  const schema = spec.components.schemas.JobCreate;
  const controls = {};
  for (const [name, prop] of Object.entries(schema.properties)) controls[name] = control(name, prop, page.items);

  function reset(values = {}) {
    for (const [name, c] of Object.entries(controls)) {
      if (name === "dataset_id") continue;
      c.write(name in values ? values[name] : c.default);
    }
  }
  function body() {
    const out = {};
    for (const [name, c] of Object.entries(controls)) {
      const v = c.read();
      if (v !== undefined) out[name] = v;
    }
    return out;
  }

  const presetId = nextId("preset");
  const presetSelect = h(
    "select",
    { id: presetId },
    h("option", { value: "" }, "defaults"),
    Object.keys(PRESETS).map((p) => h("option", { value: p }, p)),
  );
  presetSelect.addEventListener("change", () => {
    reset(PRESETS[presetSelect.value] || {});
    estimateSoon();
  });

  const estimateBox = h("div", { class: "estimate", "aria-live": "polite" }, h("p", { class: "muted" }, "Pick a dataset for a time estimate."));
  let estimateTimer = null;
  let estimateSeq = 0;
  async function estimate() {
    const b = body();
    if (!b.dataset_id) return clear(estimateBox, h("p", { class: "muted" }, "Pick a dataset for a time estimate."));
    const invalid = [...form.querySelectorAll("input, select")].filter((el) => !el.checkValidity());
    if (invalid.length) {
      const names = invalid.map((el) => form.querySelector(`label[for="${el.id}"]`)?.textContent || el.name);
      return clear(estimateBox, h("p", { class: "muted" }, `Out of range: ${names.join(", ")}.`));
    }
    const seq = ++estimateSeq;
    try {
      const e = await api("/jobs/estimate", { method: "POST", json: b, signal });
      if (seq !== estimateSeq) return;
      clear(
        estimateBox,
        e.seconds === null ? h("p", { class: "strong" }, "No estimate yet") : h("p", { class: "big" }, `≈ ${duration(e.seconds)}`),
        h(
          "p",
          { class: "muted" },
          `${e.epochs} epochs × ${e.images_per_epoch.toLocaleString("en")} images`,
          e.tflops ? ` · ${e.tflops.toFixed(1)} TFLOP in all` : "",
        ),
        h("p", { class: "muted small" }, e.basis),
      );
    } catch (err) {
      if (err.name !== "AbortError" && seq === estimateSeq) clear(estimateBox, errorBox(err));
    }
  }
  function estimateSoon() {
    clearTimeout(estimateTimer);
    estimateTimer = setTimeout(estimate, 400);
  }

  const status = h("div", { class: "form-status", "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "primary" }, "Start job");
  const form = h(
    "form",
    { class: "jobform", novalidate: true, id: "job-form" },
    h(
      "section",
      { class: "card" },
      h("div", { class: "field" }, h("label", { for: presetId }, "Preset"), presetSelect),
      h("div", { class: "fields" }, MAIN_FIELDS.filter((n) => controls[n]).map((n) => controls[n].el)),
      h(
        "details",
        {},
        h("summary", {}, "More settings"),
        h(
          "div",
          { class: "fields" },
          Object.keys(controls)
            .filter((n) => !MAIN_FIELDS.includes(n))
            .map((n) => controls[n].el),
        ),
      ),
    ),
    h(
      "aside",
      { class: "card side" },
      h("h2", {}, "Estimate"),
      estimateBox,
      submit,
      status,
    ),
  );
  form.addEventListener("input", estimateSoon);
  form.addEventListener("change", estimateSoon);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const b = body();
    if (!b.dataset_id) return clear(status, errorBox(new Error("Choose a dataset.")));
    submit.disabled = true;
    clear(status, h("p", { class: "muted" }, "Submitting…"));
    try {
      const job = await api("/jobs", { method: "POST", json: b });
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      clear(status, errorBox(err));
    } finally {
      submit.disabled = false;
    }
  });

  reset();
  if (query.get("dataset")) controls.dataset_id.write(query.get("dataset"));
  put(main, h("h1", {}, "New job"), form);
  estimateSoon();
  return () => clearTimeout(estimateTimer);
}
