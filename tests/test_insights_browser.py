"""/insights/ in headless Chromium (Debian's, through Playwright), on gunicorn, over a seeded history.

The charts are Chart.js (vendored, web/static/vendor/chart.umd.js) drawing on canvases: the
test reads their pixels for the datasets' colours, compares what each chart holds with the
API's numbers, saves a screenshot in its tmp dir, and checks the page at 390 px wide.
"""

from __future__ import annotations

import json
import random
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from insights_history import FinishedJob, seed
from test_page_browser import (  # noqa: F401 - fixtures
    CHROMIUM,
    CHROMIUM_ARGS,
    browser,
    csp_page,
    wait_for_js,
)
from test_sse import GunicornServer, server_env

pytestmark = pytest.mark.browser

STEPS = ["fetch-paper", "generate-script", "generate-audio", "assemble-video"]
CHARTS = ("throughput", "success", "jobs", "steps")
COMPLETED_GREEN = (0x14, 0x80, 0x4A)  # insights.js: OUTCOME_COLORS.completed
FIRST_SERIES_BLUE = (0x24, 0x58, 0xD3)  # insights.js: PALETTE[0]

# How many of a canvas's pixels are within a few units of each colour, and how many are not blank.
COUNT_PIXELS = """
([selector, colours]) => {
  const canvas = document.querySelector(selector);
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  const near = colours.map(() => 0);
  let drawn = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] === 0) continue;
    drawn++;
    colours.forEach((c, k) => {
      if (Math.abs(data[i] - c[0]) < 8 && Math.abs(data[i + 1] - c[1]) < 8 && Math.abs(data[i + 2] - c[2]) < 8) near[k]++;
    });
  }
  return {drawn, near, width: canvas.width, height: canvas.height};
}
"""


def history(now: datetime) -> list[FinishedJob]:
    """Forty video jobs over the last 20 hours (steps of very different lengths, a few failures)
    and a handful of another pipeline's."""
    rng = random.Random(13)
    jobs = []
    for i in range(40):
        times = {"fetch-paper": rng.uniform(1, 3), "generate-script": rng.uniform(5, 10),
                 "generate-audio": rng.uniform(20, 40), "assemble-video": rng.uniform(60, 120)}
        failed = i % 7 == 3
        if failed:
            times.pop("assemble-video")
        jobs.append(FinishedJob(f"v-{i}", now - timedelta(minutes=30 * i + 3), times, steps=STEPS,
                                status="failed" if failed else "completed",
                                error="ffmpeg exited with 1" if failed else None,
                                paper_id=str(30000000 + i)))
    for i in range(5):
        jobs.append(FinishedJob(f"t-{i}", now - timedelta(hours=i + 1), {"a": 0.5 + i, "b": 2.0},
                                pipeline="tracked"))
    return jobs


@pytest.fixture
def web(real_redis, real_redis_url, key_prefix, db_url):
    seed(db_url, history(datetime.now(UTC)))
    srv = GunicornServer(server_env(real_redis_url, key_prefix, DATABASE_URL=db_url))
    yield srv
    srv.stop()


def open_page(browser, web, width: int, height: int):  # noqa: F811
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    console = csp_page(page)
    response = page.goto(f"{web.base}/insights/?pipeline=video&since=24h")
    assert response.status == 200
    assert "script-src 'self';" in response.headers["content-security-policy"]
    # every canvas has its chart (Chart.getChart), drawn at once (insights.js turns animation off)
    wait_for_js(page, "Array.from(document.querySelectorAll('canvas')).every(c => Chart.getChart(c))")
    return context, page, errors, console


def api(web, query: str) -> dict:
    with urllib.request.urlopen(f"{web.base}/api/v1/insights?{query}", timeout=10) as r:
        return json.load(r)


def test_the_insights_page_draws_its_charts_from_the_history(browser, web, tmp_path):  # noqa: F811
    context, page, errors, console = open_page(browser, web, 1100, 1000)
    try:
        (video,) = api(web, "pipeline=video&since=24h")["pipelines"]
        assert page.locator("section.insight canvas").count() == len(CHARTS)
        for name in CHARTS:
            pixels = page.evaluate(COUNT_PIXELS, [f"canvas[data-chart={name}]", [COMPLETED_GREEN, FIRST_SERIES_BLUE]])
            assert pixels["drawn"] > 2000, (name, pixels)  # axes, labels and data, not a blank canvas
        bars = page.evaluate(COUNT_PIXELS, ["canvas[data-chart=throughput]", [COMPLETED_GREEN]])
        assert bars["near"][0] > 200  # the completed jobs' green bars
        jobs_line = page.evaluate(COUNT_PIXELS, ["canvas[data-chart=jobs]", [FIRST_SERIES_BLUE]])
        assert jobs_line["near"][0] > 100  # the job duration's p50 and p90 lines

        # what the charts hold is the API's numbers
        def chart_data(name: str) -> list:
            return page.evaluate(f"Chart.getChart(document.querySelector('canvas[data-chart={name}]'))"
                                 ".data.datasets.map(d => ({label: d.label, data: d.data}))")

        completed = next(d for d in chart_data("throughput") if d["label"] == "completed")
        assert completed["data"] == [b["completed"] for b in video["throughput"]]
        assert sum(completed["data"]) == video["completed"] == 34
        steps = chart_data("steps")
        assert [d["label"] for d in steps] == [f"{s} {p}" for s in STEPS for p in ("p50", "p90")]
        assert steps[-2]["data"] == [p["p50"] for p in video["step_durations"][-1]["points"]]
        assert page.locator(".failures li").first.text_content().startswith("6× ffmpeg exited with 1")
        assert page.locator(".slowest li").count() == 10
        page.screenshot(path=str(tmp_path / "insights.png"), full_page=True)
        assert (tmp_path / "insights.png").stat().st_size > 10_000
        assert page.evaluate("window.__csp") == [] and console == [] and errors == []
    finally:
        context.close()


def test_the_insights_page_fits_a_phone(browser, web, tmp_path):  # noqa: F811
    context, page, errors, console = open_page(browser, web, 390, 844)
    try:
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
        for name in CHARTS:
            pixels = page.evaluate(COUNT_PIXELS, [f"canvas[data-chart={name}]", [COMPLETED_GREEN]])
            assert 300 <= pixels["width"] <= 390 and pixels["drawn"] > 1000, (name, pixels)
        boxes = [page.locator(f"canvas[data-chart={name}]").bounding_box() for name in CHARTS]
        assert all(a["y"] + a["height"] <= b["y"] for a, b in zip(boxes, boxes[1:], strict=False))  # one column
        # the menu takes the reader to another pipeline and range
        page.select_option("#pipeline", "tracked")
        page.select_option("#since", "7d")
        page.click("button[type=submit]")
        page.wait_for_url("**/insights/?pipeline=tracked&since=7d")
        wait_for_js(page, "Array.from(document.querySelectorAll('canvas')).every(c => Chart.getChart(c))")
        assert page.locator("section.insight h2").text_content() == "tracked"
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(tmp_path / "insights-390.png"), full_page=True)
        assert (tmp_path / "insights-390.png").stat().st_size > 10_000
        assert page.evaluate("window.__csp") == [] and console == [] and errors == []
    finally:
        context.close()
