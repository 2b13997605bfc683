// Models: versions, what serves, the pin and aliases; promote, unpin, rollback; exports and their reports.

import { api } from "./api.js";
import { badge, bytes, clear, errorBox, h, nextId, pct, put, shortId, table, when } from "./dom.js";

export async function list(main, { signal }) {
  const models = await api("/models", { signal });
  put(main, 
    h("h1", {}, "Models"),
    h(
      "section",
      { class: "card" },
      table(
        [
          { label: "Model", cell: (m) => h("a", { href: `#/models/${encodeURIComponent(m.name)}` }, m.name) },
          { label: "Serving", cell: (m) => (m.serving_version ? `v${m.serving_version}` : "—") },
          { label: "Pinned", cell: (m) => (m.pinned_version ? `v${m.pinned_version}` : "best") },
          {
            label: "Aliases",
            cell: (m) => Object.entries(m.aliases || {}).map(([a, v]) => h("span", { class: "tag" }, `${a} → v${v}`)),
          },
          { label: "Versions", cell: (m) => m.versions.length, class: "num" },
          {
            label: "Best val acc.",
            cell: (m) => {
              const accs = m.versions.map((v) => v.val_accuracy).filter((a) => a !== null && a !== undefined);
              return pct(accs.length ? Math.max(...accs) : null);
            },
            class: "num",
          },
        ],
        models,
        { empty: "No models yet: a job that succeeds registers a version." },
      ),
    ),
  );
}

function reportTable(report) {
  if (!report) return h("p", { class: "muted" }, "No verification report yet.");
  const rows = Object.entries(report).filter(([, r]) => r && typeof r === "object");
  if (!rows.length) return h("pre", { class: "small" }, JSON.stringify(report, null, 2));
  return table(
    [
      { label: "Split", cell: ([s]) => s },
      { label: "Images", cell: ([, r]) => r.images ?? "—", class: "num" },
      { label: "Top-1 agreement", cell: ([, r]) => pct(r.top1_agreement, 2), class: "num" },
      { label: "Accuracy", cell: ([, r]) => pct(r.accuracy), class: "num" },
      { label: "fp32 accuracy", cell: ([, r]) => pct(r.reference_accuracy), class: "num" },
      { label: "Speed-up", cell: ([, r]) => (r.speedup ? `${r.speedup}×` : "—"), class: "num" },
      { label: "Passed", cell: ([, r]) => (r.passed === undefined ? "—" : r.passed ? "yes" : `no: ${r.reason || ""}`) },
    ],
    rows,
  );
}

async function exportsPanel(name, version, signal) {
  const box = h("div", { class: "exports" });
  const status = h("div", { "aria-live": "polite" });
  const formatId = nextId("format");
  const format = h("select", { id: formatId }, h("option", { value: "onnx" }, "onnx (fp32)"), h("option", { value: "onnx-int8" }, "onnx-int8 (static int8)"));
  const request = h("button", { type: "button" }, "Request export");
  const base = `/models/${encodeURIComponent(name)}/versions/${version}/exports`;
  async function refresh() {
    try {
      const list = await api(base, { signal }); // a list, not a page
      clear(
        box,
        list.length
          ? list.map((x) =>
              h(
                "div",
                { class: "export" },
                h("h4", {}, `${x.format} `, badge(x.status), " ", h("span", { class: "muted small" }, `${bytes(x.size_bytes)} · ${when(x.created_at)}`)),
                x.sha256 ? h("p", { class: "muted small mono" }, `sha256 ${x.sha256}`) : null,
                x.error ? errorBox({ code: x.status, message: x.error }) : null,
                reportTable(x.report),
              ),
            )
          : h("p", { class: "muted" }, "No exports of this version."),
      );
    } catch (err) {
      if (err.name !== "AbortError") clear(box, errorBox(err));
    }
  }
  request.addEventListener("click", async () => {
    try {
      await api(base, { method: "POST", json: { format: format.value } });
      clear(status, h("p", { class: "muted" }, "Export requested: a worker makes and verifies it."));
      await refresh();
    } catch (err) {
      clear(status, errorBox(err));
    }
  });
  await refresh();
  return h(
    "div",
    { class: "card inset" },
    h("h3", {}, `Exports of v${version}`),
    h("div", { class: "inline-form" }, h("label", { for: formatId }, "Format"), format, request),
    status,
    box,
  );
}

export async function detail(main, { params: [name], signal }) {
  const status = h("div", { "aria-live": "polite", id: "model-status" });
  const body = h("div", {});
  const path = `/models/${encodeURIComponent(name)}`;

  async function act(fn, done) {
    try {
      await fn();
      clear(status, h("p", { class: "ok" }, done));
      await refresh();
    } catch (err) {
      clear(status, errorBox(err));
    }
  }

  /** A button that runs an API call, then says `done` and reloads the page's data (or shows the error). */
  const button = (text, call, done, attrs = {}) =>
    h("button", { type: "button", ...attrs, onclick: () => act(call, done) }, text);

  async function refresh() {
    const [m, hist] = await Promise.all([api(path, { signal }), api(`${path}/history?limit=10`, { signal })]);
    const exportsSlot = h("div", {});
    const aliasId = nextId("alias");
    const aliasVersionId = nextId("alias-version");
    const aliasName = h("input", { id: aliasId, type: "text", placeholder: "production", maxlength: 40 });
    const aliasVersion = h("select", { id: aliasVersionId }, m.versions.map((v) => h("option", { value: v.version }, `v${v.version}`)));
    const aliasForm = h(
      "form",
      { class: "inline-form" },
      h("label", { for: aliasId }, "Alias"),
      aliasName,
      h("label", { for: aliasVersionId }, "points at"),
      aliasVersion,
      h("button", { type: "submit" }, "Set alias"),
    );
    aliasForm.addEventListener("submit", (e) => {
      e.preventDefault();
      const alias = aliasName.value.trim();
      act(
        () => api(`${path}/aliases/${encodeURIComponent(alias)}`, { method: "PUT", json: { version: Number(aliasVersion.value) } }),
        `${alias} now points at v${aliasVersion.value}.`,
      );
    });

    clear(
      body,
      h(
        "section",
        { class: "card title-row" },
        h(
          "div",
          {},
          h("h2", {}, "Serving"),
          h(
            "p",
            { class: "serving-line" },
            m.serving_version ? h("strong", {}, `v${m.serving_version} serves`) : "nothing serves yet",
            " · ",
            m.pinned_version
              ? `pinned to v${m.pinned_version}${m.pinned_backend ? ` (${m.pinned_backend})` : ""}`
              : "no pin: the best version serves",
          ),
        ),
        h(
          "div",
          { class: "actions" },
          m.pinned_version
            ? button("Unpin", () => api(`${path}/pin`, { method: "DELETE" }), "Unpinned: the best version serves.")
            : null,
          button(
            "Roll back the pin",
            () => api(`${path}/rollback`, { method: "POST", json: {} }),
            "The pin is back at its previous value.",
          ),
        ),
      ),
      h("section", { class: "card" }, h("h2", {}, "Versions"),
        table(
          [
            { label: "Version", cell: (v) => `v${v.version}` },
            {
              label: "State",
              cell: (v) => [
                v.serving ? h("span", { class: "tag serving" }, "serving") : null,
                v.version === m.pinned_version ? h("span", { class: "tag" }, "pinned") : null,
                ...Object.entries(m.aliases || {})
                  .filter(([, x]) => x === v.version)
                  .map(([a]) => h("span", { class: "tag" }, a)),
              ],
            },
            { label: "Architecture", cell: (v) => v.arch },
            { label: "Val acc.", cell: (v) => pct(v.val_accuracy), class: "num" },
            { label: "Test acc.", cell: (v) => pct(v.test_accuracy), class: "num" },
            { label: "Job", cell: (v) => h("a", { href: `#/jobs/${v.job_id}` }, shortId(v.job_id)) },
            { label: "Created", cell: (v) => when(v.created_at) },
            {
              label: "Actions",
              cell: (v) =>
                h(
                  "div",
                  { class: "actions" },
                  button(
                    "Promote",
                    () => api(`${path}/versions/${v.version}/promote`, { method: "POST" }),
                    `v${v.version} is pinned and serves.`,
                    { class: "promote", "aria-label": `promote v${v.version}` },
                  ),
                  h("button", {
                    type: "button",
                    "aria-label": `exports of v${v.version}`,
                    onclick: async () => clear(exportsSlot, await exportsPanel(name, v.version, signal)),
                  }, "Exports"),
                ),
            },
          ],
          [...m.versions].sort((a, b) => b.version - a.version),
        ),
        exportsSlot,
      ),
      h(
        "section",
        { class: "card" },
        h("h2", {}, "Aliases"),
        aliasForm,
        table(
          [
            { label: "Alias", cell: ([a]) => h("code", {}, `${m.name}@${a}`) },
            { label: "Version", cell: ([, v]) => `v${v}` },
            { label: "Backend", cell: ([a]) => m.alias_backends?.[a] || "torch" },
            {
              label: "Actions",
              cell: ([a]) =>
                h(
                  "div",
                  { class: "actions" },
                  button("Roll back", () => api(`${path}/rollback`, { method: "POST", json: { alias: a } }), `${a} rolled back.`),
                  button(
                    "Remove",
                    () => api(`${path}/aliases/${encodeURIComponent(a)}`, { method: "DELETE" }),
                    `${a} removed.`,
                    { class: "danger" },
                  ),
                ),
            },
          ],
          Object.entries(m.aliases || {}),
          { empty: "No aliases." },
        ),
      ),
      h(
        "section",
        { class: "card" },
        h("h2", {}, "History"),
        table(
          [
            { label: "When", cell: (c) => when(c.at) },
            { label: "Target", cell: (c) => c.target },
            { label: "Action", cell: (c) => c.action },
            { label: "From", cell: (c) => (c.from_version ? `v${c.from_version}` : "—") },
            { label: "To", cell: (c) => (c.to_version ? `v${c.to_version}` : "—") },
            { label: "By", cell: (c) => c.actor },
          ],
          hist.items,
          { empty: "No promotions or rollbacks yet." },
        ),
      ),
    );
  }

  put(main, h("p", { class: "crumbs" }, h("a", { href: "#/models" }, "Models"), " / ", name), h("h1", {}, name), status, body);
  await refresh();
}
