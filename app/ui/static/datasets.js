// Datasets: drag-and-drop upload with a progress bar, the list, and one dataset's classes with thumbnails.

import { BlobUrls, api, upload } from "./api.js";
import { bytes, clear, dropZone, errorBox, h, nextId, progressBar, put, table, when } from "./dom.js";

function uploadCard(onDone) {
  const nameId = nextId("name");
  const skipId = nextId("skip");
  const name = h("input", { id: nameId, type: "text", maxlength: 200, placeholder: "defaults to the file name" });
  const skip = h("input", { id: skipId, type: "checkbox" });
  const progress = progressBar("Upload progress");
  progress.el.hidden = true;
  const status = h("div", { class: "form-status", "aria-live": "polite" });
  let busy = false;

  async function send(files) {
    if (busy) return;
    const file = files[0];
    busy = true;
    const form = new FormData();
    form.append("file", file, file.name);
    if (name.value.trim()) form.append("name", name.value.trim());
    if (skip.checked) form.append("skip_invalid", "true");
    progress.el.hidden = false;
    progress.set(0, `${file.name}: starting`);
    clear(status);
    try {
      const ds = await upload("/datasets", form, (loaded, total) =>
        progress.set(loaded / total, `${file.name}: ${bytes(loaded)} of ${bytes(total)}`),
      );
      progress.set(1, `${file.name}: uploaded and indexed`);
      const skipped = ds.invalid_files.length ? `, ${ds.invalid_files.length} files left out` : "";
      clear(
        status,
        h(
          "p",
          { class: "ok" },
          "Added ",
          h("a", { href: `#/datasets/${ds.id}` }, ds.name),
          `: ${ds.num_images} images in ${ds.num_classes} classes${skipped}.`,
        ),
      );
      name.value = "";
      onDone(ds);
    } catch (err) {
      progress.set(0, `${file.name}: not uploaded`);
      clear(status, errorBox(err));
    } finally {
      busy = false;
    }
  }

  const zone = dropZone({
    label: "Drop a dataset archive here, or choose one",
    hint: "A .zip in ImageFolder layout (<class>/<image>, optionally under train/ val/ test/), or CIFAR-10's python format (.zip / .tar.gz)",
    accept: ".zip,.tar.gz,.tgz,application/zip,application/gzip",
    onFiles: send,
  });
  zone.el.id = "dataset-drop";
  return h(
    "section",
    { class: "card" },
    h("h2", {}, "Upload"),
    h(
      "div",
      { class: "fields two" },
      h("div", { class: "field" }, h("label", { for: nameId }, "Name"), name),
      h("div", { class: "field check" }, skip, h("label", { for: skipId }, "Leave unreadable images out")),
    ),
    zone.el,
    progress.el,
    status,
  );
}

export async function list(main, { signal }) {
  const listBox = h("section", { class: "card" }, h("h2", {}, "Datasets"), h("p", { class: "muted" }, "Loading…"));
  async function refresh() {
    try {
      const page = await api("/datasets?limit=100", { signal });
      clear(
        listBox,
        h("h2", {}, `Datasets (${page.total})`),
        table(
          [
            { label: "Name", cell: (d) => h("a", { href: `#/datasets/${d.id}` }, d.name) },
            { label: "Format", cell: (d) => d.format },
            { label: "Classes", cell: (d) => d.num_classes, class: "num" },
            { label: "Images", cell: (d) => d.num_images.toLocaleString("en"), class: "num" },
            { label: "Size", cell: (d) => bytes(d.size_bytes), class: "num" },
            { label: "Added", cell: (d) => when(d.created_at) },
            { label: "", cell: (d) => h("a", { class: "button", href: `#/new?dataset=${d.id}` }, "Train") },
          ],
          page.items,
          { empty: "No datasets yet: upload one above." },
        ),
      );
    } catch (err) {
      if (err.name !== "AbortError") clear(listBox, h("h2", {}, "Datasets"), errorBox(err));
    }
  }
  put(main, h("h1", {}, "Datasets"), uploadCard(refresh), listBox);
  await refresh();
}

export async function detail(main, { params: [id], signal }) {
  const thumbs = new BlobUrls();
  const ds = await api(`/datasets/${id}`, { signal });
  const splits = Object.keys(ds.split_counts);
  const splitId = nextId("split");
  const splitSelect = h(
    "select",
    { id: splitId },
    splits.map((s) => h("option", { value: s, selected: s === "train" }, s)),
  );
  const classesBox = h("div", { class: "classes" });
  const status = h("div", { "aria-live": "polite" });

  async function showSamples() {
    clear(status, h("p", { class: "muted" }, "Loading samples…"));
    try {
      const split = splitSelect.value;
      const data = await api(`/datasets/${id}/samples?per_class=6&split=${encodeURIComponent(split)}`, { signal });
      clear(status);
      clear(
        classesBox,
        data.classes.map((c) => {
          const strip = h("div", { class: "thumbs" });
          for (const ref of c.samples) {
            const img = h("img", { alt: `${c.name} sample ${ref}`, width: 72, height: 72, loading: "lazy" });
            strip.append(img);
            thumbs
              .get(`/datasets/${id}/images/${ref}?size=96`, signal)
              .then((url) => (img.src = url))
              .catch(() => img.replaceWith(h("span", { class: "thumb-missing" }, "?")));
          }
          return h(
            "article",
            { class: "class-card" },
            h("h3", {}, c.name, " ", h("span", { class: "count" }, c.count.toLocaleString("en"))),
            strip,
          );
        }),
      );
    } catch (err) {
      if (err.name !== "AbortError") clear(status, errorBox(err));
    }
  }
  splitSelect.addEventListener("change", showSamples);

  const counts = splits.map((s) => [s, Object.values(ds.split_counts[s]).reduce((a, b) => a + b, 0)]);
  const del = h("button", { type: "button", class: "danger" }, "Delete dataset");
  const delStatus = h("div", { "aria-live": "polite" });
  del.addEventListener("click", async () => {
    if (!window.confirm(`Delete the dataset ${ds.name}? Jobs trained on it keep their models.`)) return;
    try {
      await api(`/datasets/${id}`, { method: "DELETE" });
      location.hash = "#/datasets";
    } catch (err) {
      clear(delStatus, errorBox(err));
    }
  });

  put(main, 
    h("p", { class: "crumbs" }, h("a", { href: "#/datasets" }, "Datasets"), " / ", ds.name),
    h(
      "div",
      { class: "title-row" },
      h("h1", {}, ds.name),
      h("div", { class: "actions" }, h("a", { class: "button primary", href: `#/new?dataset=${id}` }, "Train on it"), del),
    ),
    delStatus,
    h(
      "dl",
      { class: "facts card" },
      h("dt", {}, "Format"),
      h("dd", {}, `${ds.format} (${ds.source})`),
      h("dt", {}, "Images"),
      h("dd", {}, counts.map(([s, n]) => `${s} ${n.toLocaleString("en")}`).join(" · ")),
      h("dt", {}, "Classes"),
      h("dd", {}, String(ds.num_classes)),
      h("dt", {}, "Size"),
      h("dd", {}, bytes(ds.size_bytes)),
      h("dt", {}, "Added"),
      h("dd", {}, when(ds.created_at)),
    ),
    h(
      "section",
      { class: "card" },
      h(
        "div",
        { class: "title-row" },
        h("h2", {}, "Classes"),
        h("div", { class: "field inline" }, h("label", { for: splitId }, "Split"), splitSelect),
      ),
      status,
      classesBox,
    ),
    ds.invalid_files.length
      ? h(
          "section",
          { class: "card" },
          h("h2", {}, `Left out (${ds.invalid_files.length})`),
          table(
            [
              { label: "File", cell: (f) => f.file ?? JSON.stringify(f) },
              { label: "Reason", cell: (f) => f.reason || "" },
            ],
            ds.invalid_files.slice(0, 200),
          ),
        )
      : null,
  );
  await showSamples();
  return () => thumbs.revoke();
}
