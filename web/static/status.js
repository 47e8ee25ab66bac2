/* The live status page of one paper's latest job.
 *
 * The job is followed by progress-client.js's follow(): live through its event
 * stream (GET /api/v1/jobs/<id>/events); when that fails, polling every 3 s
 * (cfg.poll_ms) while the stream is tried again after cfg.stream_retry_ms, then at
 * doubling intervals up to cfg.stream_retry_max_ms. This page's poll is its own:
 * /status/<paper>/?_json=1, which also tells it of a newer job of the paper and of a
 * pending job's queue. With no job yet, it polls that alone until one appears.
 * Once a terminal state is shown, stream, polling and retries all stop; but a job that
 * failed or was canceled may be retried (a new job of the paper, attempt + 1): the page
 * keeps asking ?_json=1 every cfg.poll_ms and follows the new attempt when there is one,
 * listing the earlier ones (cfg.attempts, then each attempt it replaces) with links.
 *
 * It never shows an update older than the one on screen: a snapshot whose seq
 * is not newer is ignored, and a polled status that is behind (lower percent,
 * earlier status, older time) is too, so the bar never moves back.
 *
 * Times come from the Redis server's clock: the page learns its offset from
 * the server_now_ms it was rendered with.
 *
 * Under PROGRESS_READ_AUTH=token the page was opened with a token (?token=) and
 * cfg.token holds it: fetch sends it as a bearer header, EventSource and the
 * video (which cannot send headers) as ?token=, and only to this origin.
 */
import { follow } from "./progress-client.js";

(function () {
  "use strict";

  var cfg = JSON.parse(document.getElementById("page-config").textContent);
  var RANK = { pending: 0, running: 1, completed: 2, failed: 2, canceled: 2 };
  var TERMINAL = { completed: true, failed: true, canceled: true };
  var QUIET_CHECK_MS = 10000; // a live but quiet page asks for the status this often
  var STALE_RECHECK_MS = 2000;
  var HEARTBEAT_CHECK_MS = 5000; // a stale job's full snapshot (its heartbeat) is read this often
  // web.pages sets both; the fallbacks only keep a config without them from retrying in a tight loop
  var RETRY_MS = cfg.stream_retry_ms || 15000, RETRY_MAX_MS = cfg.stream_retry_max_ms || 60000;
  var OFFSET = cfg.server_now_ms - Date.now(); // server clock minus ours

  // Everything the page knows and does, in one place; render() draws the job from it.
  var state = {
    job: null, // the snapshot on screen
    receivedAt: Date.now(), // when `job` arrived, for the ETA countdown
    stepStart: {}, // step name -> ms (server clock) it became current
    finishedAt: null,
    videoUrl: cfg.video_url || null,
    queue: cfg.queue || null, // a pending job's RQ queue: {name, workers}, from the server
    typical: cfg.typical_seconds, // how long a job of its pipeline typically takes (s), or null
    mode: "idle", // live | polling | finished | waiting
    follower: null, // progress-client.js's follow() of the job on screen
    waitTimer: null, // no job yet: the poll that waits for one
    lastNewsAt: Date.now(),
    lastCheckAt: 0,
    checking: false, // a status poll is under way
    lastBeatCheckAt: 0,
    attempts: cfg.attempts || [] // the earlier attempts of the job on screen, newest first
  };

  function $(id) { return document.getElementById(id); }
  var el = {
    card: $("job"), noJob: $("no-job"), title: $("title"), jobId: $("job-id"), pipeline: $("pipeline"),
    badge: $("status-badge"), stale: $("stale-warning"), staleText: $("stale-text"),
    error: $("error-box"), errorText: $("error-text"), canceled: $("canceled-box"),
    bar: $("progress"), fill: $("progress-fill"), text: $("progress-text"), eta: $("eta"),
    message: $("message"), updated: $("updated"), steps: $("steps"),
    videoBox: $("video-box"), video: $("video"), videoLink: $("video-link"),
    conn: $("conn"), connDot: $("conn-dot"), stepTemplate: $("step-template"),
    noWorker: $("no-worker"), noWorkerQueue: $("no-worker-queue"),
    attempt: $("attempt"), attemptNumber: $("attempt-number"), attemptsBox: $("attempts-box"),
    attempts: $("attempts")
  };

  function now() { return Date.now() + OFFSET; }
  function ms(iso) { var t = iso ? Date.parse(iso) : NaN; return isNaN(t) ? null : t; }
  function jobUrl(id, tail) { return cfg.api_jobs_url + "/" + encodeURIComponent(id) + (tail || ""); }
  // A URL of this origin with the page's read token as ?token= (a URL elsewhere never gets it).
  function withToken(url) {
    if (!cfg.token || !url) return url;
    var u = new URL(url, window.location.href);
    if (u.origin !== window.location.origin) return url;
    u.searchParams.set("token", cfg.token);
    return u.pathname + u.search + u.hash;
  }

  function duration(seconds) {
    seconds = Math.max(0, seconds);
    if (seconds < 10) return seconds.toFixed(1) + " s";
    if (seconds < 60) return Math.round(seconds) + " s";
    var m = Math.floor(seconds / 60), s = Math.round(seconds % 60);
    if (m < 60) return m + " min " + (s < 10 ? "0" : "") + s + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }
  function ago(msAgo) {
    var s = Math.max(0, Math.round(msAgo / 1000));
    if (s < 60) return s + " s ago";
    return duration(s) + " ago";
  }

  function noteEntry(at, step, status) {
    if (at === null) return;
    if (step && !(step in state.stepStart)) state.stepStart[step] = at;
    if (TERMINAL[status] && state.finishedAt === null) state.finishedAt = at;
  }
  function noteHistory(entries) {
    (entries || []).forEach(function (e) { noteEntry(ms(e.at), e.current_step, e.status); });
  }
  // A retry replaces the job on screen: the old one joins the earlier attempts.
  function noteAttempt(old, snap) {
    if (!old || snap.retry_of !== old.job_id) return;
    if (state.attempts.some(function (a) { return a.job_id === old.job_id; })) return;
    state.attempts.unshift({ job_id: old.job_id, attempt: old.attempt || 1, status: old.status,
                             error: old.error || null, url: jobUrl(old.job_id) });
  }
  // Another job of the paper replaces the one on screen: what was learned of the old one goes.
  function forgetJob() {
    state.stepStart = {};
    state.finishedAt = null;
    state.videoUrl = null;
  }

  /* -- taking news in --------------------------------------------------- */

  // A full snapshot (from the stream or the API): shown only if its seq is newer.
  function accept(snap) {
    var job = state.job;
    if (!snap || !snap.job_id) return false;
    if (job && snap.job_id === job.job_id && snap.seq <= job.seq) {
      // Nothing moved, but the worker's heartbeat may be newer: it tells a slow step from a dead worker.
      if (snap.heartbeat_at && (!job.heartbeat_at || ms(snap.heartbeat_at) > ms(job.heartbeat_at))) {
        state.job = Object.assign({}, job, { heartbeat_at: snap.heartbeat_at });
        render();
      }
      return false;
    }
    if (job && snap.job_id !== job.job_id) { noteAttempt(job, snap); forgetJob(); }
    state.job = snap;
    state.receivedAt = Date.now();
    state.lastNewsAt = Date.now();
    noteEntry(ms(snap.progress_updated_at), snap.current_step, snap.status);
    if (TERMINAL[snap.status] && snap.finished_at) state.finishedAt = ms(snap.finished_at);
    render();
    if (TERMINAL[snap.status]) finish(); // whichever way the end arrived: no stream, no polling after it
    return true;
  }

  // The small status of ?_json=1 (no seq): shown only if it is not behind the screen.
  function acceptStatus(st) {
    var job = state.job;
    if (!st.exists) { if (!job) render(); return; }
    state.queue = st.queue || null;
    if (typeof st.typical_seconds === "number") state.typical = st.typical_seconds;
    if (!job || st.job_id !== job.job_id) { loadJob(st.job_id); return; }
    renderQueue(job);
    if (st.progress_percent < job.progress_percent) return;
    if (RANK[st.status] < RANK[job.status]) return;
    var shownAt = ms(job.progress_updated_at), polledAt = ms(st.progress_updated_at);
    if (shownAt !== null && polledAt !== null && polledAt < shownAt) return;
    var moved = st.progress_percent !== job.progress_percent || st.status !== job.status ||
      st.current_step !== job.current_step || st.completed_steps.length !== job.completed_steps.length;
    var merged = Object.assign({}, job, {
      status: st.status, current_step: st.current_step, completed_steps: st.completed_steps,
      progress_percent: st.progress_percent, progress_updated_at: st.progress_updated_at, is_stale: st.is_stale
    });
    if (moved) { merged.eta_seconds = job.eta_seconds; state.lastNewsAt = Date.now(); }
    if (st.final_video_url) state.videoUrl = st.final_video_url;
    state.job = merged;
    noteEntry(polledAt, st.current_step, st.status);
    render();
    if (TERMINAL[st.status]) finish(); // which fetches the full snapshot once more
    else if (moved) refreshJob(st.job_id);
  }

  /* -- fetching ----------------------------------------------------------- */

  function getJSON(url) {
    var headers = { Accept: "application/json" };
    if (cfg.token) headers.Authorization = "Bearer " + cfg.token;
    return fetch(url, { cache: "no-store", headers: headers }).then(function (r) {
      if (!r.ok) throw new Error(url + ": HTTP " + r.status);
      return r.json();
    });
  }

  function fetchStatus() {
    if (state.checking || !cfg.status_json_url) return Promise.resolve();
    state.checking = true;
    state.lastCheckAt = Date.now();
    return getJSON(cfg.status_json_url).then(acceptStatus, function () { /* next tick tries again */ })
      .then(function () { state.checking = false; }, function () { state.checking = false; });
  }

  // The full snapshot and the history: seq, ETA, message, error, result, step times.
  function refreshJob(id) {
    refreshHistory(id);
    getJSON(jobUrl(id)).then(accept, function () {});
  }

  function refreshHistory(id) {
    getJSON(jobUrl(id, "/history")).then(function (h) {
      if (state.job && state.job.job_id === id) { noteHistory(h); render(); }
    }, function () {});
  }

  function loadJob(id) {
    Promise.all([getJSON(jobUrl(id)), getJSON(jobUrl(id, "/history")).catch(function () { return []; })])
      .then(function (both) {
        var snap = both[0];
        if (state.job && state.job.job_id !== snap.job_id) { noteAttempt(state.job, snap); forgetJob(); }
        state.job = null;
        if (state.mode === "finished") setMode("idle"); // a new attempt: it is followed, and it ends too
        noteHistory(both[1]);
        accept(snap);
        start();
      }, function () {});
  }

  /* -- live stream, polling ----------------------------------------------- */

  function setMode(m) {
    state.mode = m;
    el.connDot.setAttribute("data-mode", m);
    el.conn.textContent = {
      live: "Live: updates arrive as they happen",
      polling: "Live updates unavailable: checking every " + Math.round(cfg.poll_ms / 1000) + " s",
      finished: "Finished",
      waiting: "Waiting for a job: checking every " + Math.round(cfg.poll_ms / 1000) + " s",
      idle: ""
    }[m];
  }

  // Stream, polling fallback, retries with backoff, resume after the last event id:
  // progress-client.js. What it brings goes through accept(), like every snapshot.
  function followJob() {
    stopFollowing();
    var id = state.job.job_id;
    state.follower = follow(jobUrl(id), {
      pollMs: cfg.poll_ms, retryMs: RETRY_MS, retryMaxMs: RETRY_MAX_MS,
      token: cfg.token || undefined, // PROGRESS_READ_AUTH=token: the stream takes it as ?token=
      poll: fetchStatus,
      onMode: function (m) { if (m === "live" || m === "polling") setMode(m); },
      onUpdate: function (snap) {
        state.lastNewsAt = Date.now();
        // a jump in seq (polling saw only the current step of each poll): fetch the step times
        if (state.job && snap.job_id === state.job.job_id && snap.seq > state.job.seq + 1) refreshHistory(id);
        accept(snap);
      }
    });
  }

  function stopFollowing() {
    if (state.follower) { state.follower.close(); state.follower = null; }
  }

  function waitForJob() {
    if (state.waitTimer) return;
    setMode("waiting");
    fetchStatus();
    state.waitTimer = setInterval(fetchStatus, cfg.poll_ms);
  }

  function stopWaiting() {
    if (state.waitTimer) { clearInterval(state.waitTimer); state.waitTimer = null; }
  }

  function finish() {
    if (state.mode === "finished") return;
    stopFollowing();
    stopWaiting();
    setMode("finished");
    var job = state.job;
    if (job) {
      refreshJob(job.job_id);
      if (job.status === "completed" && !state.videoUrl) fetchStatus(); // final_video_url
      // failed or canceled: a retry (a newer job of the paper) may follow; acceptStatus loads it
      else if (job.status !== "completed") state.waitTimer = setInterval(fetchStatus, cfg.poll_ms);
    }
  }

  function start() {
    var job = state.job;
    if (!job) { render(); waitForJob(); return; }
    if (TERMINAL[job.status]) { finish(); return; }
    stopWaiting();
    followJob();
  }

  /* -- drawing: render() and its parts, the only code that touches the job's elements -- */

  function render() {
    var job = state.job;
    el.card.hidden = !job;
    el.noJob.hidden = !!job;
    if (!job) return;
    var pct = Number(job.progress_percent) || 0;
    var total = job.total_steps || (job.steps || []).length;
    var done = (job.completed_steps || []).length;
    var label = Math.floor(pct) + "% complete (" + done + " of " + total + " steps)";

    el.bar.setAttribute("aria-valuenow", String(pct));
    el.bar.setAttribute("aria-valuetext", label);
    el.bar.setAttribute("data-status", job.status);
    el.fill.style.width = pct + "%";
    el.text.textContent = label;

    el.badge.textContent = job.status;
    el.badge.setAttribute("data-status", job.status);
    el.jobId.textContent = job.job_id;
    el.pipeline.textContent = job.pipeline || "";
    el.attempt.hidden = !(job.attempt > 1);
    el.attemptNumber.textContent = String(job.attempt || 1);
    if (job.result && job.result.title) el.title.textContent = job.result.title;
    // a finished job's last message is old news, unless it says the video has no sound
    var silent = job.status === "completed" && job.result && job.result.narration === "silent";
    if (silent) el.message.textContent = job.message || "The video's sound track is silent: no espeak-ng on the worker.";
    else el.message.textContent = job.status === "completed" ? "" : (job.message || "");

    el.error.hidden = job.status !== "failed";
    el.errorText.textContent = job.error || "No error message was recorded.";
    el.canceled.hidden = job.status !== "canceled";

    renderSteps(job);
    renderVideo(job);
    renderQueue(job);
    renderAttempts();
    tick();
  }

  // The earlier attempts, newest first, each linked to its snapshot.
  function renderAttempts() {
    var list = state.attempts;
    el.attemptsBox.hidden = list.length === 0;
    var shown = Array.prototype.map.call(el.attempts.children, function (li) { return li.getAttribute("data-job-id"); });
    if (shown.join(" ") === list.map(function (a) { return a.job_id; }).join(" ")) return;
    el.attempts.replaceChildren.apply(el.attempts, list.map(function (a) {
      var li = document.createElement("li");
      li.setAttribute("data-job-id", a.job_id);
      var badge = document.createElement("span");
      badge.className = "badge";
      badge.setAttribute("data-status", a.status || "");
      badge.textContent = a.status || "unknown";
      var link = document.createElement("a");
      link.href = withToken(a.url);
      var code = document.createElement("code");
      code.textContent = a.job_id;
      link.appendChild(code);
      li.append("attempt " + a.attempt + " · ", badge, " ", link);
      if (a.error) {
        var error = document.createElement("span");
        error.className = "muted";
        error.textContent = " " + a.error;
        li.appendChild(error);
      }
      return li;
    }));
  }

  // A pending job with no worker on its queue says so: it would wait forever without a word.
  function renderQueue(job) {
    var queue = state.queue;
    var none = job.status === "pending" && queue !== null && queue.workers === 0;
    el.noWorker.hidden = !none;
    if (none) el.noWorkerQueue.textContent = queue.name;
  }

  // The step list, built from <template id="step-template"> whenever the job's steps differ from it.
  function renderSteps(job) {
    var steps = job.steps || [];
    var done = (job.completed_steps || []).length;
    var items = el.steps.children;
    var same = items.length === steps.length && steps.every(function (name, i) {
      return items[i].getAttribute("data-step") === name;
    });
    if (!same) {
      el.steps.replaceChildren.apply(el.steps, steps.map(function (name) {
        var li = el.stepTemplate.content.firstElementChild.cloneNode(true);
        li.setAttribute("data-step", name);
        li.querySelector(".step-name").textContent = name;
        return li;
      }));
    }
    steps.forEach(function (name, i) {
      var step;
      if (job.status === "completed" || i < done) step = "done";
      else if (name === job.current_step) step = job.status === "failed" ? "failed" : "current";
      else step = "pending";
      var li = items[i];
      li.className = "step " + step;
      li.setAttribute("data-state", step);
      li.querySelector(".step-state").textContent = step === "current" ? "running" : step;
    });
    renderStepTimes(job);
  }

  // How long each step took: from its start to the next step's start (or the end).
  function renderStepTimes(job) {
    var steps = job.steps || [];
    var items = el.steps.children;
    var starts = state.stepStart;
    var t = now();
    steps.forEach(function (name, i) {
      var li = items[i];
      if (!li) return;
      var step = li.getAttribute("data-state");
      var began = starts[name];
      var text = "";
      if (began !== undefined && (step === "done" || step === "failed")) {
        var end = null;
        for (var j = i + 1; j < steps.length && end === null; j++) {
          if (starts[steps[j]] !== undefined) end = starts[steps[j]];
        }
        if (end === null) end = state.finishedAt;
        if (end !== null && end >= began) text = duration((end - began) / 1000);
      } else if (began !== undefined && step === "current" && !TERMINAL[job.status]) {
        text = duration((t - began) / 1000) + " so far";
      }
      if (step === "done" && !text) text = "done";
      li.querySelector(".step-took").textContent = text;
    });
  }

  function renderVideo(job) {
    var url = withToken(state.videoUrl);
    if (job.status !== "completed" || !url) { el.videoBox.hidden = true; return; }
    if (el.video.getAttribute("src") !== url) {
      el.video.setAttribute("src", url);
      el.videoLink.setAttribute("href", url);
    }
    el.videoBox.hidden = false;
  }

  // A running job that stopped moving: is its worker still beating (a slow step, a quiet
  // pipeline), or silent too (it may be dead; the lost-job sweeper fails it in time)?
  function staleRunningText(job, t, updatedAt) {
    var still = "No progress for " + duration((t - updatedAt) / 1000);
    var beat = ms(job.heartbeat_at);
    if (beat !== null && t - beat <= cfg.heartbeat_fresh_ms + HEARTBEAT_CHECK_MS) { // our own lag too
      return still + ", but its worker is alive (heard from " + ago(t - beat) + "): a step may be slow, " +
        "or the pipeline has stopped reporting. This page updates as soon as it moves again.";
    }
    return still + (beat !== null ? ", and no sign of its worker for " + duration((t - beat) / 1000) : "") +
      ": its worker may have stopped. This page updates as soon as it moves again.";
  }

  // The ETA, counted down from when the snapshot came: "about N s left" while running; before
  // the job starts, how long its pipeline typically takes, and the wait when there is one.
  function etaText(job) {
    var eta = job.eta_seconds;
    var left = typeof eta === "number" ? eta - (Date.now() - state.receivedAt) / 1000 : null;
    if (job.status === "running" && left !== null) {
      return left > 1 ? "about " + duration(left) + " left" : "almost done";
    }
    if (job.status === "pending" && typeof state.typical === "number") {
      var text = "typically takes " + duration(state.typical);
      if (left !== null && left - state.typical >= 1) text += " · about " + duration(left) + " left";
      return text;
    }
    return "";
  }

  // Every second: "updated N s ago", the ETA countdown, the running step's time, staleness.
  function tick() {
    var job = state.job;
    if (!job) return;
    var t = now();
    var updatedAt = ms(job.progress_updated_at);
    var endedAt = TERMINAL[job.status] ? (ms(job.finished_at) || updatedAt) : null;
    if (endedAt !== null) el.updated.textContent = job.status + " " + ago(t - endedAt);
    else el.updated.textContent = updatedAt === null ? "" : "updated " + ago(t - updatedAt);

    el.eta.textContent = etaText(job);

    var quietFor = null;
    if (job.status === "running" && updatedAt !== null) quietFor = t - updatedAt - cfg.stale_after * 1000;
    if (job.status === "pending" && job.created_at) quietFor = t - ms(job.created_at) - cfg.pending_stale_after * 1000;
    el.stale.hidden = !job.is_stale || !!TERMINAL[job.status];
    if (job.is_stale) {
      el.staleText.textContent = job.status === "pending"
        ? "The job has waited in the queue for " + duration((t - ms(job.created_at)) / 1000) + ": is a worker running?"
        : staleRunningText(job, t, updatedAt);
      if (job.status === "running" && Date.now() - state.lastBeatCheckAt > HEARTBEAT_CHECK_MS) {
        state.lastBeatCheckAt = Date.now();
        getJSON(jobUrl(job.job_id)).then(accept, function () {});
      }
    }
    // The stream says nothing while a job is quiet: ask the server (it alone knows staleness for sure).
    if (state.mode === "live" && !state.checking && !TERMINAL[job.status]) {
      var sinceCheck = Date.now() - state.lastCheckAt;
      if ((quietFor !== null && quietFor > 0 && !job.is_stale && sinceCheck > STALE_RECHECK_MS) ||
          (Date.now() - state.lastNewsAt > QUIET_CHECK_MS && sinceCheck > QUIET_CHECK_MS)) {
        fetchStatus();
      }
    }
    if (job.status === "running") renderStepTimes(job);
  }

  /* -- start ---------------------------------------------------------------- */

  noteHistory(cfg.history);
  if (cfg.snapshot) accept(cfg.snapshot); else render();
  start();
  setInterval(tick, 1000);
})();
