"""The paper's status page and retries, in headless Chromium (test_page_browser.py's setup):
it follows the latest attempt and lists the earlier ones, linked to their snapshots."""

from __future__ import annotations

import json
import uuid

import pytest
from test_page_browser import (  # noqa: F401 - fixtures
    PAGE_CONFIG,
    STEPS,
    browser,
    new_paper,
    page,
    start_job,
    store,
    wait_bar_at_least,
    wait_for_js,
    web,
)

from progress_service.pipelines import PIPELINES

pytestmark = pytest.mark.browser


def test_a_failed_jobs_page_follows_its_retry_and_lists_the_failed_attempt(web, store, page):  # noqa: F811
    paper = new_paper()
    first = start_job(store, paper)
    store.update(first, current_step=STEPS[3], progress_percent=12)
    store.update(first, status="failed", error="generate-videos: out of disk")
    page.goto(f"{web.base}/status/{paper}/")
    assert page.text_content("#job-id") == first and page.is_hidden("#attempts-box")
    assert page.is_visible("#error-box") and page.is_hidden("#attempt")

    retry = f"job-{uuid.uuid4().hex[:8]}"  # what POST .../retry makes, resuming after 3 steps
    store.create_job(retry, paper, steps=STEPS, attempt=2, retry_of=first, steps_done=3,
                     progress_percent=PIPELINES["video"].start_percent(3),
                     message="skipped fetch-paper, generate-script, generate-audio (done by attempt 1)")
    wait_for_js(page, f"document.getElementById('job-id').textContent === {json.dumps(retry)}")
    assert page.is_visible("#attempt") and page.text_content("#attempt-number") == "2"
    assert page.is_hidden("#error-box")
    link = page.locator(f"#attempts li[data-job-id='{first}'] a")
    assert link.get_attribute("href") == f"/api/v1/jobs/{first}"
    assert "failed" in page.text_content(f"#attempts li[data-job-id='{first}']")
    states = page.eval_on_selector_all("#steps li", "items => items.map(i => i.getAttribute('data-state'))")
    assert states[:3] == ["done"] * 3
    # the retry runs on from its preset share and completes, live
    store.update(retry, status="running", current_step=STEPS[3], progress_percent=40)
    wait_bar_at_least(page, 40)
    store.update(retry, status="completed")
    wait_bar_at_least(page, 100)

    # opened afresh, the page shows the latest attempt and the earlier one from its config
    page.goto(f"{web.base}/status/{paper}/")
    config = json.loads(page.content().split(PAGE_CONFIG, 1)[1].split("</script>", 1)[0])
    assert config["snapshot"]["job_id"] == retry
    assert [(a["job_id"], a["attempt"], a["status"]) for a in config["attempts"]] == [(first, 1, "failed")]
    assert page.text_content("#job-id") == retry and page.is_visible("#attempts-box")
    assert page.locator("#attempts li").count() == 1
