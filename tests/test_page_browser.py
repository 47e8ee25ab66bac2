"""The live status page in headless Chromium (Debian's, driven by Playwright), against a real gunicorn.

The job's updates come from the test, through the store; the page learns of
them through its event stream, or, with the stream blocked, by polling (and it
goes back to the stream once that answers again). Screenshots are kept under
``test-artifacts/``.
"""

from __future__ import annotations

import http.server
import json
import random
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis
from test_sse import GunicornServer, server_env

from progress_service.config import Settings
from progress_service.models import DEFAULT_STEPS
from progress_service.store import ProgressStore

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
STEPS = list(DEFAULT_STEPS)
BAR = "[role=progressbar]"
WAIT_MS = 10_000

# Records every value aria-valuenow takes, from the first script on: the bar may never fall.
RECORD_BAR = """
window.__bar = [];
new MutationObserver(function (records) {
  records.forEach(function (r) {
    if (r.attributeName === 'aria-valuenow') window.__bar.push(Number(r.target.getAttribute('aria-valuenow')));
  });
}).observe(document, {attributes: true, subtree: true, attributeFilter: ['aria-valuenow']});
"""

# Records when the page opens an EventSource (performance.now(), ms), without changing what it does.
RECORD_STREAM_OPENS = """
window.__streamOpens = [];
(function (Native) {
  function Counted(url, init) { window.__streamOpens.push(performance.now()); return new Native(url, init); }
  Counted.prototype = Native.prototype;
  ['CONNECTING', 'OPEN', 'CLOSED'].forEach(function (k) { Counted[k] = Native[k]; });
  window.EventSource = Counted;
})(window.EventSource);
"""
PAGE_CONFIG = '<script type="application/json" id="page-config">'


@pytest.fixture(scope="module")
def web(real_redis_url, module_key_prefix):
    srv = GunicornServer(server_env(real_redis_url, module_key_prefix))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def store(real_redis_url, module_key_prefix):
    client = redis.Redis.from_url(real_redis_url, decode_responses=True)
    yield ProgressStore(client, Settings.from_env(server_env(real_redis_url, module_key_prefix)))
    client.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        # Skipped, saying why, on a bare machine; a failure in strict mode (CI installs it).
        from helpers import unavailable
        unavailable(f"{CHROMIUM} is missing: apt-get install chromium (never a downloaded browser)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 1000})
    page = context.new_page()
    page.add_init_script(RECORD_BAR)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"the page threw: {errors}"


@pytest.fixture(scope="module")
def video_file(tmp_path_factory) -> Path:
    """A real one-second H.264/AAC MP4, like the pipeline's, made with the ffmpeg imageio-ffmpeg ships."""
    import imageio_ffmpeg

    out = tmp_path_factory.mktemp("video") / "31452104.mp4"
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
         "-f", "lavfi", "-i", "color=c=0x2458d3:s=320x180:d=1:r=10",
         "-f", "lavfi", "-i", "anullsrc=r=22050:cl=mono", "-t", "1",
         "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
         "-movflags", "+faststart", str(out)],
        check=True, timeout=60)
    return out


def new_paper() -> str:
    return str(random.randrange(10_000_000, 99_999_999))


def start_job(store, paper_id: str, percent: float = 2) -> str:
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    store.create_job(job_id, paper_id, steps=STEPS)
    store.update(job_id, status="running", current_step=STEPS[0], progress_percent=percent,
                 message="fetching the paper")
    return job_id


def wait_for_js(page, expression: str, timeout: float = WAIT_MS) -> None:
    """Until ``expression`` is true in the page: Playwright's wait_for_function compiles it with
    ``new Function`` in the page, which the pages' CSP (no eval) refuses; page.evaluate is exempt."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} ms: {expression}")
        page.wait_for_timeout(50)


def bar_value(page) -> float:
    return float(page.get_attribute(BAR, "aria-valuenow"))


def wait_bar_at_least(page, percent: float) -> None:
    wait_for_js(page,
        f"Number(document.querySelector('{BAR}').getAttribute('aria-valuenow')) >= {percent}",
        timeout=WAIT_MS)


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    # the bar glides to its new width: let it arrive before the picture
    wait_for_js(page, "document.getAnimations().every(a => !(a instanceof CSSTransition))",
                           timeout=WAIT_MS)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_the_bar_rises_live_never_falls_and_ends_with_the_video(web, store, page, video_file):
    paper = new_paper()
    job_id = start_job(store, paper)
    page.goto(f"{web.base}/status/{paper}/")
    wait_for_js(page, "document.getElementById('conn').textContent.startsWith('Live')", timeout=WAIT_MS)
    assert page.text_content("#job-id") == job_id
    assert page.get_attribute(BAR, "aria-valuemin") == "0" and page.get_attribute(BAR, "aria-valuemax") == "100"

    for percent in (8, 15, 23, 31, 38, 46, 55, 61, 70, 77, 84, 92, 97):
        step = STEPS[min(int(percent // 20), 4)]
        assert store.update(job_id, progress_percent=percent, current_step=step,
                            message=f"working on {step}").accepted
        assert not store.update(job_id, progress_percent=percent - 5).accepted  # a late, older write
        wait_bar_at_least(page, percent)
        if percent == 46:
            page.wait_for_selector("li.step.current[data-step='generate-audio']", timeout=WAIT_MS)
            assert page.text_content("#progress-text") == "46% complete (2 of 5 steps)"
            assert page.get_attribute("li[data-step='generate-script']", "data-state") == "done"
            assert page.get_attribute("li[data-step='generate-videos']", "data-state") == "pending"
            assert "s ago" in page.text_content("#updated")
            screenshot(page, "status-running.png")

    store.update(job_id, progress_percent=100, result={
        "video_url": video_file.as_uri(), "video_path": str(video_file), "title": "A paper, as a video"})
    wait_bar_at_least(page, 100)
    page.wait_for_selector("#status-badge[data-status='completed']", timeout=WAIT_MS)
    page.wait_for_selector("#video-box video", state="visible", timeout=WAIT_MS)
    assert page.text_content("#progress-text") == "100% complete (5 of 5 steps)"
    assert page.get_attribute("#video", "src") == f"/api/v1/jobs/{job_id}/video"
    wait_for_js(page, "document.getElementById('video').readyState >= 1", timeout=WAIT_MS)
    assert page.evaluate("document.getElementById('video').duration") > 0.5  # Chromium decoded our MP4
    assert page.text_content("#title") == "A paper, as a video"
    assert page.locator("li.step.done").count() == 5
    assert page.text_content("#conn") == "Finished"

    values = page.evaluate("window.__bar")
    assert values and values[-1] == 100
    assert values == sorted(values), f"the bar moved back: {values}"
    assert len(set(values)) >= 10  # it really moved step by step
    screenshot(page, "status-completed.png")


def test_a_job_with_no_worker_shows_the_stale_warning(web, store, page):
    paper = new_paper()
    job_id = start_job(store, paper, percent=30)
    page.goto(f"{web.base}/status/{paper}/")
    assert page.is_hidden("#stale-warning")
    page.wait_for_selector("#stale-warning", state="visible", timeout=WAIT_MS)  # PROGRESS_STALE_AFTER=2
    text = page.text_content("#stale-warning")
    assert "No progress for" in text and "its worker may have stopped" in text, text
    screenshot(page, "status-stale.png")

    # The worker is alive after all (its heartbeat goes on), only the step is slow: the
    # warning says so instead of blaming the worker.
    beating = threading.Event()

    def beat():
        while not beating.wait(0.5):
            store.heartbeat(job_id)

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        wait_for_js(page,
            "document.querySelector('#stale-warning').textContent.includes('its worker is alive')",
            timeout=WAIT_MS)
        assert page.is_visible("#stale-warning")
        screenshot(page, "status-stale-worker-alive.png")
    finally:
        beating.set()
        beater.join(5)
    store.update(job_id, progress_percent=35)  # it moves again
    page.wait_for_selector("#stale-warning", state="hidden", timeout=WAIT_MS)
    assert bar_value(page) == 35


def test_a_queued_job_says_when_no_worker_listens_on_its_queue(web, store, page, real_redis_url,
                                                               module_key_prefix):
    from rq import Worker

    from progress_service.queue import submit_job

    settings = store.settings
    conn = redis.Redis.from_url(real_redis_url)
    listening = Worker([settings.queue_name], connection=conn, name=f"{module_key_prefix}-w")
    listening.register_birth()  # in RQ's registry, but it takes no job
    paper = new_paper()
    try:
        submit_job(settings, paper, store=store, redis_conn=conn, job_id=f"{module_key_prefix}-{paper}")
        page.route("**/events*", lambda route: route.abort())  # the page polls ?_json=1 every 3 s
        page.goto(f"{web.base}/status/{paper}/")
        page.wait_for_selector("#status-badge[data-status='pending']", timeout=WAIT_MS)
        assert page.is_hidden("#no-worker")  # one listens
        listening.register_death()  # ... and stops
        page.wait_for_selector("#no-worker", state="visible", timeout=WAIT_MS)
        assert page.text_content("#no-worker-queue") == settings.queue_name
        assert "No worker is listening on queue" in page.text_content("#no-worker")
        screenshot(page, "status-no-worker.png")
        store.update(f"{module_key_prefix}-{paper}", progress_percent=5)  # a worker took it after all
        page.wait_for_selector("#no-worker", state="hidden", timeout=WAIT_MS)
    finally:
        listening.register_death()
        conn.srem("rq:queues", f"rq:queue:{settings.queue_name}")
        conn.close()


def test_with_the_event_stream_blocked_polling_moves_the_bar(web, store, page):
    page.route("**/events*", lambda route: route.abort())
    polled: list[str] = []
    page.on("request", lambda request: polled.append(request.url) if "_json=1" in request.url else None)
    paper = new_paper()
    job_id = start_job(store, paper, percent=10)
    page.goto(f"{web.base}/status/{paper}/")
    wait_for_js(page, "document.getElementById('conn').textContent.includes('checking every 3 s')",
                           timeout=WAIT_MS)
    store.update(job_id, progress_percent=45, current_step=STEPS[2])
    wait_bar_at_least(page, 45)
    store.update(job_id, status="failed", error="ffmpeg exited with 1")
    page.wait_for_selector("#error-box", state="visible", timeout=WAIT_MS)
    assert "ffmpeg exited with 1" in page.text_content("#error-box")
    assert page.get_attribute("#status-badge", "data-status") == "failed"
    assert polled, "the page never polled ?_json=1"
    values = page.evaluate("window.__bar")
    assert values == sorted(values) and values[-1] == 45  # a failed job keeps its last percent
    screenshot(page, "status-failed-polling.png")


def with_page_config(page, paper: str, **overrides) -> None:
    """Serve the paper's status page with ``overrides`` in its config (the server's values are for people)."""
    def rewrite(route):
        response = route.fetch()
        html = response.text()
        start = html.index(PAGE_CONFIG) + len(PAGE_CONFIG)
        end = html.index("</script>", start)
        config = json.loads(html[start:end]) | overrides
        route.fulfill(response=response, body=html[:start] + json.dumps(config).replace("<", "\\u003c") + html[end:])

    page.route(lambda url: url.endswith(f"/status/{paper}/"), rewrite)


def test_while_polling_the_page_retries_its_stream_and_goes_live_again(web, store, page):
    paper = new_paper()
    job_id = start_job(store, paper, percent=10)
    # for people: polls every 3 s, tries the stream after 15 s, 30 s, then every 60 s
    with_page_config(page, paper, poll_ms=500, stream_retry_ms=300, stream_retry_max_ms=600)
    page.add_init_script(RECORD_STREAM_OPENS)
    page.route("**/events*", lambda route: route.abort())  # the stream is down...
    page.goto(f"{web.base}/status/{paper}/")
    page.wait_for_selector("#conn-dot[data-mode='polling']", timeout=WAIT_MS)
    store.update(job_id, progress_percent=30, current_step=STEPS[1])
    wait_bar_at_least(page, 30)  # polling carries the page meanwhile
    wait_for_js(page, "window.__streamOpens.length >= 4", timeout=WAIT_MS)
    opens = page.evaluate("window.__streamOpens")
    gaps = [b - a for a, b in zip(opens, opens[1:], strict=False)]
    assert all(gap >= 200 for gap in gaps), f"the page hammers the stream: {gaps} ms"  # 300 ms -20% jitter
    # 300, then 600 (the cap), +-20%. Only lower bounds: a loaded machine can stretch any
    # one gap (comparing gaps[1] > gaps[0] failed when the first timer ran late).
    assert gaps[1] >= 450 and gaps[2] >= 450, f"no backoff: {gaps} ms"
    assert page.get_attribute("#conn-dot", "data-mode") == "polling"

    page.unroute("**/events*")  # ...and back
    page.wait_for_selector("#conn-dot[data-mode='live']", timeout=WAIT_MS)
    assert page.text_content("#conn").startswith("Live")
    page.route("**/*_json=1*", lambda route: route.abort())  # from here on only the stream can move the bar
    store.update(job_id, progress_percent=55, current_step=STEPS[2])
    wait_bar_at_least(page, 55)
    store.update(job_id, progress_percent=100)
    page.wait_for_selector("#status-badge[data-status='completed']", timeout=WAIT_MS)
    assert page.text_content("#conn") == "Finished"
    opened = len(page.evaluate("window.__streamOpens"))
    page.wait_for_timeout(600)  # longer than a retry's wait (300 ms +20% after a live spell): none comes
    assert len(page.evaluate("window.__streamOpens")) == opened
    values = page.evaluate("window.__bar")
    assert values == sorted(values) and values[-1] == 100, f"the bar moved back: {values}"


def test_a_browser_eventsource_stops_reconnecting_once_the_job_has_ended(web, store, page):
    """The stream ends after the terminal event; EventSource reconnects with Last-Event-ID, gets 204, stops."""
    job_id = start_job(store, new_paper())
    done = store.update(job_id, progress_percent=100).seq
    url = f"/api/v1/jobs/{job_id}/events"
    requests = []
    page.on("request", lambda request: requests.append(request) if request.url.endswith(url) else None)
    page.goto(f"{web.base}/healthz")  # any page of the server's origin
    ids = page.evaluate("""(url) => new Promise((resolve, reject) => {
      const source = new EventSource(url), ids = [];
      source.addEventListener('progress', (ev) => ids.push(ev.lastEventId));
      source.onerror = () => { if (source.readyState === EventSource.CLOSED) resolve(ids); };
      setTimeout(() => { source.close(); reject(new Error('still reconnecting: ' + ids)); }, 8000);
    })""", url)
    assert ids == [str(done)]  # the final snapshot once, not again on the reconnect
    assert len(requests) == 2
    assert requests[1].all_headers().get("last-event-id") == str(done)
    assert requests[1].response().status == 204


def test_a_page_opened_before_the_job_picks_it_up(web, store, page):
    paper = new_paper()
    page.goto(f"{web.base}/status/{paper}/")
    assert page.is_visible("#no-job") and page.is_hidden("#job")
    job_id = start_job(store, paper, percent=12)
    page.wait_for_selector("#job", state="visible", timeout=WAIT_MS)
    assert page.text_content("#job-id") == job_id
    wait_bar_at_least(page, 12)
    store.update(job_id, progress_percent=50, current_step=STEPS[2])
    wait_bar_at_least(page, 50)  # and it goes live


def test_recent_jobs_page_lists_jobs(web, store, page):
    paper = new_paper()
    start_job(store, paper, percent=64)
    page.goto(f"{web.base}/")
    page.wait_for_selector(f"a[href='/status/{paper}/']", timeout=WAIT_MS)
    assert "64%" in page.text_content("#active-list")
    screenshot(page, "recent-jobs.png")


# Records what the page's Content-Security-Policy refuses, from the first script on.
RECORD_CSP = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', function (e) {
  window.__csp.push(e.effectiveDirective + ' ' + (e.blockedURI || '') + ' ' + (e.sample || ''));
});
"""


def csp_page(page) -> list[str]:
    """Records the page's CSP violations, and the console's words about them, from here on."""
    page.add_init_script(RECORD_CSP)
    console: list[str] = []
    page.on("console", lambda msg: console.append(msg.text) if "Content Security Policy" in msg.text else None)
    return console


def test_the_pages_run_under_their_csp_and_the_bar_still_moves_live(web, store, page):
    """No inline script, no eval, no style attribute: the pages' CSP refuses nothing they do."""
    console = csp_page(page)
    paper = new_paper()
    job_id = start_job(store, paper, percent=5)
    response = page.goto(f"{web.base}/status/{paper}/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "style-src 'self';" in policy
    wait_for_js(page, "document.getElementById('conn').textContent.startsWith('Live')")
    for percent, step in ((30, STEPS[1]), (55, STEPS[2])):
        store.update(job_id, progress_percent=percent, current_step=step)
        wait_bar_at_least(page, percent)
    assert page.get_attribute(f"li[data-step='{STEPS[2]}']", "data-state") == "current"
    assert page.evaluate("document.getElementById('progress-fill').style.width") == "55%"
    assert page.evaluate("window.__csp") == [] and console == []
    # the page's own writes pass the cross-site guard (Chromium sends Sec-Fetch-Site: same-origin)
    cancel = "fetch('/api/v1/jobs/no-such-job/cancel', {method: 'POST'}).then(r => r.status)"
    assert page.evaluate(cancel) == 404

    page.goto(f"{web.base}/")
    page.wait_for_selector(f"a[href='/status/{paper}/']", timeout=WAIT_MS)
    store.update(job_id, progress_percent=70, current_step=STEPS[3])
    page.wait_for_selector(f"#active-list li:has(a[href='/status/{paper}/']) .mini-pct:text-is('70%')",
                           timeout=WAIT_MS)  # the dashboard follows every job live
    assert page.evaluate("window.__csp") == [] and console == []


@pytest.fixture
def rq_job_with_markup(real_redis_url, module_key_prefix):
    """A failed RQ job whose exception text holds markup, as if a pipeline's stderr had reached it."""
    from rq.job import Job
    from rq.results import Result

    conn = redis.Redis.from_url(real_redis_url)
    job = Job.create("os.getcwd", connection=conn, id=f"{module_key_prefix}-markup",
                     origin=f"{module_key_prefix}-pipelines")
    job.save()
    Result.create_failure(job, ttl=300, exc_string=(
        'PipelineFailed: exit code 1: <img src="/no-such.png" onerror="window.__pwned = 1">'
        '<script>window.__pwned = 2</script>'))
    yield job
    Result.delete_all(job)
    job.delete()
    conn.close()


def test_the_rq_dashboard_runs_no_script_from_a_job_text(web, page, rq_job_with_markup):
    """rq-dashboard 0.9 puts a job's exception text into its page unescaped; its CSP (a nonce for
    its own scripts) runs nothing that text brings, while the dashboard itself works."""
    console = csp_page(page)
    response = page.goto(f"{web.base}/rq/0/view/job/{rq_job_with_markup.id}")
    assert "'nonce-" in response.headers["content-security-policy"]
    page.wait_for_selector("pre.exc_info", timeout=WAIT_MS)  # the dashboard's own scripts ran
    assert "PipelineFailed: exit code 1" in page.text_content("pre.exc_info")
    page.wait_for_timeout(300)  # time for the image's error, had its handler been allowed to run
    assert page.evaluate("window.__pwned") is None
    refused = page.evaluate("window.__csp")
    assert refused and all(v.startswith("script-src-attr") for v in refused), refused  # the onerror alone

    page.goto(f"{web.base}/rq/")
    page.wait_for_selector("#queues tbody tr", timeout=WAIT_MS)
    assert page.evaluate("window.__csp") == [], console


def test_a_page_on_another_site_can_neither_cancel_nor_submit(web, store, page):
    """What a page elsewhere can send without CORS: a bodyless POST and a text/plain one (no-cors)."""
    job_id = start_job(store, new_paper(), percent=20)
    other_site = web.base.replace("127.0.0.1", "localhost")  # another origin, another site
    page.goto(f"{other_site}/healthz")
    sent = page.evaluate("""([base, jobId]) => Promise.all([
      fetch(base + '/api/v1/jobs/' + jobId + '/cancel', {method: 'POST', mode: 'no-cors'}),
      fetch(base + '/api/v1/jobs', {method: 'POST', mode: 'no-cors', body: '{"paper_id": "31452104"}'}),
    ]).then(() => true)""", [web.base, job_id])
    assert sent
    assert store.get(job_id)["status"] == "running"
    assert [j["job_id"] for j in json.loads(web.get("/api/v1/jobs?paper_id=31452104")[1])["jobs"]] == []


class TokenServer(GunicornServer):
    """The server under ``PROGRESS_READ_AUTH=token``: it is up once its list answers the API token."""

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return self.get(f"/api/v1/jobs?limit=1&token={READ_API_TOKEN}")[0] == 200
        except OSError:
            return False


READ_API_TOKEN = "browser-api-token"
READ_SECRET = "browser-secret-key"


@pytest.fixture(scope="module")
def token_web(real_redis_url, module_key_prefix, tmp_path_factory):
    """The web server under ``PROGRESS_READ_AUTH=token``, its access log on, in a file of its own."""
    env = server_env(real_redis_url, module_key_prefix, PROGRESS_READ_AUTH="token", PROGRESS_SECRET_KEY=READ_SECRET,
                     PROGRESS_API_TOKEN=READ_API_TOKEN, PROGRESS_WEB_ACCESS_LOG="1")
    srv = TokenServer(env, log_path=tmp_path_factory.mktemp("token-web") / "gunicorn.log")
    yield srv
    srv.stop()


def read_token_of(job_id: str) -> str:
    from web import read_tokens

    return read_tokens.mint(READ_SECRET, "job", job_id)[0]


def test_under_read_auth_a_page_opened_with_a_read_token_goes_live_and_logs_no_token(
        token_web, store, page, video_file):
    paper = new_paper()
    job_id = start_job(store, paper)
    token = read_token_of(job_id)
    assert token_web.get(f"/status/{paper}/")[0] == 401
    page.goto(f"{token_web.base}/status/{paper}/?token={token}")
    wait_for_js(page, "document.getElementById('conn').textContent.startsWith('Live')", timeout=WAIT_MS)
    store.update(job_id, progress_percent=60, current_step=STEPS[3])
    wait_bar_at_least(page, 60)  # through the event stream, which took ?token=
    store.update(job_id, progress_percent=100, result={"video_url": video_file.as_uri(),
                                                       "video_path": str(video_file)})
    page.wait_for_selector("#video-box video", state="visible", timeout=WAIT_MS)
    assert page.get_attribute("#video", "src") == f"/api/v1/jobs/{job_id}/video?token={token}"
    wait_for_js(page, "document.getElementById('video').readyState >= 1", timeout=WAIT_MS)
    log = token_web.log_path.read_text(errors="replace")
    assert f"/api/v1/jobs/{job_id}/events?token=***" in log  # the stream was logged, its token not
    assert token not in log


class RecordingHandler(http.server.BaseHTTPRequestHandler):
    """Serves one video file and records each request's path and Referer (another origin's server)."""

    seen: list[tuple[str, str | None]] = []
    video: Path

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).seen.append((self.path, self.headers.get("Referer")))
        body = self.video.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_video_on_another_site_gets_neither_the_token_nor_the_pages_url(token_web, store, page, video_file):
    """What a page opened with ?token= tells another origin: Referrer-Policy same-origin sends no
    Referer there, and the page adds its token only to URLs of its own origin."""
    handler = type("Recorder", (RecordingHandler,), {"seen": [], "video": video_file})
    elsewhere = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
    try:
        paper = new_paper()
        job_id = start_job(store, paper)
        token = read_token_of(job_id)
        video = f"http://127.0.0.1:{elsewhere.server_port}/{paper}.mp4"
        store.update(job_id, progress_percent=100, result={"video_url": video})
        page.goto(f"{token_web.base}/status/{paper}/?token={token}")
        page.wait_for_selector("#video-box video", state="visible", timeout=WAIT_MS)
        assert page.get_attribute("#video", "src") == video
        wait_for_js(page, "document.getElementById('video').readyState >= 1", timeout=WAIT_MS)
        assert handler.seen, "the other site was never asked for the video"
        for path, referer in handler.seen:
            assert path == f"/{paper}.mp4" and referer is None, (path, referer)
    finally:
        elsewhere.shutdown()
        elsewhere.server_close()


# -- progress-client.js on a page of another origin ---------------------------------------------

# A page of another site: it imports progress-client.js from the service's origin and follows a
# job there. window.__follow(...) starts a follow and records what it hears.
OTHER_SITE_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>another site</title></head><body>
<p id="state">loading</p>
<script type="module">
import { follow } from "%(base)s/static/progress-client.js";
window.__follow = (url, options) => {
  const seen = { updates: [], modes: [], ended: null };
  follow(url, Object.assign({
    onUpdate: (snap, info) => seen.updates.push([snap.seq, snap.status, snap.progress_percent, info.source]),
    onMode: (mode) => seen.modes.push(mode),
    onEnd: (snap) => { seen.ended = snap ? snap.status : "unknown"; },
  }, options || {}));
  return seen;
};
window.__runs = [];
document.getElementById("state").textContent = "ready";
</script>
</body></html>
"""


@pytest.fixture
def other_site(web):
    """A tiny http.server on another port (another origin) serving OTHER_SITE_PAGE at /."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = (OTHER_SITE_PAGE % {"base": web.base}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def open_other_site(page, other_site: str) -> None:
    page.goto(other_site + "/")
    page.wait_for_selector("#state:text('ready')", timeout=WAIT_MS)  # the cross-origin import worked


def follow_from(page, url: str, **options) -> int:
    """Starts following ``url`` in the page; the run's index in window.__runs."""
    return page.evaluate("([url, options]) => window.__runs.push(window.__follow(url, options)) - 1",
                         [url, options])


def run_of(page, index: int) -> dict:
    return page.evaluate(f"window.__runs[{index}]")


def test_a_page_of_another_origin_follows_a_job_to_the_end_with_progress_client(web, store, page,
                                                                               other_site):
    job_id = start_job(store, new_paper(), percent=5)
    open_other_site(page, other_site)
    url = f"{web.base}/api/v1/jobs/{job_id}"
    run = follow_from(page, url)
    wait_for_js(page, "window.__runs[0].modes.includes('live') && window.__runs[0].updates.length >= 1")
    store.update(job_id, progress_percent=40, current_step=STEPS[2], message="speaking")
    store.update(job_id, progress_percent=30)  # refused (regression): never reaches the page
    store.update(job_id, progress_percent=70, current_step=STEPS[3])
    store.update(job_id, progress_percent=100)
    wait_for_js(page, "window.__runs[0].ended === 'completed'")
    seen = run_of(page, run)
    seqs = [u[0] for u in seen["updates"]]
    percents = [u[2] for u in seen["updates"]]
    assert seqs == sorted(set(seqs)) and percents == sorted(percents), seen
    assert percents[-1] == 100 and seen["updates"][-1][1] == "completed"
    assert {u[3] for u in seen["updates"]} == {"stream"}  # live all the way: no polling needed
    assert seen["modes"] == ["live", "ended"]

    # Following it again after the end, from its last event: the stream answers 204; one poll
    # reads the final snapshot and the follow ends.
    last_seq = store.get(job_id)["seq"]
    again = follow_from(page, url, lastEventId=last_seq)
    wait_for_js(page, f"window.__runs[{again}].ended === 'completed'")
    assert run_of(page, again)["updates"][-1][:2] == [last_seq, "completed"]


def test_with_its_stream_blocked_the_other_origin_page_polls_the_job_to_the_end(web, store, page,
                                                                                other_site):
    job_id = start_job(store, new_paper(), percent=10)
    open_other_site(page, other_site)
    page.route("**/events*", lambda route: route.abort())
    run = follow_from(page, f"{web.base}/api/v1/jobs/{job_id}", pollMs=200, retryMs=5000)
    wait_for_js(page, "window.__runs[0].modes.includes('polling') && window.__runs[0].updates.length >= 1")
    store.update(job_id, progress_percent=60, current_step=STEPS[3])
    wait_for_js(page, "window.__runs[0].updates.some(u => u[2] === 60)")
    store.update(job_id, status="failed", error="ffmpeg exited with 1")
    wait_for_js(page, "window.__runs[0].ended === 'failed'")
    seen = run_of(page, run)
    assert {u[3] for u in seen["updates"]} == {"poll"}
    assert [u[2] for u in seen["updates"]] == sorted(u[2] for u in seen["updates"])
    assert seen["modes"] == ["polling", "ended"]


@pytest.mark.parametrize(("narration", "shown"), [
    ("silent", "the video's sound track is silent: no espeak-ng"),
    ("espeak-ng", ""),  # a narrated one: the finished page shows no stale message
])
def test_a_video_with_a_silent_track_says_so_on_the_page(web, store, page, narration, shown):
    """The video pipeline found no speech (no espeak-ng, no espeakng-loader): its result says
    ``narration: silent`` and its last message why; the finished page shows that message."""
    paper = new_paper()
    job_id = start_job(store, paper, percent=50)
    store.update(job_id, message="the video's sound track is silent: no espeak-ng"
                 if narration == "silent" else "encoding")
    store.update(job_id, progress_percent=100, result={"narration": narration, "title": "A paper"})
    page.goto(f"{web.base}/status/{paper}/")
    page.wait_for_selector("#status-badge[data-status='completed']", timeout=WAIT_MS)
    assert page.text_content("#message") == shown


def test_under_read_auth_a_batch_page_opened_with_its_token_follows_every_member(token_web, store, page):
    from web import read_tokens

    batch_id = f"batch-{uuid.uuid4().hex[:8]}"
    job_ids = [f"{batch_id}-m{i}" for i in range(3)]
    store.create_batch(batch_id, job_ids, "video")
    for job_id in job_ids:
        store.create_job(job_id, new_paper(), steps=STEPS, batch_id=batch_id)
    token = read_tokens.mint(READ_SECRET, "batch", batch_id)[0]
    assert token_web.get(f"/batches/{batch_id}/")[0] == 401
    page.goto(f"{token_web.base}/batches/{batch_id}/?token={token}")
    wait_for_js(page, f"document.querySelectorAll('#members [data-job]').length === {len(job_ids)}")
    for job_id in job_ids:
        store.update(job_id, progress_percent=100)  # through the batch's stream, which took ?token=
    page.wait_for_selector("#status-badge[data-status='completed']", timeout=WAIT_MS)
    wait_bar_at_least(page, 100)
    wait_for_js(page, f"document.querySelectorAll(\"#members [data-job][data-status='completed']\").length"
                      f" === {len(job_ids)}")
    link = page.get_attribute("#members .member-paper", "href")
    assert link.endswith(f"/?token={token}")  # a member's page: the batch's token reads it
    assert token_web.get(link)[0] == 200
    assert token not in token_web.log_path.read_text(errors="replace")
