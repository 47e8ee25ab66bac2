/* Recent jobs: the table refreshes every few seconds; the form starts a job.
 *
 * The rows are drawn here alone, from the page's <template id="job-row"> (and "no-jobs-row"):
 * first from the jobs the page was served with (cfg.jobs), then from the API every cfg.poll_ms.
 */
(function () {
  "use strict";

  var cfg = JSON.parse(document.getElementById("page-config").textContent);
  var body = document.getElementById("jobs-body");
  var rowTemplate = document.getElementById("job-row");
  var emptyTemplate = document.getElementById("no-jobs-row");
  var form = document.getElementById("submit-form");
  var errorBox = document.getElementById("submit-error");
  var statusBase = cfg.status_base || "/status/";
  var offset = cfg.server_now_ms - Date.now(); // server clock minus ours

  function ago(iso) {
    var t = Date.parse(iso);
    if (isNaN(t)) return "";
    var s = Math.max(0, Math.round((Date.now() + offset - t) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  // The page of a job: the server names it for the jobs it listed; later ones get the same shape.
  // Under PROGRESS_READ_AUTH=token (cfg.token: the API token this page was opened with) the
  // list is read with it and the links carry it on.
  function pageUrl(job) {
    var url = job.page_url || statusBase + encodeURIComponent(job.paper_id) + "/";
    return cfg.token ? url + "?token=" + encodeURIComponent(cfg.token) : url;
  }

  function row(job) {
    var tr = rowTemplate.content.firstElementChild.cloneNode(true);
    function part(cls) { return tr.querySelector("." + cls); }
    var link = part("job-paper");
    link.href = pageUrl(job);
    link.textContent = job.paper_id;
    var status = part("job-status");
    status.textContent = job.status;
    status.setAttribute("data-status", job.status);
    part("job-stale").hidden = !job.is_stale;
    var fill = part("mini-fill");
    fill.setAttribute("data-status", job.status);
    fill.style.width = job.progress_percent + "%";
    part("mini-pct").textContent = Math.floor(job.progress_percent) + "%";
    part("job-step").textContent = job.current_step || "";
    part("job-updated").textContent = ago(job.progress_updated_at);
    part("job-id").textContent = job.job_id;
    var tags = part("job-tags");
    (job.tags || []).forEach(function (tag) { // each a link to the list of that tag
      var a = document.createElement("a");
      a.className = "tag";
      a.href = "?tag=" + encodeURIComponent(tag);
      a.textContent = tag;
      tags.appendChild(a);
    });
    return tr;
  }

  function render(jobs) {
    var rows = jobs.length ? jobs.map(row) : [emptyTemplate.content.firstElementChild.cloneNode(true)];
    body.replaceChildren.apply(body, rows);
  }

  function refresh() {
    var headers = cfg.token ? { Authorization: "Bearer " + cfg.token } : {};
    fetch(cfg.api_jobs_url + "?limit=50" + (cfg.tag ? "&tag=" + encodeURIComponent(cfg.tag) : ""),
          { cache: "no-store", headers: headers })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (data) { render(data.jobs); }, function () { /* the next tick tries again */ });
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    errorBox.hidden = true;
    var headers = { "Content-Type": "application/json" };
    var token = document.getElementById("token");
    if (token && token.value) headers.Authorization = "Bearer " + token.value;
    else if (cfg.token) headers.Authorization = "Bearer " + cfg.token; // the API token the page was opened with
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

  render(cfg.jobs || []);
  setInterval(refresh, cfg.poll_ms || 3000);
})();
