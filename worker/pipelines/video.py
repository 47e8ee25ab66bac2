"""The ``video`` pipeline: a bundled PubMed paper -> a narrated slide video (MP4).

    python -m worker.pipelines.video PAPER_ID --out DIR [--fast] [options]

Five steps, each announced on stdout as ``STEP i/5 <name>`` (the documented
"What the pipeline prints"; stdout is flushed line by line):

1. ``fetch-paper``      the record from the bundled offline set (worker/pipelines/papers.json)
                        -> DIR/paper.json. An unknown id fails here.
2. ``generate-script``  a title slide and a few slides of abstract sentences, each with the
                        text to narrate -> DIR/script.json
3. ``generate-audio``   speech per slide with ``espeak-ng`` when it is on PATH, else with the
                        library the ``espeakng-loader`` wheel ships (worker/pipelines/speech.py),
                        else a silent track of the same length (said on stderr, in the job's
                        message and in the result) -> DIR/narration.wav;
                        ``PROGRESS <pct> speaking slide i/n`` per slide
4. ``generate-videos``  PNG frames drawn with Pillow, a tqdm bar on stderr -> DIR/frames/
5. ``assemble-video``   frames + narration -> DIR/<pmid>.mp4 with the ffmpeg binary that the
                        imageio-ffmpeg wheel ships (libx264 + aac, yuv420p);
                        ``PROGRESS <pct> encoding`` while ffmpeg works. The MP4 is then
                        checked: ffmpeg must report a positive duration.

The result
    On success the LAST line on stdout is one JSON object, and the exit status is 0::

        {"result": {"video_url": "file:///abs/DIR/34265844.mp4", "video_path": "/abs/DIR/34265844.mp4",
                    "duration_seconds": 41.6, "pmid": "34265844", "title": "...",
                    "narration": "espeak-ng"}}

    ``narration`` is what spoke: ``espeak-ng`` (the program), ``espeakng-loader`` (the
    wheel's library) or ``silent``; a silent video's line also carries a ``message``
    saying so, which becomes the job's message.

    A runner reads it with ``worker.parser.parse_line`` (``ParsedLine.result``) or as plain
    JSON. 100% is never printed: the job is complete when the process exits 0.

Errors
    Any failure prints ``video pipeline: <step>: <what went wrong>`` as the last line on
    stderr and exits 1; an unknown or invalid paper id exits 65 (``EX_DATAERR``: a retry
    would fail the same way, so none is made), argparse's usage errors 2.

Resuming
    The pipeline is ``resumable``: after each step it records the step's output files
    (size, SHA-256) and state in DIR/checkpoints.json (worker/pipelines/checkpoints.py),
    and a run that starts in a folder where a step's checkpoint holds skips that step,
    printing ``{"message": "skipped <step>: its output is there"}`` instead of its ``STEP``
    line. A retry runs in a copy of the failed attempt's folder (worker/resume.py), so it
    goes on from the step that failed. The last step is never skipped.

Fault injection (for tests)
    ``VIDEO_PIPELINE_FAIL_AT=<step>`` in the environment makes the run fail (exit 1) when
    it reaches that step, after the steps before it have completed and been recorded:
    how the tests make a job fail at ``generate-videos`` and then retry it. Nothing else
    reads it; leave it unset.

Speed
    Defaults stay small (640x360, 3 fps, at most 6 text slides). ``--fast``, or the
    environment variable ``VIDEO_PIPELINE_FAST=1``, makes a run of a couple of seconds
    for tests: 320x180, 2 fps, 2 text slides, quicker speech.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from progress_service.config import positive_int
from progress_service.models import ID_RULE, is_valid_id
from progress_service.pipelines import get_pipeline
from worker.pipelines.checkpoints import Checkpoints
from worker.pipelines.papers import Paper, UnknownPaperError, list_papers, load_paper
from worker.pipelines.slides import Slide, render_slide
from worker.pipelines.speech import SAMPLE_RATE, SpeechError, find_voice

if TYPE_CHECKING:  # Pillow itself is imported where it is used, as before
    from PIL import Image

__all__ = ["STEPS", "WEIGHTS", "PipelineError", "main", "overall_percent"]

# The steps and their weights live in the registry (worker/pipelines/__init__.py).
STEPS: tuple[str, ...] = get_pipeline("video").steps
WEIGHTS: tuple[float, ...] = get_pipeline("video").weights or (1.0,) * len(STEPS)

FAST_ENV = "VIDEO_PIPELINE_FAST"
FAIL_AT_ENV = "VIDEO_PIPELINE_FAIL_AT"  # a test hook: the run fails when it reaches this step
EX_DATAERR = 65  # sysexits: the input is bad (an unknown paper); a retry would fail the same way
PAUSE_SECONDS = 0.4  # silence after each slide's narration
SILENT_HINT = "install espeak-ng, or the espeakng-loader wheel, for a narrated video"
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")
_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")


class PipelineError(Exception):
    """A step failed for a reason worth telling the user in one line."""


class InvalidPaper(PipelineError):
    """The paper id itself is wrong: the run exits ``EX_DATAERR`` (65), which is not retried."""


def overall_percent(step: str, fraction: float) -> float:
    """Overall percent at ``fraction`` (0..1) of ``step``, by the steps' weights."""
    index = STEPS.index(step)
    start = sum(WEIGHTS[:index])
    return round((start + WEIGHTS[index] * min(max(fraction, 0.0), 1.0)) * 100 / sum(WEIGHTS), 1)


@dataclass
class Run:
    paper_id: str
    out: Path
    fps: int
    width: int
    height: int
    max_slides: int
    speech_rate: int
    silent: bool
    keep_frames: bool
    paper: Paper | None = None
    slides: list[Slide] = field(default_factory=list)
    narration: Path | None = None
    frames: Path | None = None
    frame_count: int = 0
    video: Path | None = None
    duration: float = 0.0
    narrated_by: str | None = None  # the voice's name; None: a silent track


def say(line: str) -> None:
    """One progress line on stdout, flushed at once so the runner sees it now."""
    print(line, flush=True)


def warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- 1. fetch-paper -------------------------------------------------------------------


def fetch_paper(run: Run) -> None:
    if not is_valid_id(run.paper_id):
        raise InvalidPaper(f"invalid paper id {run.paper_id!r}: ids match {ID_RULE}")
    run.paper = load_paper(run.paper_id)
    (run.out / "paper.json").write_text(
        json.dumps(run.paper.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    say(json.dumps({"message": f"fetched PMID {run.paper.pmid}: {run.paper.title}"}))


# -- 2. generate-script ---------------------------------------------------------------


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END_RE.split(text.strip()) if s.strip()]


def build_slides(paper: Paper, max_slides: int, words_per_slide: int = 45) -> list[Slide]:
    """A title slide, then up to ``max_slides`` slides of whole abstract sentences."""
    slides = [
        Slide(
            heading=f"{paper.journal} · {paper.year}",
            body=paper.title,
            narration=f"{paper.title}. By {paper.byline}. {paper.journal}, {paper.year}.",
            footer=f"{paper.byline} · PMID {paper.pmid}",
        )
    ]
    groups: list[list[str]] = []
    for sentence in split_sentences(paper.abstract):
        words = len(sentence.split())
        if groups and sum(len(s.split()) for s in groups[-1]) + words <= words_per_slide:
            groups[-1].append(sentence)
        elif len(groups) < max_slides:
            groups.append([sentence])
        else:
            break
    for number, group in enumerate(groups, start=1):
        body = " ".join(group)
        slides.append(
            Slide(
                heading=f"Abstract {number}/{len(groups)}",
                body=body,
                narration=body.replace("…", "").strip(),
                footer=f"PMID {paper.pmid} · {paper.journal} {paper.year}",
            )
        )
    return slides


def generate_script(run: Run) -> None:
    assert run.paper is not None
    run.slides = build_slides(run.paper, run.max_slides)
    script = {
        "pmid": run.paper.pmid,
        "title": run.paper.title,
        "slides": [
            {"index": i, "heading": s.heading, "body": s.body, "narration": s.narration,
             "footer": s.footer}
            for i, s in enumerate(run.slides, start=1)
        ],
    }
    (run.out / "script.json").write_text(
        json.dumps(script, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    say(json.dumps({"message": f"script: {len(run.slides)} slides"}))


# -- 3. generate-audio ----------------------------------------------------------------


def _silence(seconds: float) -> bytes:
    return b"\x00\x00" * int(round(seconds * SAMPLE_RATE))


def _read_pcm(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, SAMPLE_RATE):
            raise PipelineError(
                f"{path.name}: expected 16-bit mono {SAMPLE_RATE} Hz, got "
                f"{w.getsampwidth() * 8}-bit, {w.getnchannels()} channel(s), {w.getframerate()} Hz"
            )
        return w.readframes(w.getnframes())


def generate_audio(run: Run) -> None:
    voice = None if run.silent else find_voice()
    run.narrated_by = voice.name if voice is not None else None
    if voice is None and not run.silent:
        warn(f"espeak-ng not found: writing a silent track ({SILENT_HINT})")
    audio = run.out / "audio"
    audio.mkdir(exist_ok=True)
    pcm = bytearray()
    for number, slide in enumerate(run.slides, start=1):
        if voice is not None:
            target = audio / f"slide_{number:02d}.wav"
            voice.speak(slide.narration, run.speech_rate, target)
            speech = _read_pcm(target)
        else:  # as long as the words would take to say
            speech = _silence(max(1.5, len(slide.narration.split()) * 60.0 / run.speech_rate))
        speech += _silence(PAUSE_SECONDS)
        slide.seconds = len(speech) / 2 / SAMPLE_RATE
        pcm += speech
        pct = overall_percent("generate-audio", number / len(run.slides))
        doing = "speaking slide" if voice is not None else "silent track (no espeak-ng): slide"
        say(f"PROGRESS {pct} {doing} {number}/{len(run.slides)}")
    run.narration = run.out / "narration.wav"
    with wave.open(str(run.narration), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(bytes(pcm))
    run.duration = len(pcm) / 2 / SAMPLE_RATE


# -- 4. generate-videos ---------------------------------------------------------------


def generate_videos(run: Run) -> None:
    from PIL import ImageDraw
    from tqdm import tqdm

    run.frames = run.out / "frames"
    if run.frames.exists():
        shutil.rmtree(run.frames)
    run.frames.mkdir()
    run.frame_count = max(1, math.ceil(run.duration * run.fps))
    ends = []
    elapsed = 0.0
    for slide in run.slides:
        elapsed += slide.seconds
        ends.append(elapsed)
    bases: dict[int, Image.Image] = {}
    strip = max(2, run.height // 90)
    bar = tqdm(
        total=run.frame_count,
        desc="generate-videos",
        unit="frame",
        file=sys.stderr,
        ncols=80,
        mininterval=0.1,
    )
    with bar:
        slide_index = 0
        for frame in range(run.frame_count):
            t = frame / run.fps
            while slide_index < len(ends) - 1 and t >= ends[slide_index]:
                slide_index += 1
            if slide_index not in bases:
                bases[slide_index] = render_slide(
                    run.slides[slide_index], slide_index + 1, len(run.slides), run.width, run.height
                )
            image = bases[slide_index].copy()
            draw = ImageDraw.Draw(image)
            done = int(run.width * min(1.0, (frame + 1) / run.frame_count))
            draw.rectangle((0, run.height - strip, done, run.height), fill=(127, 179, 255))
            image.save(run.frames / f"frame_{frame + 1:05d}.png", compress_level=1)
            bar.update(1)


# -- 5. assemble-video ----------------------------------------------------------------


def _ffmpeg() -> str:
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise PipelineError("imageio-ffmpeg is not installed: pip install imageio-ffmpeg") from exc
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:
        raise PipelineError(f"no ffmpeg binary: {exc}") from exc


def _video_codec(ffmpeg: str) -> list[str]:
    encoders = subprocess.run(
        [ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30
    ).stdout
    if re.search(r"^\s*V\S*\s+libx264\s", encoders, re.MULTILINE):
        return ["-c:v", "libx264", "-preset", "veryfast", "-tune", "stillimage"]
    warn("ffmpeg has no libx264: encoding with mpeg4")
    return ["-c:v", "mpeg4", "-q:v", "5"]


def probe_duration(ffmpeg: str, video: Path) -> float | None:
    """The duration ffmpeg reports for ``video`` in seconds, or None if it reports none."""
    probe = subprocess.run(
        [ffmpeg, "-hide_banner", "-i", str(video)], capture_output=True, text=True, timeout=30
    )
    match = _DURATION_RE.search(probe.stderr)
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def assemble_video(run: Run) -> None:
    assert run.paper is not None and run.frames is not None and run.narration is not None
    ffmpeg = _ffmpeg()
    run.video = run.out / f"{run.paper.pmid}.mp4"
    argv = [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-nostats", "-y",
        "-framerate", str(run.fps), "-i", str(run.frames / "frame_%05d.png"),
        "-i", str(run.narration),
        *_video_codec(ffmpeg), "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "96k",
        "-shortest", "-movflags", "+faststart",
        "-progress", "pipe:1",
        str(run.video),
    ]  # fmt: skip
    last = None
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True)
        assert process.stdout is not None
        for line in process.stdout:  # ffmpeg's -progress: key=value lines
            key, _, value = line.strip().partition("=")
            if key in ("out_time_us", "out_time_ms") and value.isdigit() and run.duration > 0:
                fraction = int(value) / 1e6 / run.duration
                pct = overall_percent("assemble-video", min(fraction, 1.0) * 0.9)
                if pct != last:
                    say(f"PROGRESS {pct} encoding")
                    last = pct
        status = process.wait()
        errors.seek(0)
        detail = errors.read().decode("utf-8", "replace").strip()
    if status != 0:
        raise PipelineError(f"ffmpeg exited with status {status}: {detail[-500:] or 'no message'}")
    duration = probe_duration(ffmpeg, run.video) if run.video.exists() else None
    if not duration or duration <= 0:
        raise PipelineError(f"ffmpeg wrote no playable video at {run.video}")
    run.duration = duration
    if not run.keep_frames:
        shutil.rmtree(run.frames, ignore_errors=True)


# -- the run --------------------------------------------------------------------------


def outputs(run: Run, step: str) -> tuple[list[Path], dict]:
    """What ``step`` wrote (its checkpoint's files) and what later steps need of it (its state)."""
    out = run.out
    if step == "fetch-paper":
        return [out / "paper.json"], {}
    if step == "generate-script":
        return [out / "script.json"], {}
    if step == "generate-audio":
        assert run.narration is not None
        return [run.narration], {"seconds": [s.seconds for s in run.slides], "duration": run.duration,
                                 "narrated_by": run.narrated_by}
    if step == "generate-videos":
        assert run.frames is not None
        return sorted(run.frames.glob("frame_*.png")), {"frame_count": run.frame_count}
    assert run.video is not None
    return [run.video], {"duration": run.duration}


def restore(run: Run, step: str, state: dict) -> bool:
    """Take ``step``'s output from the folder as if the step had just run (its checkpoint
    holds); False if it cannot be read back after all (the step runs again)."""
    try:
        if step == "fetch-paper":
            fields = json.loads((run.out / "paper.json").read_text(encoding="utf-8"))
            run.paper = Paper(**{**fields, "authors": tuple(fields["authors"])})
        elif step == "generate-script":
            slides = json.loads((run.out / "script.json").read_text(encoding="utf-8"))["slides"]
            run.slides = [Slide(s["heading"], s["body"], s["narration"], s.get("footer", "")) for s in slides]
        elif step == "generate-audio":
            if len(state["seconds"]) != len(run.slides):
                return False
            for slide, seconds in zip(run.slides, state["seconds"], strict=True):
                slide.seconds = float(seconds)
            run.narration, run.duration = run.out / "narration.wav", float(state["duration"])
            run.narrated_by = state.get("narrated_by")
        elif step == "generate-videos":
            run.frames, run.frame_count = run.out / "frames", int(state["frame_count"])
        else:
            return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True

STEP_FUNCTIONS: tuple[tuple[str, Callable[[Run], None]], ...] = (
    ("fetch-paper", fetch_paper),
    ("generate-script", generate_script),
    ("generate-audio", generate_audio),
    ("generate-videos", generate_videos),
    ("assemble-video", assemble_video),
)
assert tuple(name for name, _ in STEP_FUNCTIONS) == STEPS


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 640x360, got {text!r}")
    width, height = int(match[1]), int(match[2])
    if width < 64 or height < 64 or width % 2 or height % 2 or width > 3840 or height > 2160:
        raise argparse.ArgumentTypeError(
            f"{text}: width and height must be even, within 64..3840 x 64..2160"
        )
    return width, height


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    try:
        bundled = ", ".join(p.pmid for p in list_papers())
    except (OSError, ValueError, KeyError):
        bundled = "(papers.json unreadable)"
    parser = argparse.ArgumentParser(
        prog="python -m worker.pipelines.video",
        description=(
            "Turn a bundled PubMed paper into a narrated slide video (MP4). Prints "
            "'STEP i/5 <name>' and 'PROGRESS <pct> <message>' lines on stdout and a tqdm "
            'bar on stderr; the last stdout line is {"result": {"video_url": ...}}.'
        ),
        epilog=(
            f"steps: {', '.join(STEPS)}. Bundled paper ids: {bundled}. "
            f"{FAST_ENV}=1 in the environment has the effect of --fast."
        ),
    )
    parser.add_argument("paper_id", metavar="PAPER_ID", help="a PubMed id from the bundled set")
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="folder for the work files and DIR/<PAPER_ID>.mp4 (created if missing)",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="a tiny, quick video (320x180, 2 fps, 2 text slides): for tests",
    )
    parser.add_argument("--fps", type=positive_int, help="frames per second (default 3; --fast 2)")
    parser.add_argument(
        "--size",
        type=_size,
        metavar="WxH",
        help="frame size, even numbers (default 640x360; --fast 320x180)",
    )
    parser.add_argument(
        "--max-slides",
        type=positive_int,
        metavar="N",
        help="text slides after the title slide (default 6; --fast 2)",
    )
    parser.add_argument(
        "--speech-rate",
        type=positive_int,
        metavar="WPM",
        help="espeak-ng words per minute (default 175; --fast 300)",
    )
    parser.add_argument(
        "--silent", action="store_true", help="a silent track even when espeak-ng is installed"
    )
    parser.add_argument(
        "--keep-frames", action="store_true", help="keep DIR/frames/ after the MP4 is written"
    )
    args = parser.parse_args(argv)
    fast = args.fast or os.environ.get(FAST_ENV, "").strip() not in ("", "0")
    args.fps = args.fps or (2 if fast else 3)
    args.size = args.size or ((320, 180) if fast else (640, 360))
    args.max_slides = args.max_slides or (2 if fast else 6)
    args.speech_rate = args.speech_rate or (300 if fast else 175)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(
        paper_id=args.paper_id,
        out=args.out.resolve(),
        fps=args.fps,
        width=args.size[0],
        height=args.size[1],
        max_slides=args.max_slides,
        speech_rate=args.speech_rate,
        silent=args.silent,
        keep_frames=args.keep_frames,
    )
    step = STEPS[0]
    try:
        run.out.mkdir(parents=True, exist_ok=True)
        checkpoints = Checkpoints(run.out, {"paper_id": run.paper_id, "fps": run.fps, "size": [run.width, run.height],
                                            "max_slides": run.max_slides, "speech_rate": run.speech_rate,
                                            "silent": run.silent})
        resuming = True
        for number, (step, function) in enumerate(STEP_FUNCTIONS, start=1):
            state = checkpoints.holds(step) if resuming and step != STEPS[-1] else None
            if state is not None and restore(run, step, state):
                say(json.dumps({"message": f"skipped {step}: its output is there"}))
                continue
            resuming = False
            say(f"STEP {number}/{len(STEPS)} {step}")
            if os.environ.get(FAIL_AT_ENV) == step:
                raise PipelineError(f"failure injected at {step} ({FAIL_AT_ENV})")
            function(run)
            checkpoints.record(step, *outputs(run, step))
        assert run.video is not None and run.paper is not None
        last: dict = {"result": {
            "video_url": run.video.as_uri(),
            "video_path": str(run.video),
            "duration_seconds": round(run.duration, 2),
            "pmid": run.paper.pmid,
            "title": run.paper.title,
            "narration": run.narrated_by or "silent",
        }}  # fmt: skip
        if run.narrated_by is None:
            last["message"] = "the video's sound track is silent: " + (
                "--silent was given" if run.silent else f"no espeak-ng ({SILENT_HINT})")
        say(json.dumps(last))
        return 0
    except KeyboardInterrupt:
        warn(f"video pipeline: {step}: interrupted")
        return 130
    except BrokenPipeError:  # whoever read our output went away
        return 1
    except (InvalidPaper, UnknownPaperError) as exc:  # the input: no retry will help
        warn(f"video pipeline: {step}: {exc}")
        return EX_DATAERR
    except (PipelineError, SpeechError, OSError, subprocess.SubprocessError) as exc:
        warn(f"video pipeline: {step}: {exc}")
        return 1
    except Exception as exc:  # a bug: the traceback for us, one clear line for the user
        traceback.print_exc()
        warn(f"video pipeline: {step}: unexpected {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
