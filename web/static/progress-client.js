/* progress-client.js: follow a job (or a batch) of progress-service live, from any page.
 *
 *   import { follow } from "https://progress.example.org/static/progress-client.js";
 *   const job = follow("https://progress.example.org/api/v1/jobs/JOB_ID", {
 *     onUpdate(snapshot, info) { ... },   // every newer snapshot; info: {type, id, source}
 *     onEnd(snapshot) { ... },            // once, with the terminal snapshot
 *     token: "...",                       // optional: a read token (PROGRESS_READ_AUTH=token)
 *   });
 *   job.close();                          // stop following
 *
 * `url` is the job's (or batch's) JSON URL, the submit answer's `status_url`; its
 * event stream is `url + "/events"` (option `eventsUrl`). No dependency, no build step.
 *
 * How it follows:
 * - Live through EventSource. Each message's id is kept: a stream opened again later
 *   resumes after it (`?last_event_id=`, which the server treats as `Last-Event-ID`), so
 *   nothing is missed and nothing is seen twice.
 * - The stream ends after the terminal event: onEnd, and nothing more. A stream reopened
 *   after the end is answered `204 No Content` (the client has the last event already):
 *   an error to EventSource, after which one poll reads the final snapshot and ends.
 * - When the stream fails (or is cut), it is closed (EventSource's own retries every few
 *   seconds stop) and the client polls `url` every `pollMs` (3 s) meanwhile. It opens the
 *   stream again after `retryMs` (15 s), then at doubling intervals up to `retryMaxMs`
 *   (60 s), each with +-20% jitter so that many pages do not come back at once. Once the
 *   reopened stream answers, polling stops.
 * - A snapshot whose `seq` is not newer than the last one given to onUpdate is dropped,
 *   whichever way it came: the caller never sees a job move back.
 *
 * Options besides: `onMode(mode)` ("live" | "polling" | "ended"), `lastEventId` (resume
 * from there), `poll` (a function returning a promise: the caller's own poll, used
 * instead of reading `url`; the caller then ends it with close()), `eventType` (the
 * stream's event that carries what `url` answers; "batch" for a batch's URL, else
 * "progress") and `eventTypes` (more events to give onUpdate, as they come).
 *
 * Every job at once (the live dashboard), with the same logic:
 *
 *   import { followAll } from ".../static/progress-client.js";
 *   followAll("https://progress.example.org/api/v1/overview?pipeline=video", {
 *     onUpdate(data, info) { ... },  // info.type: "overview" (counts, active, finished,
 *   });                              // batches), "job", "counts" or "batch"
 *
 * Its stream is /api/v1/events (same query); it never ends, and a reopened one starts
 * with a fresh "overview"; while it is down, `url` (the overview) is polled.
 *
 * Another origin: the API answers its reads (JSON and event streams) and this file with
 * `Access-Control-Allow-Origin: *`, so a page anywhere can import it and follow a job.
 */

const TERMINAL = new Set(["completed", "failed", "canceled"]);
const DEFAULTS = { pollMs: 3000, retryMs: 15000, retryMaxMs: 60000 };

export function isTerminal(snapshot) {
  return !!snapshot && TERMINAL.has(snapshot.status);
}

function withQuery(url, params) {
  const u = new URL(url, document.baseURI);
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") u.searchParams.set(name, String(value));
  }
  return u.toString();
}

function noop() {}

export function follow(url, options = {}) {
  const opts = { ...DEFAULTS, ...options };
  const onUpdate = opts.onUpdate || noop, onEnd = opts.onEnd || noop, onMode = opts.onMode || noop;
  const pollUrl = new URL(url, document.baseURI).toString(); // its query kept (a filter)
  const base = new URL(url, document.baseURI);
  base.search = "";
  const eventsUrl = opts.eventsUrl || base.toString().replace(/\/$/, "") + "/events";
  // a batch's own snapshots come as `event: batch` (its members' as `progress`); a job's as `progress`
  const mainType = opts.eventType || (/\/batches\/[^/]+\/?$/.test(base.pathname) ? "batch" : "progress");

  const state = {
    mode: null,
    last: null, // the newest main snapshot given to onUpdate
    lastEventId: opts.lastEventId == null ? null : String(opts.lastEventId),
    source: null,
    pollTimer: null,
    retryTimer: null,
    retryDelay: opts.retryMs,
    polling: false, // a poll is under way
  };

  function setMode(mode) {
    if (state.mode === mode) return;
    state.mode = mode;
    onMode(mode);
  }

  // A snapshot of the followed job or batch: given on if newer; the end if terminal.
  function deliver(snap, info) {
    if (state.mode === "ended" || !snap || typeof snap !== "object") return;
    if (info.type === mainType) {
      const last = state.last;
      if (last && typeof snap.seq === "number" && typeof last.seq === "number" && snap.seq <= last.seq) return;
      state.last = snap;
    }
    onUpdate(snap, info);
    if (info.type === mainType && isTerminal(snap)) end();
  }

  /* -- the stream ---------------------------------------------------------- */

  function openStream() {
    if (!window.EventSource) { startPolling(); return; }
    closeStream();
    const source = new EventSource(withQuery(eventsUrl, { token: opts.token, last_event_id: state.lastEventId }));
    state.source = source;
    source.onopen = () => {
      if (state.source !== source) return;
      stopPolling();
      cancelRetry();
      state.retryDelay = opts.retryMs;
      setMode("live");
    };
    const onMessage = (ev) => {
      if (state.source !== source) return;
      let snap;
      try { snap = JSON.parse(ev.data); } catch (e) { return; }
      if (ev.lastEventId) state.lastEventId = ev.lastEventId;
      deliver(snap, { type: ev.type, id: ev.lastEventId || null, source: "stream" });
    };
    const types = new Set(["progress", mainType, ...(opts.eventTypes || [])]);
    types.forEach((type) => source.addEventListener(type, onMessage));
    source.onerror = () => {
      if (state.source !== source) return;
      // Failed, refused, cut, or 204 (the end, which we have): close it, poll (which
      // finds the end, if it is one), and try the stream again later.
      closeStream();
      if (state.mode === "ended") return;
      startPolling();
      scheduleRetry();
    };
  }

  function closeStream() {
    const source = state.source;
    if (source) { source.onerror = null; source.onopen = null; source.close(); state.source = null; }
  }

  function scheduleRetry() {
    if (state.retryTimer || !window.EventSource) return;
    const wait = state.retryDelay * (0.8 + 0.4 * Math.random());
    state.retryDelay = Math.min(state.retryDelay * 2, opts.retryMaxMs);
    state.retryTimer = setTimeout(() => {
      state.retryTimer = null;
      if (state.mode === "polling") openStream(); // polling goes on until the stream answers
    }, wait);
  }

  function cancelRetry() {
    if (state.retryTimer) { clearTimeout(state.retryTimer); state.retryTimer = null; }
  }

  /* -- polling --------------------------------------------------------------- */

  function readSnapshot() {
    return fetch(withQuery(pollUrl, { token: opts.token }), {
      cache: "no-store", headers: { Accept: "application/json" },
    }).then((r) => {
      if (!r.ok) throw new Error(pollUrl + ": HTTP " + r.status);
      return r.json();
    }).then((snap) => deliver(snap, { type: mainType, id: null, source: "poll" }));
  }

  function pollOnce() {
    if (state.polling || state.mode === "ended") return;
    state.polling = true;
    const done = () => { state.polling = false; };
    Promise.resolve().then(opts.poll || readSnapshot).then(done, done); // a failed poll: the next one tries
  }

  function startPolling() {
    if (state.pollTimer || state.mode === "ended") return;
    setMode("polling");
    pollOnce();
    state.pollTimer = setInterval(pollOnce, opts.pollMs);
  }

  function stopPolling() {
    if (state.pollTimer) { clearInterval(state.pollTimer); state.pollTimer = null; }
  }

  /* -- the end --------------------------------------------------------------- */

  function stop() {
    closeStream();
    stopPolling();
    cancelRetry();
  }

  function end() {
    if (state.mode === "ended") return;
    stop();
    setMode("ended");
    onEnd(state.last);
  }

  openStream();

  return {
    close() { stop(); state.mode = "ended"; },
    get mode() { return state.mode; },
    get snapshot() { return state.last; },
  };
}

// Every job (the live dashboard): `url` is GET /api/v1/overview (with its filters), polled while
// the stream is down; the stream is GET /api/v1/events with the same query.
export function followAll(url, options = {}) {
  const u = new URL(url, document.baseURI);
  const events = new URL(u.pathname.replace(/\/overview\/?$/, "/events") + u.search, u);
  return follow(u.toString(), {
    ...options, eventsUrl: events.toString(), eventType: "overview", eventTypes: ["job", "counts", "batch"],
  });
}
