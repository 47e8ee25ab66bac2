"""The status page's ETA in headless Chromium (the fixtures of tests/test_page_browser.py): before a
job starts, how long its pipeline typically takes; while it runs, about how long is left."""

from __future__ import annotations

import uuid

import pytest
from test_page_browser import (  # noqa: F401 - fixtures: browser, page, store, web
    STEPS,
    WAIT_MS,
    browser,
    new_paper,
    page,
    screenshot,
    store,
    wait_for_js,
    web,
)

from progress_service.step_stats import StepStats, StepTimes

pytestmark = pytest.mark.browser

# The video pipeline's steps, typically 2, 2, 8, 48 and 40 s where its weights put them on the bar.
VIDEO_STATS = StepStats(
    pipeline="video", steps=tuple(STEPS), jobs=20, job_p50=100.0, job_p90=120.0,
    step_times={name: StepTimes(p50, p50 * 1.2, 20, start)
                for name, p50, start in zip(STEPS, (2.0, 2.0, 8.0, 48.0, 40.0), (0, 2, 4, 12, 60), strict=True)},
)
ETA_TEXT = "document.getElementById('eta').textContent"


def test_the_page_says_how_long_a_job_typically_takes_then_how_long_is_left(web, store, page):  # noqa: F811
    store.save_step_stats(VIDEO_STATS)
    paper = new_paper()
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    store.create_job(job_id, paper, steps=STEPS)
    page.goto(f"{web.base}/status/{paper}/")
    page.wait_for_selector("#status-badge[data-status='pending']", timeout=WAIT_MS)
    wait_for_js(page, f"{ETA_TEXT} === 'typically takes 1 min 40 s'")
    screenshot(page, "status-eta-pending.png")

    # generate-videos begins: its typical 48 s and assemble-video's 40 s are left
    store.update(job_id, status="running", current_step=STEPS[3], progress_percent=12)
    wait_for_js(page, f"/^about 1 min 2[0-8] s left$/.test({ETA_TEXT})")
    screenshot(page, "status-eta-running.png")
    store.update(job_id, status="completed")
    wait_for_js(page, f"{ETA_TEXT} === ''")
