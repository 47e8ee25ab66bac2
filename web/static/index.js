/* The live dashboard (/): counts by state, running and pending jobs with their bars moving,
 * batches, recently finished jobs, filters by status, pipeline and tag; the form starts a job.
 *
 * Everything comes from one stream of every job (GET /api/v1/events), followed by
 * progress-client.js's followAll(): "overview" (counts, active, finished, batches; first, and
 * again after a reconnect), then "job", "counts" and "batch" as they change. When the stream
 * fails, followAll polls the overview (GET /api/v1/overview) and tries the stream again later.
 *
 * Filters: client-side at once, and in the page's query (?status=&pipeline=&tag=), which the
 * stream takes too: a changed filter reopens it. Rows are drawn from the page's <template>s;
 * each job keeps its row, so a bar glides and a finished job's row moves to the finished list.
 * Under PROGRESS_READ_AUTH=token (cfg.token: the API token the page was opened with) the stream
 * and the links carry it on. No inline script or style (the pages' CSP).
 */
import { followAll } from "./progress-client.js";

const cfg = JSON.parse(document.getElementById("page-config").textContent);
const ACTIVE = new Set(["pending", "running"]);
const $ = (id) => document.getElementById(id);
const el = {
  conn: $("conn"), connDot: $("conn-dot"), counts: $("counts"), filters: $("filters"),
  status: $("filter-status"), pipeline: $("filter-pipeline"), tag: $("filter-tag"), tags: $("tag-list"),
  clear: $("filters-clear"),
  lists: { active: $("active-list"), finished: $("finished-list"), batches: $("batch-list") },
  empty: { active: $("active-empty"), finished: $("finished-empty"), batches: $("batches-empty") },
  n: { active: $("active-n"), finished: $("finished-n"), batches: $("batches-n") },
  jobRow: $("job-row"), batchRow: $("batch-row"),
  form: $("submit-form"), error: $("submit-error"),
};

const state = {
  filters: { status: cfg.filters.status || "", pipeline: cfg.filters.pipeline || "", tag: cfg.filters.tag || "" },
  counts: null,
  jobs: new Map(), // job_id -> snapshot
  batches: new Map(), // batch_id -> snapshot
  pipelines: [],
  offset: 0, // server clock minus ours
  mode: null,
  follower: null,
};
const rows = new Map(); // "job:<id>" | "batch:<id>" -> its <li>, kept while shown

function withToken(url) {
  return cfg.token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(cfg.token) : url;
}

function ago(iso) {
  const t = Date.parse(iso);
  if (isNaN(t)) return "";
  const s = Math.max(0, Math.round((Date.now() + state.offset - t) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return Math.floor(s / 86400) + " d ago";
}

// As the server says it (models.is_stale), on the server's clock: a running job with no progress
// for stale_after seconds, or one pending for pending_stale_after since it was created.
function isStale(job) {
  if (job.status !== "running" && job.status !== "pending") return false;
  const running = job.status === "running";
  const since = Date.parse(running ? job.progress_updated_at : job.created_at);
  const limit = (running ? cfg.stale_after : cfg.pending_stale_after) * 1000;
  return !isNaN(since) && Date.now() + state.offset - since > limit;
}

function admits(item) {
  const f = state.filters;
  return (!f.pipeline || item.pipeline === f.pipeline) && (!f.tag || (item.tags || []).includes(f.tag))
    && (!f.status || item.status === f.status);
}

/* -- what the stream says ---------------------------------------------------------- */

function onUpdate(data, info) {
  if (info.type === "overview") {
    state.counts = data.counts;
    state.pipelines = data.pipelines || [];
    state.offset = data.server_now_ms - Date.now();
    state.jobs = new Map([...data.active, ...data.finished].map((j) => [j.job_id, j]));
    state.batches = new Map(data.batches.map((b) => [b.batch_id, b]));
  } else if (info.type === "job") {
    const old = state.jobs.get(data.job_id);
    if (old && typeof old.seq === "number" && data.seq <= old.seq) return; // old news
    state.jobs.set(data.job_id, old ? { ...old, ...data } : data);
  } else if (info.type === "counts") {
    state.counts = data;
  } else if (info.type === "batch") {
    state.batches.set(data.batch_id, data);
  }
  scheduleRender();
}

function onMode(mode) {
  state.mode = mode;
  el.connDot.setAttribute("data-mode", mode === "live" ? "live" : mode === "polling" ? "polling" : "");
  el.conn.textContent = mode === "live" ? "Live." : mode === "polling" ? "Checking every few seconds." : "Connecting…";
}

function query() {
  const q = new URLSearchParams();
  for (const [name, value] of Object.entries(state.filters)) if (value) q.set(name, value);
  q.set("limit", String(cfg.finished_limit));
  return q.toString();
}

function start() {
  if (state.follower) state.follower.close();
  state.follower = followAll(cfg.overview_url + "?" + query(), {
    onUpdate, onMode, token: cfg.token, pollMs: cfg.poll_ms, retryMs: cfg.stream_retry_ms,
    retryMaxMs: cfg.stream_retry_max_ms,
  });
}

/* -- drawing ------------------------------------------------------------------------- */

let pending = false;
function scheduleRender() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; render(); });
}

function fillBar(li, status, percent) {
  const pct = Math.min(100, Math.max(0, percent || 0));
  const fill = li.querySelector(".mini-fill");
  fill.style.width = pct + "%";
  fill.setAttribute("data-status", status);
  li.querySelector(".mini-pct").textContent = Math.floor(pct) + "%";
}

function drawTags(li, tags) {
  const box = li.querySelector(".job-tags");
  const chips = (tags || []).map((tag) => { // each a link to the list of that tag
    const a = document.createElement("a");
    a.className = "tag";
    a.href = "?tag=" + encodeURIComponent(tag);
    a.textContent = tag;
    return a;
  });
  if (box.textContent !== (tags || []).join("")) box.replaceChildren(...chips);
}

function jobRow(job) {
  const key = "job:" + job.job_id;
  let li = rows.get(key);
  if (!li) {
    li = el.jobRow.content.firstElementChild.cloneNode(true);
    li.setAttribute("data-job", job.job_id);
    li.querySelector(".job-id").textContent = job.job_id;
    rows.set(key, li);
  }
  const link = li.querySelector(".job-paper");
  link.href = withToken(cfg.status_base + encodeURIComponent(job.paper_id) + "/");
  link.textContent = job.paper_id;
  li.setAttribute("data-status", job.status);
  const badge = li.querySelector(".job-status");
  badge.textContent = job.status;
  badge.setAttribute("data-status", job.status);
  li.querySelector(".job-stale").hidden = !isStale(job);
  fillBar(li, job.status, job.progress_percent);
  const step = job.status === "failed" && job.error ? job.error : job.current_step || job.message || "";
  li.querySelector(".job-step").textContent = step;
  li.querySelector(".job-updated").textContent = ago(job.status in { pending: 1, running: 1 }
    ? job.progress_updated_at : job.finished_at || job.progress_updated_at);
  drawTags(li, job.tags);
  return li;
}

function batchRow(batch) {
  const key = "batch:" + batch.batch_id;
  let li = rows.get(key);
  if (!li) {
    li = el.batchRow.content.firstElementChild.cloneNode(true);
    li.setAttribute("data-batch", batch.batch_id);
    li.querySelector(".batch-id").textContent = batch.batch_id;
    rows.set(key, li);
  }
  const link = li.querySelector(".batch-name");
  link.href = withToken(cfg.batch_base + encodeURIComponent(batch.batch_id) + "/");
  link.textContent = batch.name || "Batch " + batch.batch_id;
  li.setAttribute("data-status", batch.status);
  const badge = li.querySelector(".batch-status");
  badge.textContent = batch.status;
  badge.setAttribute("data-status", batch.status);
  fillBar(li, batch.status, batch.progress_percent);
  const finished = batch.completed + batch.failed + batch.canceled;
  li.querySelector(".batch-counts").textContent = finished + " of " + batch.total + " finished"
    + (batch.failed ? " · " + batch.failed + " failed" : "") + (batch.running ? " · " + batch.running + " running" : "");
  drawTags(li, batch.tags);
  return li;
}

// The list's children become `items`, in order, moving as few rows as it can.
function place(list, items) {
  items.forEach((li, i) => { if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null); });
  while (list.children.length > items.length) list.lastElementChild.remove();
}

const newest = (field) => (a, b) => (b[field] || "").localeCompare(a[field] || "");

function render() {
  const counts = state.counts;
  for (const a of el.counts.querySelectorAll(".state-count")) {
    const s = a.getAttribute("data-state");
    a.querySelector(".state-n").textContent = counts ? String(counts[s]) : "–";
    a.setAttribute("aria-current", state.filters.status === s ? "true" : "false");
    a.href = "?" + new URLSearchParams({ ...nonEmpty({ ...state.filters, status: "" }), status: s }).toString();
  }
  const jobs = [...state.jobs.values()].filter(admits);
  const active = jobs.filter((j) => ACTIVE.has(j.status)).sort(newest("created_at"));
  const finished = jobs.filter((j) => !ACTIVE.has(j.status)).sort(newest("finished_at")).slice(0, cfg.finished_limit);
  // a finished job the page does not show is let go of (a changed filter reopens the stream,
  // whose overview brings what the new filter shows)
  const keep = new Set([...active, ...finished].map((j) => j.job_id));
  for (const [id, job] of state.jobs) if (!ACTIVE.has(job.status) && !keep.has(id)) state.jobs.delete(id);
  const batches = [...state.batches.values()].filter(admits).sort(newest("created_at"));
  const shown = { active: active.map(jobRow), finished: finished.map(jobRow), batches: batches.map(batchRow) };
  for (const name of ["active", "finished", "batches"]) {
    place(el.lists[name], shown[name]);
    el.empty[name].hidden = shown[name].length > 0;
    el.n[name].textContent = shown[name].length ? "(" + shown[name].length + ")" : "";
  }
  for (const [key, li] of rows) if (!li.isConnected) rows.delete(key);
  drawPipelines();
  const tags = new Set([...state.jobs.values()].flatMap((j) => j.tags || []));
  if (el.tags.children.length !== tags.size) {
    el.tags.replaceChildren(...[...tags].sort().map((t) => Object.assign(document.createElement("option"), { value: t })));
  }
}

function drawPipelines() {
  const names = new Set(state.pipelines);
  if (state.filters.pipeline) names.add(state.filters.pipeline);
  const want = ["", ...[...names].sort()];
  const have = [...el.pipeline.options].map((o) => o.value);
  if (want.join("\n") === have.join("\n")) return;
  el.pipeline.replaceChildren(...want.map((name) => {
    const o = document.createElement("option");
    o.value = name;
    o.textContent = name || "any";
    return o;
  }));
  el.pipeline.value = state.filters.pipeline;
}

function nonEmpty(obj) {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v));
}

/* -- filters ------------------------------------------------------------------------- */

function setFilters(next) {
  const changed = ["status", "pipeline", "tag"].some((k) => (next[k] || "") !== state.filters[k]);
  state.filters = { status: next.status || "", pipeline: next.pipeline || "", tag: next.tag || "" };
  el.status.value = state.filters.status;
  el.tag.value = state.filters.tag;
  drawPipelines();
  el.pipeline.value = state.filters.pipeline;
  const q = new URLSearchParams(nonEmpty(state.filters));
  history.replaceState(null, "", q.toString() ? "?" + q : location.pathname);
  render(); // at once, from what the page has
  if (changed) start(); // and the stream's own view of the new filter
}

el.filters.addEventListener("change", () => {
  if (el.tag.value && !el.tag.checkValidity()) return;
  setFilters({ status: el.status.value, pipeline: el.pipeline.value, tag: el.tag.value.trim() });
});
el.filters.addEventListener("submit", (ev) => { ev.preventDefault(); });
el.clear.addEventListener("click", (ev) => { ev.preventDefault(); setFilters({}); });
el.counts.addEventListener("click", (ev) => {
  const a = ev.target.closest(".state-count");
  if (!a) return;
  ev.preventDefault();
  const s = a.getAttribute("data-state");
  setFilters({ ...state.filters, status: state.filters.status === s ? "" : s });
});
document.addEventListener("click", (ev) => { // a tag chip filters by its tag, without a reload
  const chip = ev.target.closest(".job-tags a.tag");
  if (!chip || ev.metaKey || ev.ctrlKey || ev.shiftKey) return;
  ev.preventDefault();
  setFilters({ ...state.filters, tag: chip.textContent });
});

/* -- starting a job ------------------------------------------------------------------ */

el.form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  el.error.hidden = true;
  const headers = { "Content-Type": "application/json" };
  const token = $("token");
  if (token && token.value) headers.Authorization = "Bearer " + token.value;
  else if (cfg.token) headers.Authorization = "Bearer " + cfg.token; // the API token the page was opened with
  fetch(cfg.api_jobs_url, {
    method: "POST", cache: "no-store", headers,
    body: JSON.stringify({ paper_id: $("paper-id").value.trim() }),
  }).then((r) => r.json().then((data) => ({ ok: r.ok, data }))).then((res) => {
    if (res.ok) { window.location.href = res.data.page_url; return; }
    el.error.textContent = res.data.detail || res.data.error || "The job could not be started.";
    el.error.hidden = false;
  }, (err) => {
    el.error.textContent = "The job could not be started: " + err.message;
    el.error.hidden = false;
  });
});

onMode("connecting");
start();
setInterval(scheduleRender, 5000); // "… ago" and staleness move with the clock
