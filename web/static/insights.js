/* Insights: draws each pipeline's charts with Chart.js (web/static/vendor/chart.umd.js) from the
 * report the page was served with (cfg.report: GET /api/v1/insights's answer).
 *
 * Per pipeline card (<section data-pipeline>), one <canvas data-chart=...> each:
 * throughput (jobs finished per bucket, stacked by outcome), success (the bucket's success rate),
 * jobs (job duration p50 and p90) and steps (each step's p50, solid, and p90, dashed).
 */
(function () {
  "use strict";

  var cfg = JSON.parse(document.getElementById("page-config").textContent);
  var report = cfg.report;
  if (!window.Chart || !report) return;
  var Chart = window.Chart;

  var OUTCOME_COLORS = {completed: "#14804a", failed: "#d9534f", canceled: "#9aa1ad"};
  var PALETTE = ["#2458d3", "#d97706", "#0f766e", "#9333ea", "#db2777", "#65a30d", "#0891b2", "#b45309"];

  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.color = "#5f6673";
  Chart.defaults.animation = false; // the numbers are a snapshot: draw them at once

  function label(iso) {
    // "2026-12-01T14:00:00.000Z" -> "12-01 14h" per hour, "12-01" per day (UTC, as the page says)
    var day = iso.slice(5, 10);
    return report.bucket === "hour" ? day + " " + iso.slice(11, 13) + "h" : day;
  }

  function options(yTitle, extra) {
    var opts = {
      responsive: true,
      maintainAspectRatio: false,
      interaction: {mode: "index", intersect: false},
      plugins: {legend: {position: "bottom", labels: {boxWidth: 12, boxHeight: 12}}},
      scales: {
        x: {ticks: {maxRotation: 0, autoSkip: true, autoSkipPadding: 12}, grid: {display: false}},
        y: {beginAtZero: true, title: {display: true, text: yTitle}}
      },
      spanGaps: true
    };
    if (extra) extra(opts);
    return opts;
  }

  function draw(canvas, config) {
    return new Chart(canvas, config);
  }

  function throughput(canvas, p, labels) {
    draw(canvas, {
      type: "bar",
      data: {
        labels: labels,
        datasets: ["completed", "failed", "canceled"].map(function (outcome) {
          return {label: outcome, backgroundColor: OUTCOME_COLORS[outcome],
                  data: p.throughput.map(function (b) { return b[outcome]; })};
        })
      },
      options: options("jobs", function (o) {
        o.scales.x.stacked = true;
        o.scales.y.stacked = true;
        o.scales.y.ticks = {precision: 0};
      })
    });
  }

  function success(canvas, p, labels) {
    draw(canvas, {
      type: "line",
      data: {
        labels: labels,
        datasets: [{label: "success rate", borderColor: OUTCOME_COLORS.completed,
                     backgroundColor: OUTCOME_COLORS.completed, pointRadius: 2,
                     data: p.throughput.map(function (b) {
                       return b.success_rate === null ? null : Math.round(b.success_rate * 1000) / 10;
                     })}]
      },
      options: options("%", function (o) { o.scales.y.max = 100; })
    });
  }

  function durations(canvas, series, labels) {
    // series: [{name, color, points: [{p50, p90}]}]: p50 solid, p90 dashed, one color per series
    var datasets = [];
    series.forEach(function (s) {
      datasets.push({label: s.name + " p50", borderColor: s.color, backgroundColor: s.color, pointRadius: 2,
                     data: s.points.map(function (x) { return x.p50; })});
      datasets.push({label: s.name + " p90", borderColor: s.color, backgroundColor: s.color, pointRadius: 2,
                     borderDash: [5, 4], data: s.points.map(function (x) { return x.p90; })});
    });
    draw(canvas, {type: "line", data: {labels: labels, datasets: datasets}, options: options("seconds", function (o) {
      // several series (steps): one legend entry each, its p50; the caption says p90 is dashed
      if (series.length > 1) o.plugins.legend.labels.filter = function (item) { return item.datasetIndex % 2 === 0; };
    })});
  }

  report.pipelines.forEach(function (p) {
    var card = document.querySelector('section[data-pipeline="' + CSS.escape(p.pipeline) + '"]');
    if (!card) return;
    var labels = p.throughput.map(function (b) { return label(b.at); });
    function canvas(name) { return card.querySelector('canvas[data-chart="' + name + '"]'); }
    throughput(canvas("throughput"), p, labels);
    success(canvas("success"), p, labels);
    durations(canvas("jobs"), [{name: "job", color: PALETTE[0], points: p.job_durations}], labels);
    durations(canvas("steps"), p.step_durations.map(function (s, i) {
      return {name: s.step, color: PALETTE[i % PALETTE.length], points: s.points};
    }), labels);
  });
})();
