/* The live status page of one paper's latest job.
 *
 * Live through EventSource (GET /api/v1/jobs/<id>/events). When the stream
 * fails (or is cut) the page closes it, so EventSource's own retries every few
 * seconds stop, and falls back to polling /status/<paper>/?_json=1 every 3 s
 * (cfg.poll_ms). While it polls it opens the stream again now and then: first
 * after cfg.stream_retry_ms, then at doubling intervals up to
 * cfg.stream_retry_max_ms, each with a little jitter. A reopened stream counts
 * as back once it delivers (the server sends the current snapshot first): then
 * the polling stops. Once a terminal state is shown, stream, polling and
 * retries all stop.
 *
 * It never shows an update older than the one on screen: a snapshot whose seq
 * is not newer is ignored, and a polled status that is behind (lower percent,
 * earlier status, older time) is too, so the bar never moves back.
 *
 * Times come from the Redis server's clock: the page learns its offset from
 * the server_now_ms it was rendered with.
 */
(function () {
  "use strict";

  var cfg = JSON.parse(document.getElementById("page-config").textContent);
  var RANK = { pending: 0, running: 1, completed: 2, failed: 2, canceled: 2 };
  var TERMINAL = { completed: true, failed: true, canceled: true };
  var QUIET_CHECK_MS = 10000; // a live but quiet page asks for the status this often
  var STALE_RECHECK_MS = 2000;
  var HEARTBEAT_CHECK_MS = 5000; // a stale job's full snapshot (its heartbeat) is read this often
  var lastBeatCheckAt = 0;

  var offset = cfg.server_now_ms - Date.now(); // server clock minus ours
  var job = null; // the snapshot on screen
  var receivedAt = Date.now(); // when `job` arrived, for the ETA countdown
  var stepStart = {}; // step name -> ms (server clock) it became current
  var finishedAt = null;
  var videoUrl = cfg.video_url || null;
  var queue = cfg.queue || null; // a pending job's RQ queue: {name, workers}, from the server
  var source = null;
  var pollTimer = null;
  var retryTimer = null; // while polling: the next try to reopen the stream
  // web.pages sets both; the fallbacks only keep a config without them from retrying in a tight loop
  var RETRY_MS = cfg.stream_retry_ms || 15000, RETRY_MAX_MS = cfg.stream_retry_max_ms || 60000;
  var retryDelay = RETRY_MS;
  var mode = "idle"; // live | polling | finished | waiting
  var lastNewsAt = Date.now();
  var lastCheckAt = 0;
  var checking = false;

  function $(id) { return document.getElementById(id); }
  var el = {
    card: $("job"), noJob: $("no-job"), title: $("title"), jobId: $("job-id"), pipeline: $("pipeline"),
    badge: $("status-badge"), stale: $("stale-warning"), staleText: $("stale-text"),
    error: $("error-box"), errorText: $("error-text"), canceled: $("canceled-box"),
    bar: $("progress"), fill: $("progress-fill"), text: $("progress-text"), eta: $("eta"),
    message: $("message"), updated: $("updated"), steps: $("steps"),
    videoBox: $("video-box"), video: $("video"), videoLink: $("video-link"),
    conn: $("conn"), connDot: $("conn-dot"), noWorker: $("no-worker"), noWorkerQueue: $("no-worker-queue")
  };

  function now() { return Date.now() + offset; }
  function ms(iso) { var t = iso ? Date.parse(iso) : NaN; return isNaN(t) ? null : t; }
  function jobUrl(id, tail) { return cfg.api_jobs_url + "/" + encodeURIComponent(id) + (tail || ""); }

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
    if (step && !(step in stepStart)) stepStart[step] = at;
    if (TERMINAL[status] && finishedAt === null) finishedAt = at;
  }
  function noteHistory(entries) {
    (entries || []).forEach(function (e) { noteEntry(ms(e.at), e.current_step, e.status); });
  }

  /* -- taking news in --------------------------------------------------- */

  // A full snapshot (from the stream or the API): shown only if its seq is newer.
  function accept(snap) {
    if (!snap || !snap.job_id) return false;
    if (job && snap.job_id === job.job_id && snap.seq <= job.seq) {
      // Nothing moved, but the worker's heartbeat may be newer: it tells a slow step from a dead worker.
      if (snap.heartbeat_at && (!job.heartbeat_at || ms(snap.heartbeat_at) > ms(job.heartbeat_at))) {
        job = Object.assign({}, job, { heartbeat_at: snap.heartbeat_at });
        render();
      }
      return false;
    }
    if (job && snap.job_id !== job.job_id) { stepStart = {}; finishedAt = null; videoUrl = null; }
    job = snap;
    receivedAt = Date.now();
    lastNewsAt = Date.now();
    noteEntry(ms(snap.progress_updated_at), snap.current_step, snap.status);
    if (TERMINAL[snap.status] && snap.finished_at) finishedAt = ms(snap.finished_at);
    render();
    if (TERMINAL[snap.status]) finish(); // whichever way the end arrived: no stream, no polling after it
    return true;
  }

  // The small status of ?_json=1 (no seq): shown only if it is not behind the screen.
  function acceptStatus(st) {
    if (!st.exists) { if (!job) showNoJob(); return; }
    queue = st.queue || null;
    if (!job || st.job_id !== job.job_id) { loadJob(st.job_id); return; }
    renderQueue();
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
    if (moved) { merged.eta_seconds = job.eta_seconds; lastNewsAt = Date.now(); }
    if (st.final_video_url) videoUrl = st.final_video_url;
    job = merged;
    noteEntry(polledAt, st.current_step, st.status);
    render();
    if (TERMINAL[st.status]) finish(); // which fetches the full snapshot once more
    else if (moved) refreshJob(st.job_id);
  }

  /* -- fetching ----------------------------------------------------------- */

  function getJSON(url) {
    return fetch(url, { cache: "no-store", headers: { Accept: "application/json" } }).then(function (r) {
      if (!r.ok) throw new Error(url + ": HTTP " + r.status);
      return r.json();
    });
  }

  function fetchStatus() {
    if (checking || !cfg.status_json_url) return;
    checking = true;
    lastCheckAt = Date.now();
    getJSON(cfg.status_json_url).then(acceptStatus, function () { /* next tick tries again */ })
      .then(function () { checking = false; }, function () { checking = false; });
  }

  // The full snapshot and the history: seq, ETA, message, error, result, step times.
  function refreshJob(id) {
    refreshHistory(id);
    getJSON(jobUrl(id)).then(accept, function () {});
  }

  function refreshHistory(id) {
    getJSON(jobUrl(id, "/history")).then(function (h) { if (job && job.job_id === id) { noteHistory(h); render(); } },
      function () {});
  }

  function loadJob(id) {
    Promise.all([getJSON(jobUrl(id)), getJSON(jobUrl(id, "/history")).catch(function () { return []; })])
      .then(function (both) {
        var snap = both[0];
        if (job && job.job_id !== snap.job_id) { stepStart = {}; finishedAt = null; videoUrl = null; }
        job = null;
        noteHistory(both[1]);
        accept(snap);
        start();
      }, function () {});
  }

  /* -- live stream, polling ----------------------------------------------- */

  function setMode(m) {
    mode = m;
    el.connDot.setAttribute("data-mode", m);
    el.conn.textContent = {
      live: "Live: updates arrive as they happen",
      polling: "Live updates unavailable: checking every " + Math.round(cfg.poll_ms / 1000) + " s",
      finished: "Finished",
      waiting: "Waiting for a job: checking every " + Math.round(cfg.poll_ms / 1000) + " s",
      idle: ""
    }[m];
  }

  // Opened without Last-Event-ID, the stream starts with the job's current snapshot: its first
  // message proves that it delivers (and accept() drops it if the screen is not behind).
  function openStream() {
    if (!window.EventSource) { startPolling(); return; }
    closeStream();
    var id = job.job_id;
    var es = new EventSource(jobUrl(id, "/events"));
    var delivered = false;
    source = es;
    es.addEventListener("progress", function (ev) {
      if (source !== es) return;
      var snap;
      try { snap = JSON.parse(ev.data); } catch (e) { return; }
      lastNewsAt = Date.now();
      if (!delivered) {
        delivered = true;
        streamIsUp();
        // back after a gap (polling saw only the current step of each poll): fetch the step times
        if (job && snap.job_id === job.job_id && snap.seq > job.seq + 1) refreshHistory(id);
      }
      accept(snap);
      if (TERMINAL[snap.status]) finish();
    });
    es.onerror = function () {
      if (source !== es) return;
      // Failed, refused or cut: close it (EventSource would retry every few seconds forever),
      // poll meanwhile, and try the stream again later.
      closeStream();
      if (job && !TERMINAL[job.status]) { startPolling(); scheduleStreamRetry(); }
    };
  }

  function closeStream() {
    if (source) { source.onerror = null; source.close(); source = null; }
  }

  function streamIsUp() {
    stopPolling();
    cancelStreamRetry();
    retryDelay = RETRY_MS;
    setMode("live");
  }

  function scheduleStreamRetry() {
    if (retryTimer || !window.EventSource) return;
    var wait = retryDelay * (0.8 + 0.4 * Math.random()); // a thousand pages do not all come back at once
    retryDelay = Math.min(retryDelay * 2, RETRY_MAX_MS);
    retryTimer = setTimeout(function () {
      retryTimer = null;
      if (mode === "polling" && job && !TERMINAL[job.status]) openStream(); // polling goes on meanwhile
    }, wait);
  }

  function cancelStreamRetry() {
    if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
  }

  function startPolling() {
    if (pollTimer) return;
    setMode(job ? "polling" : "waiting");
    fetchStatus();
    pollTimer = setInterval(fetchStatus, cfg.poll_ms);
  }

  function stopPolling() {
    if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  }

  function finish() {
    if (mode === "finished") return;
    closeStream();
    stopPolling();
    cancelStreamRetry();
    setMode("finished");
    if (job) {
      refreshJob(job.job_id);
      if (job.status === "completed" && !videoUrl) fetchStatus(); // final_video_url
    }
  }

  function start() {
    if (!job) { showNoJob(); startPolling(); return; }
    if (TERMINAL[job.status]) { finish(); return; }
    stopPolling();
    openStream();
  }

  /* -- drawing ------------------------------------------------------------- */

  function showNoJob() {
    el.card.hidden = true;
    el.noJob.hidden = false;
  }

  function render() {
    if (!job) { showNoJob(); return; }
    el.card.hidden = false;
    el.noJob.hidden = true;
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
    if (job.result && job.result.title) el.title.textContent = job.result.title;
    el.message.textContent = job.status === "completed" ? "" : (job.message || "");

    el.error.hidden = job.status !== "failed";
    el.errorText.textContent = job.error || "No error message was recorded.";
    el.canceled.hidden = job.status !== "canceled";

    renderSteps();
    renderVideo();
    renderQueue();
    tick();
  }

  // A pending job with no worker on its queue says so: it would wait forever without a word.
  function renderQueue() {
    var none = job.status === "pending" && queue !== null && queue.workers === 0;
    el.noWorker.hidden = !none;
    if (none) el.noWorkerQueue.textContent = queue.name;
  }

  function renderSteps() {
    var steps = job.steps || [];
    var done = (job.completed_steps || []).length;
    var items = el.steps.children;
    if (items.length !== steps.length) {
      el.steps.innerHTML = "";
      steps.forEach(function (name) {
        var li = document.createElement("li");
        li.className = "step pending";
        li.setAttribute("data-step", name);
        ["step-dot", "step-name", "step-state", "step-took"].forEach(function (cls) {
          var span = document.createElement("span");
          span.className = cls;
          if (cls === "step-name") span.textContent = name;
          li.appendChild(span);
        });
        el.steps.appendChild(li);
      });
      items = el.steps.children;
    }
    steps.forEach(function (name, i) {
      var state;
      if (job.status === "completed" || i < done) state = "done";
      else if (name === job.current_step) state = job.status === "failed" ? "failed" : "current";
      else state = "pending";
      var li = items[i];
      li.className = "step " + state;
      li.setAttribute("data-state", state);
      li.children[2].textContent = state === "current" ? "running" : state;
    });
    renderStepTimes();
  }

  // How long each step took: from its start to the next step's start (or the end).
  function renderStepTimes() {
    var steps = job.steps || [];
    var items = el.steps.children;
    var t = now();
    steps.forEach(function (name, i) {
      var li = items[i];
      if (!li) return;
      var state = li.getAttribute("data-state");
      var began = stepStart[name];
      var text = "";
      if (began !== undefined && (state === "done" || state === "failed")) {
        var end = null;
        for (var j = i + 1; j < steps.length && end === null; j++) {
          if (stepStart[steps[j]] !== undefined) end = stepStart[steps[j]];
        }
        if (end === null) end = finishedAt;
        if (end !== null && end >= began) text = duration((end - began) / 1000);
      } else if (began !== undefined && state === "current" && !TERMINAL[job.status]) {
        text = duration((t - began) / 1000) + " so far";
      } else if (state === "pending") {
        text = "";
      }
      if (state === "done" && !text) text = "done";
      li.children[3].textContent = text;
    });
  }

  function renderVideo() {
    if (job.status !== "completed" || !videoUrl) { el.videoBox.hidden = true; return; }
    if (el.video.getAttribute("src") !== videoUrl) {
      el.video.setAttribute("src", videoUrl);
      el.videoLink.setAttribute("href", videoUrl);
    }
    el.videoBox.hidden = false;
  }

  // A running job that stopped moving: is its worker still beating (a slow step, a quiet
  // pipeline), or silent too (it may be dead; the lost-job sweeper fails it in time)?
  function staleRunningText(t, updatedAt) {
    var still = "No progress for " + duration((t - updatedAt) / 1000);
    var beat = ms(job.heartbeat_at);
    if (beat !== null && t - beat <= cfg.heartbeat_fresh_ms + HEARTBEAT_CHECK_MS) { // our own lag too
      return still + ", but its worker is alive (heard from " + ago(t - beat) + "): a step may be slow, " +
        "or the pipeline has stopped reporting. This page updates as soon as it moves again.";
    }
    return still + (beat !== null ? ", and no sign of its worker for " + duration((t - beat) / 1000) : "") +
      ": its worker may have stopped. This page updates as soon as it moves again.";
  }

  // Every second: "updated N s ago", the ETA countdown, the running step's time, staleness.
  function tick() {
    if (!job) return;
    var t = now();
    var updatedAt = ms(job.progress_updated_at);
    var endedAt = TERMINAL[job.status] ? (ms(job.finished_at) || updatedAt) : null;
    if (endedAt !== null) el.updated.textContent = job.status + " " + ago(t - endedAt);
    else el.updated.textContent = updatedAt === null ? "" : "updated " + ago(t - updatedAt);

    var eta = job.eta_seconds;
    if (job.status === "running" && typeof eta === "number") {
      var left = eta - (Date.now() - receivedAt) / 1000;
      el.eta.textContent = left > 1 ? "about " + duration(left) + " left" : "almost done";
    } else {
      el.eta.textContent = "";
    }

    var quietFor = null;
    if (job.status === "running" && updatedAt !== null) quietFor = t - updatedAt - cfg.stale_after * 1000;
    if (job.status === "pending" && job.created_at) quietFor = t - ms(job.created_at) - cfg.pending_stale_after * 1000;
    el.stale.hidden = !job.is_stale || !!TERMINAL[job.status];
    if (job.is_stale) {
      el.staleText.textContent = job.status === "pending"
        ? "The job has waited in the queue for " + duration((t - ms(job.created_at)) / 1000) + ": is a worker running?"
        : staleRunningText(t, updatedAt);
      if (job.status === "running" && Date.now() - lastBeatCheckAt > HEARTBEAT_CHECK_MS) {
        lastBeatCheckAt = Date.now();
        getJSON(jobUrl(job.job_id)).then(accept, function () {});
      }
    }
    // The stream says nothing while a job is quiet: ask the server (it alone knows staleness for sure).
    if (mode === "live" && !checking && !TERMINAL[job.status]) {
      var sinceCheck = Date.now() - lastCheckAt;
      if ((quietFor !== null && quietFor > 0 && !job.is_stale && sinceCheck > STALE_RECHECK_MS) ||
          (Date.now() - lastNewsAt > QUIET_CHECK_MS && sinceCheck > QUIET_CHECK_MS)) {
        fetchStatus();
      }
    }
    if (job.status === "running") renderStepTimes();
  }

  /* -- start ---------------------------------------------------------------- */

  noteHistory(cfg.history);
  if (cfg.snapshot) accept(cfg.snapshot); else showNoJob();
  start();
  setInterval(tick, 1000);
})();
