// Predict: drop images, see each one's top-k as bars.

import { api } from "./api.js";
import { clear, dropZone, errorBox, h, nextId, pct, put } from "./dom.js";

/** The models to pick from, or null when the key may not list them (403: a predict-only key has no read scope). */
async function listModels(signal) {
  try {
    return await api("/models", { signal });
  } catch (err) {
    if (err.status === 403) return null;
    throw err;
  }
}

export async function render(main, { signal }) {
  const models = await listModels(signal);
  const modelId = nextId("model");
  const versionId = nextId("version");
  const topkId = nextId("topk");
  const noteId = nextId("model-note");
  const model = models
    ? h(
        "select",
        { id: modelId },
        h("option", { value: "" }, "the default model"),
        models.flatMap((m) => [
          h("option", { value: m.name, selected: models.length === 1 }, m.name),
          ...Object.keys(m.aliases || {}).map((a) => h("option", { value: `${m.name}@${a}` }, `${m.name}@${a}`)),
        ]),
      )
    : h("input", {
        id: modelId,
        type: "text",
        name: "model",
        placeholder: "the default model",
        autocomplete: "off",
        spellcheck: "false",
        "aria-describedby": noteId,
      });
  const modelNote = models
    ? null
    : h(
        "p",
        { class: "muted small", id: noteId },
        "This key cannot list the models (it lacks the read scope): type a model name or name@alias, or leave it ",
        "empty for the default model.",
      );
  const version = h("input", { id: versionId, type: "number", min: 1, step: 1, placeholder: "serving" });
  const topk = h("input", { id: topkId, type: "number", min: 1, max: 20, step: 1, value: 3 });
  const results = h("div", { class: "predictions", id: "predictions" });
  const status = h("div", { "aria-live": "polite" });
  const previews = [];

  async function classify(files) {
    const images = [...files];
    const form = new FormData();
    for (const f of images) form.append("files", f, f.name);
    if (model.value.trim()) form.append("model", model.value.trim());
    if (version.value) form.append("version", version.value);
    form.append("top_k", topk.value || "3");
    clear(status, h("p", { class: "muted" }, `Classifying ${images.length} image${images.length === 1 ? "" : "s"}…`));
    try {
      const r = await api("/predict", { method: "POST", form, signal });
      previews.splice(0).forEach((u) => URL.revokeObjectURL(u));
      clear(status, h("p", { class: "muted" }, `${r.model_name} v${r.version} (${r.arch}, ${r.backend})`));
      clear(
        results,
        r.predictions.map((p, i) => {
          const url = URL.createObjectURL(images[i]);
          previews.push(url);
          return h(
            "article",
            { class: "card prediction" },
            h("img", { src: url, alt: p.filename || `image ${i + 1}`, width: 112, height: 112 }),
            h(
              "div",
              { class: "bars" },
              h("h3", {}, p.filename || `image ${i + 1}`),
              p.top.map((s) => {
                const bar = h("span", { class: "bar-fill" });
                bar.style.setProperty("--p", String(s.probability));
                return h(
                  "div",
                  { class: "bar" },
                  h("span", { class: "bar-label" }, s.label),
                  h("span", { class: "bar-track" }, bar),
                  h("span", { class: "bar-value" }, pct(s.probability)),
                );
              }),
            ),
          );
        }),
      );
    } catch (err) {
      if (err.name !== "AbortError") clear(status, errorBox(err));
    }
  }

  const zone = dropZone({
    label: "Drop images here, or choose some",
    hint: "JPEG, PNG or WebP; each gets its top-k classes",
    accept: "image/jpeg,image/png,image/webp",
    multiple: true,
    onFiles: classify,
  });
  zone.el.id = "predict-drop";
  put(main, 
    h("h1", {}, "Predict"),
    h(
      "section",
      { class: "card" },
      h(
        "div",
        { class: "fields three" },
        h("div", { class: "field" }, h("label", { for: modelId }, "Model"), model),
        h("div", { class: "field" }, h("label", { for: versionId }, "Version"), version),
        h("div", { class: "field" }, h("label", { for: topkId }, "Top k"), topk),
      ),
      modelNote,
      zone.el,
      status,
    ),
    results,
  );
  return () => previews.forEach((u) => URL.revokeObjectURL(u));
}
