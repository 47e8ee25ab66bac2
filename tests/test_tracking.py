"""``store.track``: reporting progress from any Python code (README, "Reporting from anywhere").

Every test runs on fakeredis and on the real Redis. The outage tests take Redis away
mid-block: the real one behind the suite's TcpProxy (``down()`` cuts every connection
and refuses new ones, as a crashed server would), fakeredis by its ``connected`` switch.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
import tqdm
from helpers import REPO, cli_env, wait_until
from tcp_proxy import TcpProxy

from progress_service import InvalidInput, ProgressStore
from progress_service.store import connect
from progress_service.tracking import PERCENT_CAP


def percents(store: ProgressStore, job_id: str) -> list[float]:
    return [e["progress_percent"] for e in store.history(job_id)]


def test_the_block_creates_the_job_runs_it_and_completes_it(store):
    with store.track("job-1", "paper-1", ["fetch", "work", "upload"]) as job:
        snap = store.get("job-1")
        assert (snap["status"], snap["paper_id"], snap["pipeline"]) == ("running", "paper-1", "tracked")
        assert snap["steps"] == ["fetch", "work", "upload"]
        job.step("fetch")
        job.progress(20, message="fetched half")
        job.step("work", message="working")
        job.result = {"rows": 42}
    assert job.wait(5)
    snap = store.get("job-1")
    assert snap["status"] == "completed"
    assert snap["progress_percent"] == 100
    assert snap["completed_steps"] == ["fetch", "work", "upload"]
    assert snap["result"] == {"rows": 42}
    assert snap["message"] == "working"
    steps_seen = [e["current_step"] for e in store.history("job-1")]
    assert steps_seen.index("fetch") < steps_seen.index("work")
    assert percents(store, "job-1") == sorted(percents(store, "job-1"))


def test_an_existing_job_is_joined_not_created_again(store):
    store.create_job("job-1", "paper-1", steps=["a", "b"], pipeline="nightly")
    with store.track("job-1", "paper-1", ["a", "b"]) as job:
        job.step("b")
    assert job.wait(5)
    snap = store.get("job-1")
    assert (snap["status"], snap["pipeline"], snap["seq"]) == ("completed", "nightly", 4)


def test_an_exception_fails_the_job_with_its_text_and_goes_on(store):
    with pytest.raises(ZeroDivisionError), store.track("job-1", "paper-1", ["a", "b"]) as job:
        job.step("b")
        1 / 0  # noqa: B018
    assert job.wait(5)
    snap = store.get("job-1")
    assert snap["status"] == "failed"
    assert snap["error"] == "ZeroDivisionError: division by zero"
    assert snap["current_step"] == "b"


def test_ctrl_c_cancels_the_job(store):
    with pytest.raises(KeyboardInterrupt), store.track("job-1", "paper-1", ["a"]) as job:
        raise KeyboardInterrupt
    assert job.wait(5)
    assert store.get("job-1")["status"] == "canceled"


def test_a_mistake_in_the_callers_code_raises_at_once(store):
    with store.track("job-1", "paper-1", ["a", "b"]) as job:
        with pytest.raises(InvalidInput, match="not one of a, b"):
            job.step("c")
        with pytest.raises(InvalidInput, match="0 to 100"):
            job.progress(150)
        with pytest.raises(InvalidInput, match="0 to 100"):
            job.progress(float("nan"))
    with pytest.raises(InvalidInput, match="weights"):
        store.track("job-2", "paper-1", ["a", "b"], weights=[1])
    assert job.wait(5)
    assert store.get("job-1")["status"] == "completed"


def test_tqdm_bars_report_their_share_of_the_step_and_never_move_back(store):
    """Steps a, b, c weighted 1, 2, 1: b owns 25..75. Two bars over b (the second starts
    again from 0), a bar of step a after b has begun, one bar drawn off a terminal and one
    without a total: the percent only ever goes up, and nothing is refused as a regression."""
    with store.track("job-1", "paper-1", ["a", "b", "c"], weights=[1, 2, 1]) as job:
        job.step("a")
        job.progress(10)
        first = job.tqdm(range(40), step="b", mininterval=0)
        assert isinstance(first, tqdm.tqdm)
        for i in first:
            if i == 20:
                assert wait_until(lambda: store.get("job-1")["progress_percent"] >= 49,
                                  what="step b half done: 25 + 50 x 20/40")
        assert store.get("job-1")["current_step"] == "b"
        for _ in job.tqdm(range(10), step="b", mininterval=0):  # starts again at 0: no move back
            pass
        for _ in job.tqdm(range(10), step="a", mininterval=0):  # step a is over: moves nothing
            pass
        with job.tqdm(total=8, step="c", disable=True) as bar:  # no display: reports all the same
            for _ in range(6):
                bar.update(1)
        assert wait_until(lambda: store.get("job-1")["progress_percent"] == 93.75,
                          what="step c at 6/8: 75 + 25 x 0.75")
        for _ in job.tqdm(iter(range(5))):  # no total: draws, reports nothing
            pass
    assert job.wait(5)
    seen = percents(store, "job-1")
    assert seen == sorted(seen), seen
    assert 75 in seen and seen[-1] == 100
    assert all(p <= PERCENT_CAP for p in seen[:-1])
    assert store.stats["regression"] == 0


def test_a_full_bar_over_the_last_step_does_not_complete_the_job_before_the_block_ends(store):
    with pytest.raises(RuntimeError), store.track("job-1", "paper-1", ["a"]) as job:
        for _ in job.tqdm(range(3), mininterval=0):
            pass
        assert wait_until(lambda: store.get("job-1")["progress_percent"] == PERCENT_CAP)
        assert store.get("job-1")["status"] == "running"
        raise RuntimeError("the upload failed")
    assert job.wait(5)
    assert store.get("job-1")["status"] == "failed"


def test_a_heartbeat_runs_while_the_block_runs(store):
    # settings: PROGRESS_WORKER_LOST_AFTER=3, so a heartbeat every second
    with store.track("job-1", "paper-1", ["a"]) as job:
        assert wait_until(lambda: store.get("job-1")["heartbeat_at"], timeout=5,
                          what="a heartbeat")
    assert job.wait(5)


def test_a_job_the_store_lost_is_recreated_above_its_last_seq(store):
    with store.track("job-1", "paper-1", ["a", "b"]) as job:
        job.step("b")
        assert wait_until(lambda: store.get("job-1")["current_step"] == "b")
        seq = store.get("job-1")["seq"]
        store.client.delete(store.keys.job("job-1"), store.keys.history("job-1"))  # Redis restarted empty
        job.progress(80)
        snap = wait_until(lambda: store.get("job-1"), what="the job re-created")
        assert snap["seq"] > seq
        assert snap["current_step"] == "b"
    assert job.wait(5)
    assert store.get("job-1")["status"] == "completed"


# -- Redis away ---------------------------------------------------------------------


@dataclasses.dataclass
class Outage:
    store: ProgressStore  # the tracker's, through what goes down
    reader: ProgressStore | None  # reads past the outage (None: nothing can, on fakeredis)
    down: Callable[[], None]
    up: Callable[[], None]


@pytest.fixture
def outage(store, settings) -> Iterator[Outage]:
    if store.settings.redis_url.startswith("redis://127.0.0.1:1/"):  # [fake]
        server = store.client.connection_pool.connection_kwargs["server"]
        yield Outage(store, None, lambda: setattr(server, "connected", False),
                     lambda: setattr(server, "connected", True))
        return
    proxy = TcpProxy(settings.redis_url)
    proxy.up()
    proxied = dataclasses.replace(settings, redis_url=proxy.url, progress_redis_url=proxy.url)
    through = ProgressStore(connect(proxied), proxied)
    try:
        yield Outage(through, store, proxy.down, proxy.up)
    finally:
        proxy.down()
        through.client.close()


@pytest.mark.parametrize("outcome", ["completed", "failed"])
def test_an_outage_inside_the_block_never_raises_and_the_final_state_lands_after(outage, outcome):
    """Redis goes away mid-block: the block's calls, its tqdm bar and its end raise nothing
    and block no longer than ``timeout``; once Redis is back, the state reached meanwhile and
    the final state are written, with nothing going back."""
    store = outage.store
    try:
        with store.track("job-1", "paper-1", ["a", "b"], timeout=0.3) as job:
            job.step("a")
            assert wait_until(lambda: store.get("job-1")["current_step"] == "a")
            outage.down()
            job.progress(30, message="during the outage")
            for _ in job.tqdm(range(20), step="b", mininterval=0):
                pass
            if outcome == "failed":
                raise OSError("the disk is full")
    except OSError:
        assert outcome == "failed"
    assert not job.wait(0), "the final state cannot have landed: Redis is away"
    if outage.reader is not None:
        snap = outage.reader.get("job-1")
        assert (snap["status"], snap["current_step"]) == ("running", "a")
    outage.up()
    assert job.wait(10), "the final state is written once Redis answers"
    reader = outage.reader or store
    snap = reader.get("job-1")
    assert snap["status"] == outcome
    if outcome == "failed":
        assert snap["error"] == "OSError: the disk is full"
        assert snap["current_step"] == "b" and snap["progress_percent"] == PERCENT_CAP
    assert snap["message"] == "during the outage"
    seen = percents(reader, "job-1")
    assert seen == sorted(seen)


def test_redis_away_from_the_start_the_job_is_created_when_it_answers(outage):
    outage.down()
    with outage.store.track("job-1", "paper-1", ["a", "b"], timeout=0.2) as job:
        job.step("b")
    assert not job.wait(0)
    outage.up()
    assert job.wait(10)
    snap = (outage.reader or outage.store).get("job-1")
    assert (snap["status"], snap["completed_steps"]) == ("completed", ["a", "b"])


def test_importing_the_package_does_not_import_tqdm():
    code = "import sys, progress_service; assert 'tqdm' not in sys.modules, 'tqdm imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)



SCRIPT = """
import sys
from progress_service import ProgressStore

store = ProgressStore.from_env()
with store.track("job-1", "paper-1", ["a", "b"], timeout=0.2) as job:
    print("in", flush=True)
    sys.stdin.readline()  # the test takes Redis away meanwhile
    job.step("b")
print("left", flush=True)
"""


@pytest.mark.parametrize("away", ["down", "partitioned"])
def test_a_script_that_ends_during_an_outage_waits_for_its_final_state_within_a_bound(
        settings, real_redis, tmp_path, away):
    """Redis down when the script's block ends: the script's exit waits until Redis is back
    and the job is completed. Partitioned (a socket that never answers, no timeout on it):
    the exit still comes, after PROGRESS_WORKER_LOST_AFTER seconds, the job left as it was."""
    proxy = TcpProxy(settings.redis_url)
    proxy.up()
    env = cli_env(settings, REDIS_URL=proxy.url, PROGRESS_WORKER_LOST_AFTER="2")
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader = ProgressStore(real_redis, settings)
    try:
        assert proc.stdout.readline() == "in\n", proc.stderr.read()
        assert reader.get("job-1")["status"] == "running"
        proxy.down() if away == "down" else proxy.blackhole()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "left\n", proc.stderr.read()
        if away == "down":
            assert proc.poll() is None, "the script waits for its final state"
            proxy.up()
        assert proc.wait(30) == 0, proc.stderr.read()
        snap = reader.get("job-1")
        if away == "down":
            assert (snap["status"], snap["completed_steps"]) == ("completed", ["a", "b"])
        else:
            assert (snap["status"], snap["current_step"]) == ("running", None)
            assert "is not written" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
        proxy.heal()
        proxy.down()


def test_a_job_canceled_meanwhile_stays_canceled_and_the_block_can_tell(store):
    with store.track("job-1", "paper-1", ["a", "b"]) as job:
        job.step("a")
        assert wait_until(lambda: store.get("job-1")["current_step"] == "a")
        assert store.update("job-1", status="canceled").accepted  # POST .../cancel, say
        job.progress(50)
        assert wait_until(lambda: job.ended_elsewhere, what="the tracker to notice the cancel")
        job.step("b")
    assert job.wait(5)
    assert store.get("job-1")["status"] == "canceled"
    assert "b" not in [e["current_step"] for e in store.history("job-1")]


def test_tqdm_is_a_core_dependency():
    """``job.tqdm`` must work wherever the package does: an extra left out would fail the
    job inside its block (ModuleNotFoundError) after it was created and marked running.
    tqdm is pure Python with no dependencies of its own, so the core carries it."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(re.match(r"tqdm\b", dep) for dep in project["dependencies"])
