"""The real video pipeline, run as a subprocess the way the runner runs it."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import pytest

from progress_service.pipelines import PIPELINES, get_pipeline
from worker.parser import LineKind, LineSplitter, ProgressTracker, parse_line
from worker.pipelines.papers import UnknownPaperError, list_papers, load_paper

REPO = Path(__file__).resolve().parent.parent
FIVE = ["fetch-paper", "generate-script", "generate-audio", "generate-videos", "assemble-video"]


def run_video(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worker.pipelines.video", *args],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def lines_of(data: bytes) -> list[str]:
    splitter = LineSplitter()
    return splitter.feed(data) + splitter.close()


def ffmpeg_duration(video: Path) -> float:
    """The duration `ffmpeg -i` prints for ``video``, in seconds."""
    probe = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(video)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    match = re.search(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)", probe.stderr)
    assert match, probe.stderr
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def test_a_run_prints_the_five_steps_and_makes_an_mp4(tmp_path):
    out = tmp_path / "out"
    done = run_video("34265844", "--out", str(out), "--fast")
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0, stderr

    stdout = lines_of(done.stdout)
    assert [line for line in stdout if line.startswith("STEP")] == [
        f"STEP {i}/5 {name}" for i, name in enumerate(FIVE, start=1)
    ]
    bars = [p for p in map(parse_line, lines_of(done.stderr)) if p and p.kind is LineKind.BAR]
    assert bars and bars[-1].fraction == 1.0  # the frame renderer's tqdm bar, on stderr

    result = json.loads(stdout[-1])["result"]  # the last stdout line names the video
    video = Path(result["video_path"])
    assert video == out / "34265844.mp4" and video.is_file()
    assert result["video_url"] == video.as_uri()
    duration = ffmpeg_duration(video)
    assert duration > 1.0
    assert result["duration_seconds"] == pytest.approx(duration, abs=0.05)
    assert not (out / "frames").exists()  # work frames cleaned up
    script = json.loads((out / "script.json").read_text())
    assert (
        script["slides"][0]["body"] == "Highly accurate protein structure prediction with AlphaFold"
    )

    pipeline = get_pipeline("video")
    tracker = ProgressTracker(pipeline.steps, pipeline.weights)
    percents = []
    for line in stdout:
        update = tracker.feed(parse_line(line))
        if update is not None:
            percents.append(update.progress_percent)
    assert percents == sorted(percents)
    assert tracker.current_step == "assemble-video" and tracker.progress_percent < 100.0


def mean_volume(video: Path) -> float:
    """The mean volume of ``video``'s sound track in dB, by ffmpeg's ``volumedetect`` filter."""
    probe = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostats", "-i", str(video),
         "-map", "0:a:0", "-af", "volumedetect", "-f", "null", "-"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    match = re.search(r"mean_volume:\s*(-?[\d.]+|-inf) dB", probe.stderr)
    assert match, probe.stderr
    return float(match[1])


def without_espeak_program(tmp_path: Path) -> dict:
    """An environment whose PATH holds no ``espeak-ng`` (ffmpeg is the wheel's, by full path)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    return {"PATH": str(empty)}


def without_espeak_at_all(tmp_path: Path) -> dict:
    """No ``espeak-ng`` on PATH, and an ``espeakng_loader`` that fails to import, as when the
    wheel is not installed."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "espeakng_loader.py").write_text('raise ImportError("hidden by the test")\n')
    return {**without_espeak_program(tmp_path), "PYTHONPATH": str(hide)}


def test_without_espeak_ng_the_wheel_narrates_an_audible_track(tmp_path):
    """No espeak-ng program (this machine has none; PATH is emptied besides): the
    espeakng-loader wheel's library speaks, and the track is well above silence."""
    out = tmp_path / "out"
    done = run_video("34265844", "--out", str(out), "--fast", env=without_espeak_program(tmp_path))
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0, stderr
    assert "silent" not in stderr
    stdout = lines_of(done.stdout)
    last = json.loads(stdout[-1])
    assert last["result"]["narration"] == "espeakng-loader" and "message" not in last
    assert any(line.startswith("PROGRESS") and "speaking slide 1/" in line for line in stdout)
    assert len(list((out / "audio").glob("slide_*.wav"))) >= 2
    assert mean_volume(out / "34265844.mp4") > -60.0


def test_without_any_espeak_the_track_is_silent_and_says_so(tmp_path):
    out = tmp_path / "out"
    done = run_video("33301246", "--out", str(out), "--fast", env=without_espeak_at_all(tmp_path))
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0, stderr
    assert "espeak-ng not found: writing a silent track" in stderr
    assert not list((out / "audio").glob("*.wav"))
    assert ffmpeg_duration(out / "33301246.mp4") > 1.0
    assert mean_volume(out / "33301246.mp4") < -60.0
    stdout = lines_of(done.stdout)
    last = json.loads(stdout[-1])
    assert last["result"]["narration"] == "silent"
    assert "sound track is silent" in last["message"]  # the job's message (the runner reads it)
    parsed = parse_line(stdout[-1])
    assert parsed.result == last["result"] and parsed.message == last["message"]
    assert any("silent track (no espeak-ng)" in line for line in stdout if line.startswith("PROGRESS"))


def test_an_unknown_paper_fails_clearly(tmp_path):
    done = run_video("no-such-paper", "--out", str(tmp_path))
    assert done.returncode != 0
    last = done.stderr.decode().strip().splitlines()[-1]
    assert "unknown paper id 'no-such-paper'" in last
    assert "34265844" in last  # it names the ids there are
    assert done.stdout.decode().splitlines() == ["STEP 1/5 fetch-paper"]
    assert not list(tmp_path.glob("*.mp4"))


def test_help_describes_the_pipeline():
    done = run_video("--help")
    assert done.returncode == 0
    text = done.stdout.decode()
    assert "--fast" in text and "--out" in text and "assemble-video" in text and "34265844" in text


def test_the_registry():
    video = get_pipeline("video")
    assert list(video.steps) == FIVE and list(PIPELINES) == ["video"]
    assert len(video.weights) == 5 and all(w > 0 for w in video.weights)
    argv = video.command("34265844", "/tmp/out", "job-1")
    assert argv == [sys.executable, "-m", "worker.pipelines.video", "34265844", "--out", "/tmp/out"]
    with pytest.raises(ValueError, match="unknown pipeline 'audio': known pipelines are video"):
        get_pipeline("audio")


def test_the_bundled_papers_are_complete_records():
    papers = list_papers()
    assert 4 <= len(papers) <= 8
    assert len({p.pmid for p in papers}) == len(papers)
    for paper in papers:
        assert paper.pmid.isdigit() and paper.title and paper.journal and paper.authors
        assert 1900 < paper.year < 2100 and len(paper.abstract.split()) >= 20
        assert paper.source and paper.source.startswith("https://")
        assert load_paper(paper.pmid) == paper
    with pytest.raises(UnknownPaperError, match="the bundled set holds 34265844"):
        load_paper("123")


def test_a_job_whose_track_is_silent_says_so_in_its_message(store, settings, tmp_path):
    """Run by the runner, as a worker runs it: the completed job's message and result say
    the video has no sound."""
    from worker.runner import run_command

    video = get_pipeline("video")
    store.create_job("silent-video", "33301246", steps=list(video.steps))
    argv = [sys.executable, "-m", "worker.pipelines.video", "33301246", "--out", str(tmp_path / "out"),
            "--fast"]
    outcome = run_command(store, "silent-video", argv, steps=video.steps, weights=video.weights,
                          settings=settings, cwd=REPO,
                          env={**os.environ, **without_espeak_at_all(tmp_path)})
    assert outcome.status == "completed", outcome
    snap = store.get("silent-video")
    assert snap["result"]["narration"] == "silent"
    assert snap["message"].startswith("the video's sound track is silent: no espeak-ng")
