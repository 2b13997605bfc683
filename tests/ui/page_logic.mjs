// The dashboard's DOM-free logic under Node, one scenario per key of the JSON it prints:
//   classOrder:  the confusion matrix's class order for numeric class names ("10" sorts before "9" as a string)
//   routes:      hash segments decoded and checked before any fetch (bad percent-encoding, "../" smuggling)
//   polling:     GET /jobs/{id}/events answers 503 (no live events): the job is polled until it finishes
//   badHandler:  an onEvent that throws on one event: logged, the stream goes on, no reconnect
//   resume:      the first connection is cut mid-stream (an event split across chunks, CRLF line ends, a comment, a
//                two-line data field): the client reconnects with Last-Event-ID, gets every event once, in order, and
//                stops after the terminal status
import "./session_stub.mjs";
import { followEvents } from "../../app/ui/static/api.js";
import { classNames } from "../../app/ui/static/job.js";
import { isModelName, isUuid, routeParams } from "../../app/ui/static/params.js";

const realSetTimeout = globalThis.setTimeout;
globalThis.setTimeout = (fn, _ms, ...args) => realSetTimeout(fn, 0, ...args); // no waiting between polls/retries

const out = {};

// ---- classOrder: metrics as the server stores them (an ImageFolder's classes sorted as strings), through JSON.
const stored = JSON.parse(
  JSON.stringify({
    class_names: ["10", "9", "cat"],
    per_class: { 10: { support: 5 }, 9: { support: 7 }, cat: { support: 2 } },
    confusion_matrix: [[5, 0, 0], [0, 7, 0], [0, 0, 2]],
  }),
);
const old = { per_class: stored.per_class, confusion_matrix: stored.confusion_matrix }; // stored before class_names
out.classOrder = {
  objectKeys: Object.keys(stored.per_class),
  withClassNames: classNames(stored),
  oldWithDataset: classNames(old, ["10", "9", "cat"]),
  oldWithOtherDataset: classNames(old, ["10", "9", "dog"]),
  oldAlone: classNames(old, null),
};

// ---- routes
const id = "0b0f6f3e-8a44-4c43-9d4e-0c6c1f1d2a10";
out.routes = {
  badEncoding: routeParams(["%E0"], [isUuid]),
  smuggled: routeParams([`..%2Fjobs%2F${id}`], [isUuid]),
  job: routeParams([id], [isUuid]),
  model: routeParams(["pets.v2"], [isModelName]),
  modelWithSlash: routeParams(["a%2Fb"], [isModelName]),
  modelDots: routeParams([".."], [isModelName]),
  encodedModel: routeParams(["my%2Dmodel"], [isModelName]),
};

// ---- polling
{
  const sent = [];
  globalThis.fetch = async (url) => {
    sent.push(url);
    const body = { error: { code: "service_unavailable", message: "live events need Redis" } };
    return new Response(JSON.stringify(body), {
      status: 503,
      headers: { "content-type": "application/json", "retry-after": "60" },
    });
  };
  const statuses = ["running", "running", "succeeded"];
  let polls = 0;
  const states = [];
  const events = [];
  await followEvents("job-1", {
    signal: new AbortController().signal,
    onEvent: (e) => events.push(e),
    onState: (s, err) => states.push(err ? `${s}: ${err.message}` : s),
    poll: async () => statuses[polls++],
  });
  out.polling = { sent, polls, states, events };
}

// ---- badHandler
{
  const sent = [];
  const chunks = [1, 2, 3].map((n) => `event: progress\ndata: {"step": ${n}}\nid: ${n}-0\n\n`);
  chunks.push('event: status\ndata: {"status": "succeeded"}\nid: 4-0\n\n');
  globalThis.fetch = async (url, init) => {
    sent.push(new Headers(init.headers).get("Last-Event-ID"));
    let i = 0;
    const body = new ReadableStream({
      pull(controller) {
        if (i < chunks.length) controller.enqueue(new TextEncoder().encode(chunks[i++]));
        else controller.close();
      },
    });
    return new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } });
  };
  const logged = [];
  const realError = console.error;
  console.error = (...args) => logged.push(String(args[0]));
  const seen = [];
  const states = [];
  await followEvents("job-2", {
    signal: new AbortController().signal,
    onEvent: (e) => {
      seen.push(e.id);
      if (e.id === "2-0") throw new TypeError("a page bug");
    },
    onState: (s) => states.push(s),
  });
  console.error = realError;
  out.badHandler = { sent, seen, states, logged };
}

// ---- resume
{
  const first = [
    ": keep-alive\r\n\r\n",
    'event: status\r\ndata: {"status": "queued"}\r\nid: 1-0\r\n\r\n',
    'event: progress\ndata: {"step": 1,\ndata:  "steps": 4}\nid: 2-0\n\nevent: prog',
    'ress\ndata: {"step": 2, "steps": 4}\nid: 3-0\n\nevent: progress\ndata: {"step": 3', // cut inside event 4
  ];
  const second = [
    'event: progress\ndata: {"step": 3, "steps": 4}\nid: 4-0\n\n',
    'event: status\ndata: {"status": "succeeded"}\nid: 5-0\n\n',
  ];
  const sent = [];
  let calls = 0;
  globalThis.fetch = async (url, init) => {
    const headers = new Headers(init.headers);
    sent.push({ url, lastEventId: headers.get("Last-Event-ID"), auth: headers.get("Authorization") });
    const chunks = calls++ === 0 ? first : second;
    let i = 0;
    const body = new ReadableStream({
      pull(controller) {
        // one chunk per read; after the last, the first connection breaks and the second ends cleanly
        if (i < chunks.length) controller.enqueue(new TextEncoder().encode(chunks[i++]));
        else if (chunks === first) controller.error(new TypeError("network error: connection reset"));
        else controller.close();
      },
    });
    return new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } });
  };
  const received = [];
  const states = [];
  await followEvents("job-1", {
    signal: new AbortController().signal,
    onEvent: (e) => received.push(e),
    onState: (s) => states.push(s),
  });
  out.resume = { received, sent, states };
}

console.log(JSON.stringify(out));
