/* Recent jobs: the table refreshes every few seconds; the form starts a job. */
(function () {
  "use strict";

  var cfg = JSON.parse(document.getElementById("page-config").textContent);
  var body = document.getElementById("jobs-body");
  var form = document.getElementById("submit-form");
  var errorBox = document.getElementById("submit-error");
  var statusBase = cfg.status_base || "/status/";

  function cell(tr, content, cls) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    if (content instanceof Node) td.appendChild(content); else td.textContent = content == null ? "" : content;
    tr.appendChild(td);
    return td;
  }
  function badge(text, status) {
    var span = document.createElement("span");
    span.className = "badge";
    span.setAttribute("data-status", status);
    span.textContent = text;
    return span;
  }
  function ago(iso) {
    var t = Date.parse(iso);
    if (isNaN(t)) return "";
    var s = Math.max(0, Math.round((Date.now() + (cfg.server_now_ms - loadedAt) - t) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }
  var loadedAt = Date.now();

  function render(jobs) {
    body.innerHTML = "";
    if (!jobs.length) {
      var tr = document.createElement("tr");
      tr.className = "empty-row";
      var td = cell(tr, "No jobs yet. Start one with the form above.");
      td.colSpan = 6;
      body.appendChild(tr);
      return;
    }
    jobs.forEach(function (job) {
      var tr = document.createElement("tr");
      var link = document.createElement("a");
      link.href = statusBase + encodeURIComponent(job.paper_id) + "/";
      link.textContent = job.paper_id;
      cell(tr, link);
      var status = document.createElement("span");
      status.appendChild(badge(job.status, job.status));
      if (job.is_stale) { status.appendChild(document.createTextNode(" ")); status.appendChild(badge("stale", "stale")); }
      cell(tr, status);
      var wrap = document.createElement("span");
      var mini = document.createElement("span");
      mini.className = "mini";
      var fill = document.createElement("span");
      fill.className = "mini-fill";
      fill.style.display = "block";
      fill.setAttribute("data-status", job.status);
      fill.style.width = job.progress_percent + "%";
      mini.appendChild(fill);
      var pct = document.createElement("span");
      pct.className = "mini-pct";
      pct.textContent = Math.floor(job.progress_percent) + "%";
      wrap.appendChild(mini);
      wrap.appendChild(pct);
      cell(tr, wrap, "col-progress");
      cell(tr, job.current_step || "");
      cell(tr, ago(job.progress_updated_at), "muted");
      var code = document.createElement("code");
      code.textContent = job.job_id;
      cell(tr, code);
      body.appendChild(tr);
    });
  }

  function refresh() {
    fetch(cfg.api_jobs_url + "?limit=50", { cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (data) { render(data.jobs); }, function () { /* the next tick tries again */ });
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    errorBox.hidden = true;
    var headers = { "Content-Type": "application/json" };
    var token = document.getElementById("token");
    if (token && token.value) headers.Authorization = "Bearer " + token.value;
    fetch(cfg.api_jobs_url, {
      method: "POST", cache: "no-store", headers: headers,
      body: JSON.stringify({ paper_id: document.getElementById("paper-id").value.trim() })
    }).then(function (r) {
      return r.json().then(function (data) { return { ok: r.ok, data: data }; });
    }).then(function (res) {
      if (res.ok) { window.location.href = res.data.page_url; return; }
      errorBox.textContent = res.data.detail || res.data.error || "The job could not be started.";
      errorBox.hidden = false;
    }, function (err) {
      errorBox.textContent = "The job could not be started: " + err.message;
      errorBox.hidden = false;
    });
  });

  if (cfg.jobs) render(cfg.jobs);
  setInterval(refresh, cfg.poll_ms || 3000);
})();
