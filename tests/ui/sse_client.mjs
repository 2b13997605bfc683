// The dashboard's event-stream client (app/ui/static/api.js followEvents) against a scripted server: the first
// connection is cut mid-stream (an event split across chunks, CRLF line ends, a comment, a two-line data field);
// the client must reconnect with Last-Event-ID and end up with every event once, in order, and stop after the
// terminal status. Prints the received events and the Last-Event-ID headers it sent as JSON.
import "./session_stub.mjs";
import { followEvents } from "../../app/ui/static/api.js";


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

// The reconnect waits 1 s (doubling); make timers immediate for the test.
const realSetTimeout = globalThis.setTimeout;
globalThis.setTimeout = (fn, _ms, ...args) => realSetTimeout(fn, 0, ...args);

const received = [];
const states = [];
await followEvents("job-1", {
  signal: new AbortController().signal,
  onEvent: (e) => received.push(e),
  onState: (s) => states.push(s),
});
console.log(JSON.stringify({ received, sent, states }));
