// sessionStorage for the dashboard's modules under Node, holding a test key (imported before them).
const store = new Map();
globalThis.sessionStorage = {
  getItem: (k) => (store.has(k) ? store.get(k) : null),
  setItem: (k, v) => store.set(k, String(v)),
  removeItem: (k) => store.delete(k),
};
sessionStorage.setItem("visiontune.apiKey", "vt_test");
