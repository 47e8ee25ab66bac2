/* The batch page (/batches/<id>/): the overall bar, counts by state, the ETA and one live row
 * per member, from the page's config and then the batch's event stream
 * (GET /api/v1/batches/<id>/events: "batch" events carry the batch, "progress" events a member),
 * followed by progress-client.js's follow(), the one copy of the stream, resume, poll and
 * back-off logic: when the stream fails, follow() runs this page's poll (the batch, status_url,
 * and its members, members_url) until the stream answers again; the page ends both once the
 * batch has finished, and then failures come first.
 * Everything the page shows is drawn by render() from one `state` object. No inline script
 * or style (the page's CSP): rows come from #member-row, the bars' widths are set here.
 * Under PROGRESS_READ_AUTH=token (cfg.token: the token the page was opened with) this page's
 * fetches send it as a bearer header, follow() and the members' links as ?token=; a batch's read token reads
 * no list, so while polling only the batch moves, and at the end the members are read one by one. */
import { follow } from "./progress-client.js";

(function () {
  "use strict";
  var cfg = JSON.parse(document.getElementById("page-config").textContent);
  var FINISHED = { completed: true, failed: true, canceled: true };
  var ORDER = { failed: 0, canceled: 1, running: 2, pending: 3, completed: 4 };
  var state = {
    batch: cfg.batch,
    members: {}, // job_id -> the fields a row shows
    mode: "connecting", // live | polling | done
    first: null, // [time ms, percent] when this page first saw the batch move, for the ETA
    follower: null // progress-client.js's follow() of the batch
  };
  (cfg.members || []).forEach(function (m) { state.members[m.job_id] = m; });

  function $(id) { return document.getElementById(id); }
  var el = {
    badge: $("status-badge"), text: $("progress-text"), eta: $("eta"), bar: $("progress"),
    fill: $("progress-fill"), counts: $("counts"), rows: $("members"), template: $("member-row"),
    conn: $("conn"), connDot: $("conn-dot")
  };

  function duration(s) {
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function acceptBatch(b) {
    if (state.batch && b.progress_percent < state.batch.progress_percent) {
      b.progress_percent = state.batch.progress_percent; // never show the bar moving back
    }
    state.batch = b;
    if (state.first === null && b.status === "running") state.first = [Date.now(), b.progress_percent];
  }

  function acceptMember(m) {
    var old = state.members[m.job_id] || {};
    if (old.seq && m.seq && m.seq <= old.seq) return;
    var merged = {};
    Object.keys(old).forEach(function (k) { merged[k] = old[k]; });
    Object.keys(m).forEach(function (k) { merged[k] = m[k]; });
    state.members[m.job_id] = merged;
  }

  function eta() {
    var b = state.batch;
    if (b.status !== "running") return null;
    if (state.first) {
      var took = (Date.now() - state.first[0]) / 1000, gained = b.progress_percent - state.first[1];
      if (took > 2 && gained > 0) return (100 - b.progress_percent) * took / gained;
    }
    return b.eta_seconds;
  }

  function render() {
    var b = state.batch, pct = Math.min(100, Math.max(0, b.progress_percent || 0));
    el.badge.textContent = b.status;
    el.badge.setAttribute("data-status", b.status);
    el.bar.setAttribute("data-status", b.status);
    el.bar.setAttribute("aria-valuenow", String(pct));
    el.fill.style.width = pct + "%";
    var finished = b.completed + b.failed + b.canceled;
    el.text.textContent = Math.floor(pct) + "% (" + finished + " of " + b.total + " finished)";
    var left = eta();
    el.eta.textContent = left === null || left === undefined ? "" : "about " + duration(left) + " left";
    el.counts.textContent = ["running", "pending", "completed", "failed", "canceled"].map(function (s) {
      return b[s] + " " + s;
    }).join(" · ");
    var ids = b.job_ids.slice();
    if (FINISHED[b.status]) {
      ids.sort(function (x, y) {
        var sx = (state.members[x] || {}).status, sy = (state.members[y] || {}).status;
        return (ORDER[sx] === undefined ? 5 : ORDER[sx]) - (ORDER[sy] === undefined ? 5 : ORDER[sy]);
      });
    }
    while (el.rows.children.length < ids.length) {
      el.rows.appendChild(el.template.content.firstElementChild.cloneNode(true));
    }
    ids.forEach(function (id, i) { drawRow(el.rows.children[i], id, state.members[id] || { job_id: id }); });
    var live = state.mode === "live";
    el.connDot.setAttribute("data-mode", live ? "live" : state.mode === "polling" ? "polling" : "");
    el.conn.textContent = state.mode === "done" ? "Finished." : live ? "Live." :
      state.mode === "polling" ? "Checking every few seconds." : "Connecting…";
  }

  function drawRow(row, id, m) {
    var status = m.status || "pending", pct = m.progress_percent || 0;
    row.setAttribute("data-job", id);
    row.setAttribute("data-status", status);
    var link = row.querySelector(".member-paper");
    link.textContent = m.paper_id || id;
    link.href = m.paper_id ? withToken(cfg.status_base + encodeURIComponent(m.paper_id) + "/") : "#";
    var badge = row.querySelector(".member-status");
    badge.textContent = status;
    badge.setAttribute("data-status", status);
    var fill = row.querySelector(".mini-fill");
    fill.style.width = pct + "%";
    fill.setAttribute("data-status", status);
    row.querySelector(".mini-pct").textContent = Math.floor(pct) + "%";
    row.querySelector(".member-step").textContent = status === "failed" && m.error ? m.error : (m.current_step || "");
    row.querySelector(".member-id").textContent = id;
  }

  function withToken(url) {
    return cfg.token ? url + (url.indexOf("?") < 0 ? "?" : "&") + "token=" + encodeURIComponent(cfg.token) : url;
  }

  function getJSON(url) {
    var headers = { Accept: "application/json" };
    if (cfg.token) headers.Authorization = "Bearer " + cfg.token;
    return fetch(url, { cache: "no-store", headers: headers }).then(function (r) {
      if (!r.ok) throw new Error(r.status);
      return r.json();
    });
  }

  function finishIfDone() {
    if (!FINISHED[state.batch.status]) return false;
    state.mode = "done";
    if (state.follower) { state.follower.close(); state.follower = null; }
    refreshMembers(); // the errors of failed members, which the stream does not carry
    return true;
  }

  function refreshMembers() {
    return getJSON(cfg.members_url).then(function (body) {
      body.jobs.forEach(function (m) { state.members[m.job_id] = m; });
      render();
    }, readMembersOneByOne);
  }

  // A batch's read token reads no list (a 401 above), but each member: once the batch has
  // finished, the members whose end the page has not shown are read one by one.
  function readMembersOneByOne() {
    var base = cfg.members_url.split("?")[0] + "/";
    (state.batch.job_ids || []).forEach(function (id) {
      var m = state.members[id];
      if (m && FINISHED[m.status] && (m.status !== "failed" || m.error)) return;
      getJSON(base + encodeURIComponent(id)).then(function (snap) {
        state.members[id] = snap;
        render();
      }, function () {});
    });
  }

  // While the stream is down, follow() calls this every cfg.poll_ms: the batch, then its members
  // (read after it, so that when the batch has finished every row shows its member's end).
  function poll() {
    return getJSON(cfg.status_url).then(function (batch) {
      var members = getJSON(cfg.members_url).catch(function () { return { jobs: [] }; }); // a read token: 401
      return members.then(function (body) {
        body.jobs.forEach(function (m) { acceptMember(m); });
        acceptBatch(batch);
        finishIfDone(); // a poll is ours: its end is ours to see
        render();
      });
    });
  }

  function follower() {
    return follow(cfg.status_url, {
      eventsUrl: cfg.events_url,
      token: cfg.token,
      pollMs: cfg.poll_ms,
      poll: poll,
      onMode: function (mode) {
        if (state.mode !== "done") state.mode = mode === "ended" ? "done" : mode;
        render();
      },
      onUpdate: function (snap, info) {
        if (info.type === "batch") acceptBatch(snap);
        else acceptMember(snap);
        render();
      },
      onEnd: function () { finishIfDone(); render(); } // the stream's terminal "batch" event
    });
  }

  render();
  if (!finishIfDone()) state.follower = follower();
})();
