// One job: live curves and progress over its events, before/after metrics, per-class table, and a confusion
// matrix whose cells open the validation images of that (true, predicted) pair.

import { ACTIVE, BlobUrls, POLL_MS, api, followEvents } from "./api.js";
import { lineChart } from "./charts.js";
import { badge, clear, duration, errorBox, h, num, pct, progressBar, put, shortId, table, when } from "./dom.js";

const THUMBS_PER_PAGE = 24;

function comparison(before, after) {
  // rows: [label, key, higher is better]
  const rows = [
    ["Accuracy", "accuracy", true],
    ["Top-5 accuracy", "top5_accuracy", true],
    ["Macro precision", "macro_precision", true],
    ["Macro recall", "macro_recall", true],
    ["Macro F1", "macro_f1", true],
    ["Loss", "loss", false],
  ].filter(([, k]) => (after && after[k] !== null && after[k] !== undefined) || (before && before[k] != null));
  const fmt = (k, v) => (v === null || v === undefined ? "—" : k === "loss" ? num(v, 4) : pct(v));
  return table(
    [
      { label: "Metric", cell: (r) => r[0] },
      { label: "Before fine-tuning", cell: (r) => fmt(r[1], before?.[r[1]]), class: "num" },
      { label: "After", cell: (r) => fmt(r[1], after?.[r[1]]), class: "num" },
      {
        label: "Change",
        class: "num",
        cell: (r) => {
          const a = after?.[r[1]];
          const b = before?.[r[1]];
          if (a == null || b == null) return "—";
          const d = a - b;
          const good = r[2] ? d > 0 : d < 0;
          const text = r[1] === "loss" ? `${d > 0 ? "+" : ""}${num(d, 4)}` : `${d > 0 ? "+" : ""}${(100 * d).toFixed(1)} pts`;
          return h("span", { class: d === 0 ? "" : good ? "up" : "down" }, text);
        },
      },
    ],
    rows,
  );
}

/**
 * The class names in confusion-matrix index order. The server sends them as val.class_names; metrics stored before
 * it did have only per_class, whose key order JavaScript does not keep for integer-like names (Object.keys puts
 * "9" before "10", while an ImageFolder's classes are sorted as strings, "10" first). For those the dataset's
 * class_names (the order the job trained with) are used when they name the same classes, Object.keys last.
 */
export function classNames(val, datasetClasses) {
  if (Array.isArray(val.class_names)) return val.class_names;
  const keys = Object.keys(val.per_class || {});
  const same =
    Array.isArray(datasetClasses) && datasetClasses.length === keys.length && datasetClasses.every((n) => Object.hasOwn(val.per_class, n));
  return same ? datasetClasses : keys;
}

function perClassTable(val, test, names) {
  const cols = [
    { label: "Class", cell: (n) => n },
    { label: "Precision", cell: (n) => pct(val.per_class[n].precision), class: "num" },
    { label: "Recall", cell: (n) => pct(val.per_class[n].recall), class: "num" },
    { label: "F1", cell: (n) => pct(val.per_class[n].f1), class: "num" },
    { label: "Support", cell: (n) => val.per_class[n].support, class: "num" },
  ];
  if (test?.per_class) cols.push({ label: "Test F1", cell: (n) => pct(test.per_class[n]?.f1), class: "num" });
  return table(cols, names, { caption: "Validation split (the best checkpoint)" });
}

export async function render(main, { params: [id], signal }) {
  const thumbs = new BlobUrls();
  // The job and its metrics, together (the page opens with them and refreshes them on a status change or a poll).
  const load = () => Promise.all([api(`/jobs/${id}`, { signal }), api(`/jobs/${id}/metrics`, { signal })]);
  let [job, metrics] = await load();
  let datasetClasses = null; // only for metrics stored before they carried class_names (see classNames)
  if (metrics.val && !Array.isArray(metrics.val.class_names) && job.dataset_id) {
    datasetClasses = await api(`/datasets/${job.dataset_id}`, { signal }).then(
      (ds) => ds.class_names,
      (err) => {
        if (err.name === "AbortError") throw err;
        return null; // deleted meanwhile or not readable: per_class's own order
      },
    );
  }
  const epochs = new Map(metrics.epochs.map((e) => [e.epoch, e]));
  const stepLoss = []; // {x: fractional epoch, y: running loss}
  let lastProgress = null;

  // ---- header, progress
  const statusSlot = h("span", {}, badge(job.status));
  const cancel = h("button", { type: "button", class: "danger", id: "cancel-job" }, "Cancel");
  const actionStatus = h("div", { "aria-live": "polite" });
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      await api(`/jobs/${id}/cancel`, { method: "POST" });
      clear(actionStatus, h("p", { class: "muted" }, "Cancel requested: the worker stops at its next step."));
    } catch (err) {
      cancel.disabled = false;
      clear(actionStatus, errorBox(err));
    }
  });
  const progress = progressBar("Training progress");
  progress.el.id = "job-progress";
  const liveState = h("span", { class: "live muted" });
  const facts = h("dl", { class: "facts wide" });

  function renderFacts() {
    const cfg = job.config || {};
    const pair = (term, value) => h("div", {}, h("dt", {}, term), h("dd", {}, value));
    clear(
      facts,
      pair(
        "Model",
        job.model_version
          ? h("a", { href: `#/models/${encodeURIComponent(job.model_name)}` }, `${job.model_name} v${job.model_version}`)
          : job.model_name,
      ),
      pair("Architecture", `${job.arch} (${job.weights}) · ${job.strategy}`),
      pair("Training", `${cfg.epochs} epochs · batch ${cfg.batch_size} · lr ${cfg.learning_rate} · ${cfg.image_size} px`),
      pair("Dataset", job.dataset_id ? h("a", { href: `#/datasets/${job.dataset_id}` }, shortId(job.dataset_id)) : "deleted"),
      pair("Created", when(job.created_at)),
      pair("Started", when(job.started_at)),
      pair("Finished", when(job.finished_at)),
    );
  }

  function renderProgress() {
    const total = job.config?.epochs || 1;
    const done = Math.max(0, ...epochs.keys());
    if (job.status === "succeeded") return progress.set(1, `done: ${epochs.size} of ${total} epochs`);
    if (!ACTIVE.has(job.status)) return progress.set(done / total, `${job.status} after ${done} of ${total} epochs`);
    if (job.status === "queued") return progress.set(done / total, done ? `queued again after epoch ${done}` : "queued: waiting for a worker");
    const p = lastProgress;
    if (p && p.epoch > done) {
      const fraction = (p.epoch - 1 + p.step / p.steps) / p.epochs;
      return progress.set(
        fraction,
        `epoch ${p.epoch}/${p.epochs} · step ${p.step}/${p.steps} · loss ${num(p.loss, 4)} · ${num(p.images_per_second, 1)} img/s · ETA ${duration(p.eta_seconds)}`,
      );
    }
    progress.set(done / total, done ? `epoch ${done}/${total} done` : "preparing (features, before-fine-tuning pass)");
  }

  // ---- curves
  const lossChart = lineChart("Loss", { yTitle: "cross-entropy" });
  const accChart = lineChart("Accuracy", { yTitle: "accuracy", percent: true });
  const lrChart = lineChart("Learning rate", { yTitle: "lr" });
  function renderCurves() {
    const list = [...epochs.values()].sort((a, b) => a.epoch - b.epoch);
    const pts = (k) => list.map((e) => ({ x: e.epoch, y: e[k] }));
    lossChart.setSeries("train", pts("train_loss"), { color: "#2563eb" });
    lossChart.setSeries("validation", pts("val_loss"), { color: "#dc2626" });
    lossChart.setSeries("step (running)", stepLoss, { color: "#93c5fd", pointless: true, thin: true });
    accChart.setSeries("train", pts("train_accuracy"), { color: "#2563eb" });
    accChart.setSeries("validation", pts("val_accuracy"), { color: "#dc2626" });
    lrChart.setSeries("learning rate", pts("learning_rate"), { color: "#059669" });
    for (const c of [lossChart, accChart, lrChart]) c.update();
  }
  const epochCount = h("span", { id: "curve-points", class: "muted" });
  const updateCount = () => (epochCount.textContent = `${epochs.size} epochs, ${stepLoss.length} step points`);

  // ---- results (after the job finished)
  const results = h("div", { class: "results" });
  const cellImages = h("div", { class: "cell-images", id: "cell-images" });

  async function showCell(t, p, names, offset = 0) {
    clear(cellImages, h("p", { class: "muted" }, "Loading images…"));
    try {
      const r = await api(`/jobs/${id}/confusion?true=${t}&predicted=${p}&limit=${THUMBS_PER_PAGE}&offset=${offset}`, { signal });
      const dsId = r.dataset_id;
      const grid = h("div", { class: "thumb-grid" });
      for (const item of r.items) {
        const img = h("img", { alt: `true ${names[t]}, predicted ${names[p]}`, width: 96, height: 96 });
        grid.append(h("figure", { class: "thumb" }, img, h("figcaption", {}, pct(item.confidence, 0))));
        if (dsId)
          thumbs
            .get(`/datasets/${dsId}/images/${item.ref}?size=128`, signal)
            .then((url) => (img.src = url))
            .catch(() => img.replaceWith(h("span", { class: "thumb-missing" }, "?")));
      }
      const pager = h("div", { class: "actions" });
      if (offset > 0)
        pager.append(h("button", { type: "button", onclick: () => showCell(t, p, names, Math.max(0, offset - THUMBS_PER_PAGE)) }, "Previous"));
      if (offset + r.items.length < r.total)
        pager.append(h("button", { type: "button", onclick: () => showCell(t, p, names, offset + THUMBS_PER_PAGE) }, "More"));
      clear(
        cellImages,
        h(
          "h3",
          {},
          `True ${r.true.name}, predicted ${r.predicted.name}: `,
          `${r.total} image${r.total === 1 ? "" : "s"}`,
          r.total > r.items.length ? ` (${offset + 1}–${offset + r.items.length})` : "",
        ),
        dsId ? null : h("p", { class: "muted" }, "The dataset was deleted: no images to show."),
        r.items.length ? grid : h("p", { class: "muted" }, "No validation images in this cell."),
        h("p", { class: "muted small" }, "Caption: the model's confidence in the predicted class."),
        pager,
      );
    } catch (err) {
      if (err.name !== "AbortError") clear(cellImages, errorBox(err));
    }
  }

  function confusionMatrix(val, names) {
    const m = val.confusion_matrix;
    const rowsum = m.map((r) => r.reduce((a, b) => a + b, 0));
    const tbl = h(
      "table",
      { class: "confusion", id: "confusion" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "true \\ predicted"), names.map((n) => h("th", { scope: "col" }, n)))),
      h(
        "tbody",
        {},
        m.map((row, t) =>
          h(
            "tr",
            {},
            h("th", { scope: "row" }, names[t]),
            row.map((count, p) => {
              const share = rowsum[t] ? count / rowsum[t] : 0;
              const cell = h(
                "button",
                {
                  type: "button",
                  class: `cell ${t === p ? "diag" : "off"}${count ? "" : " zero"}`,
                  "aria-label": `true ${names[t]}, predicted ${names[p]}: ${count}`,
                  dataset: { true: t, predicted: p, count },
                  onclick: () => {
                    tbl.querySelectorAll(".cell.selected").forEach((c) => c.classList.remove("selected"));
                    cell.classList.add("selected");
                    showCell(t, p, names);
                  },
                },
                String(count),
              );
              // Shade by the share of the true class's images (set through the CSSOM, allowed by the CSP).
              if (count) cell.style.setProperty("--share", share.toFixed(3));
              return h("td", {}, cell);
            }),
          ),
        ),
      ),
    );
    return h("div", { class: "table-wrap" }, tbl);
  }

  function renderResults() {
    const val = metrics.val;
    const test = metrics.test;
    const before = metrics.before_finetuning;
    if (!val) {
      clear(results, job.status === "succeeded" ? h("p", { class: "muted" }, "No evaluation was stored.") : null);
      return;
    }
    const beforeNote =
      before && before.status === "not applicable"
        ? h("p", { class: "muted" }, `Before fine-tuning: not applicable (${before.reason}).`)
        : !before
          ? h("p", { class: "muted" }, "Before fine-tuning: not measured (baseline off).")
          : null;
    const hasBefore = before && before.status !== "not applicable";
    const names = classNames(val, datasetClasses);
    clear(
      results,
      h(
        "div",
        { class: "grid two" },
        h(
          "section",
          { class: "card", id: "before-after" },
          h("h2", {}, "Before and after fine-tuning"),
          beforeNote,
          h("h3", {}, "Validation"),
          comparison(hasBefore ? before.val : null, val),
          test ? h("h3", {}, "Test") : null,
          test ? comparison(hasBefore ? before.test : null, test) : null,
        ),
        h("section", { class: "card", id: "per-class" }, h("h2", {}, "Per class"), perClassTable(val, test, names)),
      ),
      h(
        "section",
        { class: "card", id: "confusion-card" },
        h("h2", {}, "Confusion matrix"),
        job.status === "succeeded"
          ? h(
              "div",
              { class: "confusion-layout" },
              h(
                "div",
                {},
                h("p", { class: "muted small" }, "Rows: true class · columns: predicted · validation split. Click a cell for its images."),
                confusionMatrix(val, names),
              ),
              cellImages,
            )
          : h("p", { class: "muted" }, "Available once the job succeeds."),
      ),
    );
    clear(cellImages, h("p", { class: "muted" }, "Pick a cell to see the validation images it counts."));
  }

  function renderStatus() {
    clear(statusSlot, badge(job.status));
    cancel.hidden = !ACTIVE.has(job.status);
    renderFacts();
    renderProgress();
    if (job.error) clear(actionStatus, errorBox({ code: "job_failed", message: job.error }));
  }

  put(main, 
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / ", shortId(id)),
    h(
      "div",
      { class: "title-row" },
      h("h1", {}, `${job.model_name} `, h("small", { class: "muted" }, shortId(id)), " ", statusSlot),
      h("div", { class: "actions" }, h("a", { class: "button", href: `#/compare?ids=${id}` }, "Compare…"), cancel),
    ),
    actionStatus,
    h("section", { class: "card" }, h("div", { class: "title-row" }, h("h2", {}, "Progress"), liveState), progress.el, facts),
    h("div", { class: "grid three charts" }, lossChart.el, accChart.el, lrChart.el),
    h("p", { class: "small" }, epochCount),
    results,
  );
  renderStatus();
  renderCurves();
  updateCount();
  renderResults();

  // A replayed history arrives as a burst: draw once per frame, not once per event.
  let frame = 0;
  function scheduleRender() {
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      renderProgress();
      renderCurves();
      updateCount();
    });
  }

  let refreshing = null;
  const finishedAtOpen = !ACTIVE.has(job.status);
  async function refreshAll() {
    [job, metrics] = await load();
    for (const e of metrics.epochs) epochs.set(e.epoch, e);
    renderStatus();
    renderCurves();
    updateCount();
    renderResults();
  }

  followEvents(id, {
    signal,
    // No live events on this server (503): the job and its metrics are fetched every few seconds instead.
    poll: async () => {
      if (ACTIVE.has(job.status)) await refreshAll();
      return job.status;
    },
    onState: (state, err) => {
      if (state === "polling") {
        liveState.textContent = !ACTIVE.has(job.status)
          ? ""
          : err
            ? `live updates off; refresh failed (${err.message}), retrying…`
            : `live updates off (this server has no event stream): refreshed every ${POLL_MS / 1000} s`;
        return;
      }
      liveState.textContent = state === "live" ? "● live" : state === "reconnecting" ? "reconnecting…" : "";
      if (err && state === "closed") clear(actionStatus, errorBox(err));
    },
    onEvent: (e) => {
      if (e.type === "progress") {
        lastProgress = e.data;
        if (job.status === "queued") job.status = "running";
        stepLoss.push({ x: e.data.epoch - 1 + e.data.step / e.data.steps, y: e.data.loss });
        scheduleRender();
      } else if (e.type === "epoch") {
        epochs.set(e.data.epoch, { ...epochs.get(e.data.epoch), ...e.data });
        scheduleRender();
      } else if (e.type === "status") {
        if (finishedAtOpen) return; // a finished job's replayed history: the page already shows its outcome
        job.status = e.data.status;
        if (e.data.error) job.error = e.data.error;
        renderStatus();
        if (!ACTIVE.has(e.data.status) || e.data.status === "running") {
          refreshing = refreshAll().catch((err) => err.name !== "AbortError" && put(main, errorBox(err)));
        }
      }
    },
  });

  return () => {
    cancelAnimationFrame(frame);
    thumbs.revoke();
    for (const c of [lossChart, accChart, lrChart]) c.destroy();
    return refreshing;
  };
}
