"""The batch page (/batches/<id>/) in headless Chromium (Debian's, through Playwright), on gunicorn.

The members' updates come from the test, through the store; the page follows the batch's
event stream under the pages' strict CSP.
"""

from __future__ import annotations

import pytest
from test_page_browser import (  # noqa: F401 - fixtures
    BAR,
    CHROMIUM,
    CHROMIUM_ARGS,
    RECORD_STREAM_OPENS,
    ROOT,
    browser,
    csp_page,
    page,
    store,
    wait_for_js,
    web,
)

pytestmark = pytest.mark.browser


def test_the_batch_page_follows_its_members_to_the_end(web, store, page, tmp_path):  # noqa: F811
    console = csp_page(page)
    batch_id = f"page-{tmp_path.name[-12:].replace('_', '-').strip('-') or 'b'}"
    job_ids = [f"{batch_id}-m{i}" for i in range(6)]
    store.create_batch(batch_id, job_ids, "video", name="June papers", tags=["team-a"])
    for i, job_id in enumerate(job_ids):
        store.create_job(job_id, f"3426584{i}", batch_id=batch_id, tags=["team-a"])
    store.update(job_ids[0], progress_percent=30, current_step="generate-script")

    response = page.goto(f"{web.base}/batches/{batch_id}/")
    assert "script-src 'self';" in response.headers["content-security-policy"]
    wait_for_js(page, "document.getElementById('conn').textContent.startsWith('Live')")
    assert page.locator("tr.member").count() == 6
    assert page.locator(BAR).get_attribute("aria-valuenow") == "5"

    for job_id in job_ids[1:]:
        store.update(job_id, progress_percent=60, current_step="generate-audio")
    wait_for_js(page, f"document.querySelector('{BAR}').getAttribute('aria-valuenow') === '55'")
    store.update(job_ids[0], status="failed", error="the paper's PDF is gone")
    for job_id in job_ids[1:]:
        store.update(job_id, status="completed")
    final = round((30 + 5 * 100) / 6, 6)
    wait_for_js(page, "document.getElementById('status-badge').textContent === 'failed'")
    wait_for_js(page, "document.getElementById('conn').textContent === 'Finished.'")
    assert float(page.locator(BAR).get_attribute("aria-valuenow")) == pytest.approx(final)
    first = page.locator("tr.member").first
    assert first.get_attribute("data-status") == "failed"  # failures first once finished
    wait_for_js(page, "document.querySelector('tr.member .member-step').textContent.indexOf('PDF') >= 0")
    statuses = [page.locator("tr.member").nth(i).get_attribute("data-status") for i in range(6)]
    assert statuses == ["failed"] + ["completed"] * 5
    assert page.locator("#counts").text_content() == "0 running · 0 pending · 5 completed · 1 failed · 0 canceled"
    bar = page.evaluate("window.__bar")
    assert bar == sorted(bar), "the bar never moves back"
    wait_for_js(page, "(function () { var f = document.getElementById('progress-fill');"
                      f" return f.getBoundingClientRect().width >= f.parentNode.getBoundingClientRect().width * {final / 100 - 0.01}; }})()")
    page.screenshot(path=str(tmp_path / "batch-page.png"), full_page=True)
    assert (tmp_path / "batch-page.png").stat().st_size > 0
    assert page.evaluate("window.__csp") == [] and console == []


def test_with_its_stream_blocked_the_batch_page_polls_to_the_end(web, store, page, tmp_path):  # noqa: F811
    batch_id = f"poll-{tmp_path.name[-10:].replace('_', '-').strip('-') or 'b'}"
    job_ids = [f"{batch_id}-m{i}" for i in range(3)]
    store.create_batch(batch_id, job_ids, "video")
    for i, job_id in enumerate(job_ids):
        store.create_job(job_id, f"2571967{i}", batch_id=batch_id)
    page.route("**/events*", lambda route: route.abort())
    page.goto(f"{web.base}/batches/{batch_id}/")
    wait_for_js(page, "document.getElementById('conn').textContent.indexOf('every few seconds') >= 0")
    store.update(job_ids[0], progress_percent=50)
    for job_id in job_ids:
        store.update(job_id, status="completed")
    wait_for_js(page, "document.getElementById('status-badge').textContent === 'completed'")
    wait_for_js(page, "document.getElementById('conn').textContent === 'Finished.'")
    assert page.locator(BAR).get_attribute("aria-valuenow") == "100"
    assert page.locator("tr.member[data-status='completed']").count() == 3


def test_the_batch_page_follows_through_progress_client_and_has_no_stream_code_of_its_own(
        web, store, page, tmp_path):  # noqa: F811
    """One copy of the stream, resume, poll and back-off logic: progress-client.js's follow()."""
    source = (ROOT / "web" / "static" / "batch.js").read_text()
    assert "EventSource" not in source and "setInterval" not in source
    assert 'import { follow } from "./progress-client.js";' in source
    page.add_init_script(RECORD_STREAM_OPENS)
    batch_id = f"one-{tmp_path.name[-10:].replace('_', '-').strip('-') or 'b'}"
    job_ids = [f"{batch_id}-m{i}" for i in range(2)]
    store.create_batch(batch_id, job_ids, "video")
    for i, job_id in enumerate(job_ids):
        store.create_job(job_id, f"3007114{i}", batch_id=batch_id)
    html = page.goto(f"{web.base}/batches/{batch_id}/").text()
    assert '<script type="module" src="/static/batch.js">' in html
    wait_for_js(page, "document.getElementById('conn').textContent === 'Live.'")
    assert len(page.evaluate("window.__streamOpens")) == 1  # follow() opened the batch's stream
    store.update(job_ids[0], progress_percent=40)
    wait_for_js(page, f"document.querySelector('{BAR}').getAttribute('aria-valuenow') === '20'")
    for job_id in job_ids:
        store.update(job_id, status="completed")
    wait_for_js(page, "document.getElementById('conn').textContent === 'Finished.'")
    assert page.locator("tr.member[data-status='completed']").count() == 2
    assert len(page.evaluate("window.__streamOpens")) == 1  # ended, not reopened
