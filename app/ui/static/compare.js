// Compare: the curves of selected jobs overlaid on one chart per metric.

import { api } from "./api.js";
import { COLORS, lineChart } from "./charts.js";
import { badge, clear, errorBox, h, pct, put, shortId, table, when } from "./dom.js";
import { jobColumns } from "./jobs.js";
import { isUuid } from "./params.js";

const METRICS = [
  ["val_accuracy", "Validation accuracy", { percent: true }],
  ["val_loss", "Validation loss", {}],
  ["train_loss", "Training loss", {}],
  ["learning_rate", "Learning rate", {}],
];

export async function render(main, { query, signal }) {
  // Only job ids go into the API paths below: anything else in ?ids= is dropped.
  const picked = new Set((query.get("ids") || "").split(",").filter(isUuid));
  const page = await api("/jobs?limit=50", { signal });
  const charts = METRICS.map(([key, title, opts]) => [key, lineChart(title, opts)]);
  const summary = h("div", {});
  const status = h("div", { "aria-live": "polite" });

  // id -> promise of its metrics: a click fetches only the jobs not fetched yet (a failed fetch is forgotten, to be
  // tried again). Each draw takes a number; one whose fetches end after a later draw began is dropped, so a slow
  // old answer cannot draw over a newer selection.
  const metrics = new Map();
  const metricsOf = (id) => {
    if (!metrics.has(id)) {
      const promise = api(`/jobs/${id}/metrics`, { signal });
      metrics.set(id, promise);
      promise.catch(() => metrics.delete(id));
    }
    return metrics.get(id);
  };
  let draws = 0;

  async function draw() {
    const mine = ++draws;
    history.replaceState(null, "", `#/compare?ids=${[...picked].join(",")}`);
    try {
      const all = await Promise.all([...picked].map(metricsOf));
      if (mine !== draws) return;
      const jobs = new Map(page.items.map((j) => [j.id, j]));
      for (const [, chart] of charts) chart.reset();
      all.forEach((m, i) => {
        const j = jobs.get(m.job_id);
        const name = `${shortId(m.job_id)} ${j ? `${j.arch}/${j.strategy}` : ""}`.trim();
        for (const [key, chart] of charts)
          chart.setSeries(name, m.epochs.map((e) => ({ x: e.epoch, y: e[key] })), { color: COLORS[i % COLORS.length] });
      });
      for (const [, chart] of charts) chart.update();
      clear(
        summary,
        table(
          [
            { label: "Job", cell: (m) => h("a", { href: `#/jobs/${m.job_id}` }, shortId(m.job_id)) },
            { label: "Status", cell: (m) => badge(m.status) },
            { label: "Epochs", cell: (m) => m.epochs.length, class: "num" },
            { label: "Best epoch", cell: (m) => m.best_epoch ?? "—", class: "num" },
            { label: "Val accuracy", cell: (m) => pct(m.val?.accuracy), class: "num" },
            { label: "Test accuracy", cell: (m) => pct(m.test?.accuracy), class: "num" },
            {
              label: "Before fine-tuning (val)",
              cell: (m) => pct(m.before_finetuning?.val?.accuracy),
              class: "num",
            },
          ],
          all,
          { empty: "Pick jobs above to compare them." },
        ),
      );
      clear(status);
    } catch (err) {
      if (err.name !== "AbortError" && mine === draws) clear(status, errorBox(err));
    }
  }

  const picker = table(
    [
      ...jobColumns({ label: "Show", verb: "show", selected: picked, onToggle: draw }),
      { label: "Created", cell: (j) => when(j.created_at) },
    ],
    page.items,
    { empty: "No jobs yet." },
  );

  put(main, 
    h("h1", {}, "Compare jobs"),
    h("div", { class: "grid two charts" }, charts.map(([, c]) => c.el)),
    h("section", { class: "card" }, h("h2", {}, "Selected"), status, summary),
    h("section", { class: "card" }, h("h2", {}, "Jobs"), picker),
  );
  await draw();
  return () => charts.forEach(([, c]) => c.destroy());
}
