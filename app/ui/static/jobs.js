// Jobs: status, progress, best accuracy, started/finished; pick some to compare.

import { ACTIVE, api } from "./api.js";
import { badge, clear, errorBox, h, pct, progressBar, put, shortId, table, when } from "./dom.js";

const POLL_MS = 5000; // while a listed job is queued or running

/** Progress and best validation accuracy of a job, from its detail. */
export function jobFacts(detail) {
  const total = detail.config?.epochs ?? null;
  const done = detail.epochs.length;
  const accs = detail.epochs.map((e) => e.val_accuracy).filter((a) => a !== null && a !== undefined);
  const best = detail.val_metrics?.accuracy ?? (accs.length ? Math.max(...accs) : null);
  let fraction = total ? done / total : 0;
  if (detail.status === "succeeded") fraction = 1;
  return { total, done, best, fraction };
}

/**
 * The columns the jobs list and the compare picker start with: a checkbox that adds the job to `selected` or
 * removes it (aria-label "<verb> job <id>", then onToggle()), and the job's link, model, architecture and status.
 */
export function jobColumns({ label, verb, selected, onToggle }) {
  return [
    {
      label,
      cell: (j) =>
        h("input", {
          type: "checkbox",
          "aria-label": `${verb} job ${shortId(j.id)}`,
          checked: selected.has(j.id),
          onchange: (e) => {
            if (e.target.checked) selected.add(j.id);
            else selected.delete(j.id);
            onToggle();
          },
        }),
    },
    { label: "Job", cell: (j) => h("a", { href: `#/jobs/${j.id}` }, shortId(j.id)) },
    { label: "Model", cell: (j) => j.model_name },
    { label: "Architecture", cell: (j) => `${j.arch} · ${j.strategy}` },
    { label: "Status", cell: (j) => badge(j.status) },
  ];
}

export async function render(main, { signal }) {
  const box = h("section", { class: "card" }, h("p", { class: "muted" }, "Loading…"));
  const selected = new Set();
  const compareLink = h("a", { class: "button", href: "#/compare", id: "compare-selected" }, "Compare selected");
  const updateLink = () => {
    compareLink.href = `#/compare?ids=${[...selected].join(",")}`;
    compareLink.textContent = selected.size ? `Compare selected (${selected.size})` : "Compare selected";
  };
  let timer = null;
  let due = false; // a refresh came due while the tab was hidden: run it when the tab shows again
  // id -> detail (progress and best accuracy need the detail). A finished job's detail does not change, so it is
  // fetched once; the list is polled, and only the jobs that are active or whose status moved are fetched again.
  const known = new Map();

  async function refresh() {
    due = false;
    try {
      const page = await api("/jobs?limit=30", { signal });
      const stale = page.items.filter((j) => ACTIVE.has(j.status) || known.get(j.id)?.status !== j.status);
      const fetched = await Promise.all(stale.map((j) => api(`/jobs/${j.id}`, { signal })));
      for (const d of fetched) known.set(d.id, d);
      const details = page.items.map((j) => known.get(j.id));
      const listed = new Set(page.items.map((j) => j.id));
      for (const id of known.keys()) if (!listed.has(id)) known.delete(id);
      clear(
        box,
        table(
          [
            ...jobColumns({ label: "Compare", verb: "compare", selected, onToggle: updateLink }),
            {
              label: "Progress",
              cell: (j) => {
                const f = jobFacts(j);
                const bar = progressBar(`progress of job ${shortId(j.id)}`);
                bar.set(f.fraction, f.total ? `${f.done}/${f.total} epochs` : `${f.done} epochs`);
                return bar.el;
              },
            },
            { label: "Best val acc.", cell: (j) => pct(jobFacts(j).best), class: "num" },
            { label: "Started", cell: (j) => when(j.started_at) },
            { label: "Finished", cell: (j) => when(j.finished_at) },
          ],
          details,
          { empty: "No jobs yet: start one from New job." },
        ),
      );
      clearTimeout(timer);
      if (details.some((j) => ACTIVE.has(j.status))) timer = setTimeout(whenVisible, POLL_MS);
    } catch (err) {
      if (err.name !== "AbortError") clear(box, errorBox(err));
    }
  }
  // No polling while the tab is hidden: the refresh waits until it is shown.
  function whenVisible() {
    if (document.hidden) due = true;
    else refresh();
  }
  function onVisibility() {
    if (due && !document.hidden && !signal.aborted) refresh();
  }
  document.addEventListener("visibilitychange", onVisibility);

  put(main, 
    h(
      "div",
      { class: "title-row" },
      h("h1", {}, "Jobs"),
      h("div", { class: "actions" }, compareLink, h("a", { class: "button primary", href: "#/new" }, "New job")),
    ),
    box,
  );
  await refresh();
  return () => {
    clearTimeout(timer);
    document.removeEventListener("visibilitychange", onVisibility);
  };
}
