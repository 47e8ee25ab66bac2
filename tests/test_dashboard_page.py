"""The live dashboard (/) in headless Chromium (Debian's, through Playwright), on gunicorn.

The jobs' updates come from the test, through the store; the page follows every job over one
event stream (GET /api/v1/events) under the pages' strict CSP, and polls the overview while
that stream is blocked. Screenshots go to the test's tmp dir.
"""

from __future__ import annotations

import uuid

import pytest
from test_page_browser import (  # noqa: F401 - fixtures
    READ_API_TOKEN,
    ROOT,
    STEPS,
    browser,
    csp_page,
    new_paper,
    page,
    read_token_of,
    store,
    token_web,
    wait_for_js,
    web,
)

pytestmark = pytest.mark.browser

# Records every width a job's bar is given, by job id, from the first script on.
RECORD_WIDTHS = """
window.__widths = {};
new MutationObserver(function (records) {
  records.forEach(function (r) {
    var li = r.target.closest && r.target.closest('[data-job]');
    if (!li || !r.target.classList.contains('mini-fill')) return;
    var id = li.getAttribute('data-job');
    (window.__widths[id] = window.__widths[id] || []).push(r.target.style.width);
  });
}).observe(document, {attributes: true, subtree: true, attributeFilter: ['style']});
"""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def row(list_id: str, job_id: str) -> str:
    return f"#{list_id} [data-job='{job_id}']"


def count_of(page, state: str) -> int:  # noqa: F811
    return int(page.locator(f".state-count[data-state='{state}'] .state-n").text_content())


def wait_count(page, state: str, n: int) -> None:  # noqa: F811
    wait_for_js(page, f"document.querySelector(\".state-count[data-state='{state}'] .state-n\").textContent === '{n}'")


def test_the_dashboard_moves_bars_live_counts_and_moves_a_finished_job(web, store, page, tmp_path):  # noqa: F811
    source = (ROOT / "web" / "static" / "index.js").read_text()  # one copy of the stream logic
    assert "EventSource" not in source and 'import { followAll } from "./progress-client.js";' in source
    console = csp_page(page)
    page.add_init_script(RECORD_WIDTHS)
    job_id = unique("dash")
    store.create_job(job_id, new_paper(), steps=STEPS, tags=["dash-live"])
    response = page.goto(f"{web.base}/")
    assert "script-src 'self';" in response.headers["content-security-policy"]
    wait_for_js(page, "document.getElementById('conn').textContent === 'Live.'")
    page.wait_for_selector(row("active-list", job_id), timeout=10_000)
    page.evaluate("window.__sameDocument = true")
    running, completed = count_of(page, "running"), count_of(page, "completed")

    store.update(job_id, status="running", current_step=STEPS[0], progress_percent=5)
    wait_count(page, "running", running + 1)  # the counts follow the stream
    for percent in (20, 45, 70, 90):
        store.update(job_id, progress_percent=percent, current_step=STEPS[percent // 25])
        wait_for_js(page, f"document.querySelector(\"{row('active-list', job_id)} .mini-pct\").textContent === '{percent}%'")
    widths = page.evaluate(f"window.__widths['{job_id}']")
    assert len(set(widths)) >= 4, widths  # the bar moved, without a reload
    assert page.locator(row("finished-list", job_id)).count() == 0

    store.update(job_id, status="completed")
    page.wait_for_selector(row("finished-list", job_id), timeout=10_000)
    assert page.locator(row("active-list", job_id)).count() == 0
    assert page.get_attribute(row("finished-list", job_id), "data-status") == "completed"
    wait_count(page, "completed", completed + 1)
    wait_count(page, "running", running)
    assert page.evaluate("window.__sameDocument") is True  # never reloaded
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert (tmp_path / "dashboard.png").stat().st_size > 0
    assert page.evaluate("window.__csp") == [] and console == []


def test_the_dashboard_fits_a_390_px_phone(web, store, page, tmp_path):  # noqa: F811
    page.set_viewport_size({"width": 390, "height": 844})
    batch_id = unique("phone")
    job_ids = [f"{batch_id}-m{i}" for i in range(3)]
    store.create_batch(batch_id, job_ids, "video", name="A batch with a rather long name for a phone",
                       tags=["phone-test"])
    for job_id in job_ids:
        store.create_job(job_id, new_paper(), steps=STEPS, batch_id=batch_id,
                         tags=["phone-test", "a-long-tag-name-for-a-narrow-screen"])
    store.update(job_ids[0], status="running", current_step=STEPS[3], progress_percent=64,
                 message="rendering a rather long step message that must not widen the page")
    store.update(job_ids[1], status="failed", error="the paper's PDF could not be fetched from anywhere at all")
    page.goto(f"{web.base}/")
    page.wait_for_selector(row("active-list", job_ids[0]), timeout=10_000)
    page.wait_for_selector(row("finished-list", job_ids[1]), timeout=10_000)
    page.wait_for_selector(f"#batch-list [data-batch='{batch_id}']", timeout=10_000)
    store.update(job_ids[0], progress_percent=80)
    page.wait_for_selector(f"{row('active-list', job_ids[0])} .mini-pct:text-is('80%')", timeout=10_000)
    width = page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide at 390"
    box = page.locator(row("active-list", job_ids[0])).bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    page.screenshot(path=str(tmp_path / "dashboard-390.png"), full_page=True)
    assert (tmp_path / "dashboard-390.png").stat().st_size > 0


def shown_ids(page, list_id: str) -> list[str]:  # noqa: F811
    return page.evaluate(f"[...document.querySelectorAll('#{list_id} [data-job]')].map(li => li.getAttribute('data-job'))")


def test_the_dashboard_filters_by_tag_pipeline_and_status_in_the_page_and_its_query(web, store, page):  # noqa: F811
    console = csp_page(page)
    tag = unique("team")
    tagged, other_pipe, untagged = unique("tagged"), unique("audio"), unique("untagged")
    store.create_job(tagged, new_paper(), tags=[tag, "june"])
    store.create_job(other_pipe, new_paper(), pipeline="audio-only", tags=[tag])
    store.create_job(untagged, new_paper())
    page.goto(f"{web.base}/?tag={tag}")
    page.wait_for_selector(row("active-list", other_pipe), timeout=10_000)
    assert set(shown_ids(page, "active-list")) == {tagged, other_pipe}  # the stream sent only the tag's
    chip = page.locator(f"{row('active-list', tagged)} .job-tags a.tag").first
    assert chip.text_content() == tag and chip.get_attribute("href") == f"?tag={tag}"
    later = unique("later")
    store.create_job(later, new_paper(), tags=[tag])
    page.wait_for_selector(row("active-list", later), timeout=10_000)  # live, and the filter holds
    assert untagged not in shown_ids(page, "active-list")

    page.select_option("#filter-pipeline", "audio-only")  # client-side at once, and into the query
    wait_for_js(page, "location.search.indexOf('pipeline=audio-only') >= 0")
    assert f"tag={tag}" in page.evaluate("location.search")
    assert shown_ids(page, "active-list") == [other_pipe]
    store.update(other_pipe, status="running", progress_percent=30)
    page.select_option("#filter-status", "running")
    wait_for_js(page, "location.search.indexOf('status=running') >= 0")
    page.wait_for_selector(f"{row('active-list', other_pipe)} .mini-pct:text-is('30%')", timeout=10_000)
    assert shown_ids(page, "active-list") == [other_pipe]

    page.reload()  # the query is the filter: the page opens with it
    page.wait_for_selector(row("active-list", other_pipe), timeout=10_000)
    assert page.input_value("#filter-status") == "running" and page.input_value("#filter-pipeline") == "audio-only"
    assert shown_ids(page, "active-list") == [other_pipe]
    page.click("#filters-clear")
    page.wait_for_selector(row("active-list", untagged), timeout=10_000)
    assert page.evaluate("location.search") == ""
    assert {tagged, other_pipe, later, untagged} <= set(shown_ids(page, "active-list"))
    assert page.evaluate("window.__csp") == [] and console == []


def test_with_its_stream_blocked_the_dashboard_polls_the_overview(web, store, page):  # noqa: F811
    page.route("**/api/v1/events*", lambda route: route.abort())
    job_id = unique("polled")
    store.create_job(job_id, new_paper(), steps=STEPS)
    store.update(job_id, status="running", progress_percent=10)
    page.goto(f"{web.base}/")
    wait_for_js(page, "document.getElementById('conn').textContent.indexOf('every few seconds') >= 0")
    page.wait_for_selector(row("active-list", job_id), timeout=10_000)
    store.update(job_id, progress_percent=55)
    page.wait_for_selector(f"{row('active-list', job_id)} .mini-pct:text-is('55%')", timeout=10_000)
    store.update(job_id, status="failed", error="no PDF")
    page.wait_for_selector(row("finished-list", job_id), timeout=10_000)
    assert "no PDF" in page.text_content(row("finished-list", job_id))


def test_a_quiet_running_job_turns_stale_and_its_next_update_clears_it(web, store, page):  # noqa: F811
    job_id = unique("quiet")
    store.create_job(job_id, new_paper(), steps=STEPS)
    store.update(job_id, status="running", progress_percent=10)
    page.goto(f"{web.base}/")
    page.wait_for_selector(row("active-list", job_id), timeout=10_000)
    stale = f"{row('active-list', job_id)} .job-stale"
    page.wait_for_selector(stale, state="visible", timeout=12_000)  # PROGRESS_STALE_AFTER=2, no event
    store.update(job_id, progress_percent=20)
    page.wait_for_selector(stale, state="hidden", timeout=10_000)


def test_under_read_auth_the_dashboard_needs_the_api_token_and_carries_it_on(token_web, store, page):  # noqa: F811
    job_id = unique("guarded")
    paper = new_paper()
    store.create_job(job_id, paper, steps=STEPS)
    assert token_web.get("/")[0] == 401
    assert token_web.get(f"/?token={read_token_of(job_id)}")[0] == 401  # a job's token reads no list
    page.goto(f"{token_web.base}/?token={READ_API_TOKEN}")
    wait_for_js(page, "document.getElementById('conn').textContent === 'Live.'")  # the stream took ?token=
    page.wait_for_selector(row("active-list", job_id), timeout=10_000)
    store.update(job_id, status="running", progress_percent=35)
    page.wait_for_selector(f"{row('active-list', job_id)} .mini-pct:text-is('35%')", timeout=10_000)
    link = page.get_attribute(f"{row('active-list', job_id)} .job-paper", "href")
    assert link == f"/status/{paper}/?token={READ_API_TOKEN}"
    log = token_web.log_path.read_text(errors="replace")
    assert "GET /?token=***" in log and READ_API_TOKEN not in log  # the page logged, its token not
