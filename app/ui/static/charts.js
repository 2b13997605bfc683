// Line charts over Chart.js (the pinned npm package, loaded as /ui/vendor/chart.umd.min.js when installed).

import { h } from "./dom.js";

export const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

export const chartsAvailable = () => typeof window.Chart === "function";

/**
 * A card with a titled line chart; x is numeric (epochs). Returns {el, chart, setSeries(name, points, opts)}.
 * Without Chart.js the card says how to install it and the setters do nothing.
 */
export function lineChart(title, { xTitle = "epoch", yTitle = "", logY = false, percent = false } = {}) {
  const canvas = h("canvas", { role: "img", "aria-label": title });
  const box = h("div", { class: "chart-box" }, canvas);
  const el = h("figure", { class: "chart card" }, h("figcaption", {}, title), box);
  if (!chartsAvailable()) {
    box.replaceChildren(
      h("p", { class: "muted" }, "Chart.js is not installed: run ", h("code", {}, document.body.dataset.installHint)),
    );
    return { el, chart: null, setSeries() {}, reset() {}, update() {}, destroy() {} };
  }
  const chart = new window.Chart(canvas, {
    type: "line",
    data: { datasets: [] },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      parsing: false,
      normalized: true,
      interaction: { mode: "nearest", intersect: false },
      scales: {
        x: { type: "linear", title: { display: true, text: xTitle }, ticks: { precision: 0 } },
        y: {
          type: logY ? "logarithmic" : "linear",
          title: { display: !!yTitle, text: yTitle },
          ticks: percent ? { callback: (v) => `${Math.round(v * 100)}%` } : {},
        },
      },
      plugins: { legend: { labels: { boxWidth: 12 } } },
    },
  });
  const series = new Map();
  return {
    el,
    chart,
    /** Replace (or add) a series: points [{x, y}]; opts {color, dashed, pointless}. */
    setSeries(name, points, opts = {}) {
      let ds = series.get(name);
      if (!ds) {
        const color = opts.color || COLORS[series.size % COLORS.length];
        ds = {
          label: name,
          data: [],
          borderColor: color,
          backgroundColor: color,
          borderWidth: opts.thin ? 1 : 2,
          borderDash: opts.dashed ? [6, 4] : undefined,
          pointRadius: opts.pointless ? 0 : 3,
          tension: 0,
        };
        series.set(name, ds);
        chart.data.datasets.push(ds);
      }
      ds.data = points.filter((p) => p.y !== null && p.y !== undefined);
    },
    /** Remove every series. */
    reset() {
      series.clear();
      chart.data.datasets = [];
    },
    update() {
      chart.update("none");
    },
    destroy() {
      chart.destroy();
    },
  };
}
