"""worker.parser as pure functions, on output captured from real processes (tests/data/).

The fixtures come from tests/data/capture_fixtures.py: a real tqdm loop, a small script
whose stdout and stderr share one pipe, and a run of the video pipeline itself.
"""

import json
import random
import tracemalloc
from pathlib import Path

import pytest

from progress_service.pipelines import get_pipeline
from worker.parser import (
    LineKind,
    LineSplitter,
    ParsedLine,
    ProgressTracker,
    TrackerUpdate,
    parse_line,
)

DATA = Path(__file__).parent / "data"


def split(data: bytes, chunk_sizes=None, **kwargs) -> list[str]:
    """The lines of ``data`` fed through a LineSplitter in chunks of the given sizes."""
    splitter = LineSplitter(**kwargs)
    lines: list[str] = []
    position = 0
    for size in chunk_sizes or [len(data)]:
        lines += splitter.feed(data[position : position + size])
        position += size
    lines += splitter.feed(data[position:])
    return lines + splitter.close()


def random_chunks(data: bytes, seed: int) -> list[int]:
    rng = random.Random(seed)
    sizes, total = [], 0
    while total < len(data):
        sizes.append(rng.randint(1, 40))
        total += sizes[-1]
    return sizes


def track(lines: list[str], steps, weights=None) -> tuple[ProgressTracker, list[TrackerUpdate]]:
    tracker = ProgressTracker(steps, weights)
    updates = [u for u in (tracker.feed(parse_line(line)) for line in lines) if u is not None]
    return tracker, updates


# -- real captured output -------------------------------------------------------------


def test_a_real_tqdm_run_rises_and_never_falls():
    data = (DATA / "tqdm_run.bin").read_bytes()
    assert b"\r" in data and b"%|" in data  # a real redrawn bar, not a hand-written one
    lines = split(data)
    bars = [p for p in map(parse_line, lines) if p is not None]
    assert all(p.kind is LineKind.BAR for p in bars)
    fractions = [p.fraction for p in bars]
    assert len(fractions) >= 40  # mininterval=0: one redraw per item
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert fractions == sorted(fractions)

    tracker, updates = track(lines, ["frames"])
    percents = [u.progress_percent for u in updates]
    assert percents == sorted(percents) and len(set(percents)) > 30  # moves smoothly
    assert 99.0 < tracker.progress_percent < 100.0  # the bar never completes the job
    assert tracker.current_step == "frames"


@pytest.mark.parametrize("seed", range(5))
def test_chunk_boundaries_do_not_change_the_lines(seed):
    for name in ("tqdm_run.bin", "interleaved.bin", "video_run.bin"):
        data = (DATA / name).read_bytes()
        assert split(data, random_chunks(data, seed)) == split(data)
        assert split(data, [1] * len(data)) == split(data)  # one byte at a time


def test_interleaved_stdout_and_stderr():
    lines = split((DATA / "interleaved.bin").read_bytes())
    steps = ["download", "transform", "upload"]
    assert [line for line in lines if line.startswith("STEP")] == [
        "STEP 1/3 download",
        "STEP 2/3 transform",
        "STEP 3/3 upload",
    ]
    assert "caf\ufffd cr\ufffdme (latin-1)" in lines  # invalid UTF-8, replaced, not lost

    tracker = ProgressTracker(steps)
    seen: list[tuple[str | None, float]] = []
    messages, reasons = [], []
    result = None
    for line in lines:
        parsed = parse_line(line)
        if parsed is not None and parsed.result is not None:
            result = parsed.result
        update = tracker.feed(parsed)
        if update is not None:
            seen.append((update.current_step, update.progress_percent))
            messages.append(update.message)
        elif tracker.last_ignored_reason:
            reasons.append(tracker.last_ignored_reason)
    percents = [p for _, p in seen]
    assert percents == sorted(percents)
    in_transform = [p for step, p in seen if step == "transform"]
    assert min(in_transform) == pytest.approx(33.33, abs=0.01)
    assert max(in_transform) < 66.67  # its bar does not reach the next step's start
    assert len(set(in_transform)) > 5  # ...but moves within the step
    assert [step for step, _ in seen if step] == sorted(
        (step for step, _ in seen if step), key=steps.index
    )
    assert "half-way there" in messages  # the JSON line
    assert tracker.message == "upload done"
    assert any("banana" in r for r in reasons)
    assert result == {"answer": 42}
    assert tracker.progress_percent == 99.9  # PROGRESS 99.9 from the script's last step


def test_a_real_video_pipeline_run():
    pipeline = get_pipeline("video")
    lines = split((DATA / "video_run.bin").read_bytes())
    steps_seen = [parse_line(line).step for line in lines if line.startswith("STEP")]
    assert steps_seen == list(pipeline.steps)
    tracker, updates = track(lines, pipeline.steps, pipeline.weights)
    percents = [u.progress_percent for u in updates]
    assert percents == sorted(percents)
    assert [u.current_step for u in updates if u.current_step] == sorted(
        (u.current_step for u in updates if u.current_step), key=pipeline.steps.index
    )
    in_videos = [u.progress_percent for u in updates if u.current_step == "generate-videos"]
    assert len(set(in_videos)) >= 3  # the frame renderer's tqdm bar moves the overall bar
    assert tracker.current_step == "assemble-video"
    assert 60.0 <= tracker.progress_percent < 100.0
    results = [parse_line(line).result for line in lines if line.startswith('{"result"')]
    assert len(results) == 1 and results[0]["video_url"].endswith("/34265844.mp4")


# -- LineSplitter ---------------------------------------------------------------------


def test_splitter_line_endings():
    splitter = LineSplitter()
    assert splitter.feed(b"one\r\ntwo\nthree\rfour") == ["one", "two", "three"]
    assert splitter.feed(b"\r") == ["four"]
    assert splitter.feed(b"\nfive\n") == ["five"]  # that '\n' paired the '\r' before it
    assert splitter.feed(b"\r\r\n\n") == []  # empty lines are dropped
    assert splitter.close() == []


def test_splitter_keeps_a_partial_line_across_feeds():
    splitter = LineSplitter()
    assert splitter.feed(b"STEP 1/2 fe") == []
    assert splitter.feed(b"tch-pa") == []
    assert splitter.feed(b"per\nPROGRESS 5") == ["STEP 1/2 fetch-paper"]
    assert splitter.close() == ["PROGRESS 5"]


def test_splitter_decodes_a_character_split_across_feeds():
    data = "crème brûlée\n".encode()
    for cut in range(1, len(data)):
        assert split(data, [cut]) == ["crème brûlée"]


def test_splitter_replaces_invalid_utf8():
    assert split(b"caf\xe9\n\xff\xfe\xfd ok\n") == ["caf\ufffd", "\ufffd\ufffd\ufffd ok"]


def test_splitter_survives_a_huge_line_with_bounded_memory():
    limit = 64 * 1024
    splitter = LineSplitter(max_line_bytes=limit)
    chunk = b"x" * 65536
    tracemalloc.start()
    try:
        lines = []
        for _ in range(64):  # a 4 MiB line
            lines += splitter.feed(chunk)
        lines += splitter.feed(b"\nSTEP 2/2 next\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [len(line) for line in lines] == [limit, len("STEP 2/2 next")]
    assert lines[1] == "STEP 2/2 next"
    assert splitter.truncated_lines == 1
    assert peak < 1024 * 1024  # the 4 MiB line was never held whole


def test_a_one_megabyte_line_in_one_feed():
    line = b"PROGRESS 10 " + b"y" * (1024 * 1024)
    lines = split(line + b"\nPROGRESS 20\n")
    assert len(lines[0]) == 64 * 1024 and lines[1] == "PROGRESS 20"
    parsed = parse_line(lines[0])
    assert parsed.percent == 10.0 and len(parsed.message) <= 500
    assert parse_line("z" * (1024 * 1024)) is None
    assert parse_line("{" + "[" * (1024 * 1024)) is None


# -- parse_line -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, expected",
    [
        ("STEP fetch-paper", ParsedLine(LineKind.STEP, step="fetch-paper")),
        (
            "STEP 2/5 generate-script",
            ParsedLine(LineKind.STEP, step="generate-script", step_index=2, step_total=5),
        ),
        (
            "  STEP 3/5   generate-audio  ",
            ParsedLine(LineKind.STEP, step="generate-audio", step_index=3, step_total=5),
        ),
        ("STEP 4/5", ParsedLine(LineKind.STEP, step_index=4, step_total=5)),
        ("PROGRESS 42", ParsedLine(LineKind.PROGRESS, percent=42.0)),
        (
            "PROGRESS 42.5 rendering slide 3",
            ParsedLine(LineKind.PROGRESS, percent=42.5, message="rendering slide 3"),
        ),
        ("PROGRESS 0", ParsedLine(LineKind.PROGRESS, percent=0.0)),
        ("PROGRESS 100", ParsedLine(LineKind.PROGRESS, percent=100.0)),
        ("PROGRESS 7%", ParsedLine(LineKind.PROGRESS, percent=7.0)),
        ("PROGRESS .5", ParsedLine(LineKind.PROGRESS, percent=0.5)),
        (
            '{"step": "generate-audio", "progress": 30, "message": "slide 1"}',
            ParsedLine(LineKind.JSON, step="generate-audio", percent=30.0, message="slide 1"),
        ),
        ('{"progress": 12.5}', ParsedLine(LineKind.JSON, percent=12.5)),
        ('{"message": "hello"}', ParsedLine(LineKind.JSON, message="hello")),
        (
            '{"result": {"video_url": "file:///x.mp4"}}',
            ParsedLine(LineKind.JSON, result={"video_url": "file:///x.mp4"}),
        ),
    ],
)
def test_progress_lines(line, expected):
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    "line, reason",
    [
        ("PROGRESS banana", "needs a number"),
        ("PROGRESS 150", "outside 0..100"),
        ("PROGRESS -1", "outside 0..100"),
        ("PROGRESS nan", "needs a number"),
        ("PROGRESS inf", "needs a number"),
        ("PROGRESS 1e2", "needs a number"),
        ("PROGRESS", "without a percent"),
        ("STEP", "without a step name"),
        ("STEP 0/5 fetch-paper", "within 1..5"),
        ("STEP 6/5 fetch-paper", "within 1..5"),
        ('{"progress": "50"}', "must be a number"),
        ('{"progress": true}', "must be a number"),
        ('{"progress": NaN}', "outside 0..100"),
        ('{"progress": 101}', "outside 0..100"),
        ('{"progress": 1e999}', "outside 0..100"),
        ('{"step": 3}', "must be a non-empty string"),
        ('{"step": ""}', "must be a non-empty string"),
        ('{"message": ["a"]}', "must be a string"),
        ('{"result": "done"}', "must be an object"),
    ],
)
def test_nonsense_is_ignored_with_a_reason(line, reason):
    parsed = parse_line(line)
    assert parsed is not None and parsed.kind is LineKind.IGNORED
    assert reason in parsed.reason
    tracker = ProgressTracker(["fetch-paper", "generate-script"])
    assert tracker.feed(parsed) is None
    assert tracker.last_ignored_reason == parsed.reason
    assert tracker.progress_percent == 0.0


@pytest.mark.parametrize(
    "line",
    [
        "",
        "hello world",
        "STEPS ahead",
        "PROGRESSIVE rock",
        "progress 50",  # the contract's keywords are upper case
        "{not json}",
        "{'step': 'python repr, not JSON'}",
        '{"level": "info", "msg": "some other JSON log line"}',
        "[1, 2, 3]",
        "42it [00:01, 30.10it/s]",  # a bar with no total says nothing about the fraction
    ],
)
def test_ordinary_output_is_not_ours(line):
    assert parse_line(line) is None


@pytest.mark.parametrize(
    "line, fraction",
    [
        ("  7%|▋         | 7/100 [00:00<00:01, 69.3it/s]", 0.07),
        ("frames:  42%|####2     | 42/100 [00:01<00:02, 30.1it/s]", 0.42),
        ("generate-videos:  33%|███▎      | 1/3 [00:00<00:00,  9.9frame/s]", 1 / 3),
        (" 40%|████      | 1.20k/3.00k [00:01<00:02, 1.2kit/s]", 0.4),
        ("100%|██████████| 12/12 [00:00<00:00, 311.84it/s]", 1.0),
        (" 42%|####      |", 0.42),  # a bar_format without the counts
        ("\x1b[A 55%|█████▌    | 55/100 [00:00<00:00]", 0.55),  # tqdm's position>0 escape
    ],
)
def test_tqdm_bars(line, fraction):
    parsed = parse_line(line)
    assert parsed.kind is LineKind.BAR
    assert parsed.fraction == pytest.approx(fraction)


def test_parse_line_never_raises_on_any_str():
    rng = random.Random(1234)
    alphabet = "STEPROGS{}[]\"':,.%|/ 0123456789-+eEnaNfi\t\r\n\x00\x1b\ufffdé█#"
    prefixes = ["", "STEP ", "PROGRESS ", "{", '{"progress": ', '{"step": ', " 42%|", "x: 9%|##|"]
    for _ in range(5000):
        line = rng.choice(prefixes) + "".join(
            rng.choice(alphabet) for _ in range(rng.randint(0, 30))
        )
        parsed = parse_line(line)
        assert parsed is None or isinstance(parsed, ParsedLine)
        if parsed is not None and parsed.kind is LineKind.IGNORED:
            assert parsed.reason
        if parsed is not None and parsed.percent is not None:
            assert 0.0 <= parsed.percent <= 100.0
        if parsed is not None and parsed.fraction is not None:
            assert 0.0 <= parsed.fraction <= 1.0


def test_parse_line_refuses_bytes():
    with pytest.raises(TypeError):
        parse_line(b"PROGRESS 5")


# -- ProgressTracker ------------------------------------------------------------------

FIVE = ["fetch-paper", "generate-script", "generate-audio", "generate-videos", "assemble-video"]


def feed(tracker: ProgressTracker, *lines: str) -> list[TrackerUpdate | None]:
    return [tracker.feed(parse_line(line)) for line in lines]


def test_steps_have_equal_shares_by_default():
    tracker = ProgressTracker(FIVE)
    (update,) = feed(tracker, "STEP 3/5 generate-audio")
    assert update == TrackerUpdate(40.0, "generate-audio", None)
    assert tracker.completed_steps == ["fetch-paper", "generate-script"]


def test_weights_set_each_steps_share():
    tracker = ProgressTracker(["small", "big"], weights=[1, 3])
    assert feed(tracker, "STEP big")[0].progress_percent == 25.0
    assert feed(tracker, " 50%|#####     | 50/100 [00:01<00:01]")[0].progress_percent == 62.5
    equal = ProgressTracker(["small", "big"])
    feed(equal, "STEP big", " 50%|#####     | 50/100")
    assert equal.progress_percent == 75.0


def test_a_bar_moves_the_overall_bar_smoothly_within_its_step():
    tracker = ProgressTracker(FIVE)
    feed(tracker, "STEP 4/5 generate-videos")
    percents = [
        u.progress_percent
        for u in feed(tracker, *(f"{n}%|{'#' * (n // 10)}| {n}/100" for n in range(0, 101, 5)))
        if u is not None
    ]
    assert percents[0] == 61.0 and percents == sorted(percents) and len(percents) == 20
    assert percents[-1] < 80.0  # a finished bar does not reach the next step's start
    assert feed(tracker, "STEP 5/5 assemble-video")[0].progress_percent == 80.0


def test_progress_never_goes_backwards():
    tracker = ProgressTracker(FIVE)
    feed(tracker, "STEP 3/5 generate-audio", "PROGRESS 50")
    assert tracker.progress_percent == 50.0

    assert feed(tracker, "PROGRESS 30") == [None]
    assert "below the current 50" in tracker.last_ignored_reason

    assert feed(tracker, "STEP 2/5 generate-script") == [None]
    assert "before the current step 'generate-audio'" in tracker.last_ignored_reason

    feed(tracker, "STEP 4/5 generate-videos", "80%|########  | 80/100")
    at = tracker.progress_percent
    assert feed(tracker, "  5%|▌         | 5/100") == [None]  # a bar that restarts
    assert "bar went back" in tracker.last_ignored_reason
    assert tracker.progress_percent == at
    assert tracker.current_step == "generate-videos"


def test_a_lower_progress_still_delivers_its_message():
    tracker = ProgressTracker(FIVE)
    feed(tracker, "PROGRESS 50")
    (update,) = feed(tracker, "PROGRESS 40 still encoding")
    assert update == TrackerUpdate(50.0, None, "still encoding")


def test_unknown_steps_are_ignored_with_a_reason():
    tracker = ProgressTracker(FIVE)
    assert feed(tracker, "STEP make-coffee") == [None]
    assert "unknown step 'make-coffee'" in tracker.last_ignored_reason
    assert "fetch-paper" in tracker.last_ignored_reason
    assert feed(tracker, '{"step": "make-coffee"}') == [None]
    assert feed(tracker, "STEP 3/7 make-coffee") == [None]  # 7 is not our 5 steps
    assert tracker.current_step is None and tracker.progress_percent == 0.0


def test_step_i_of_n_maps_a_display_name_by_its_index():
    tracker = ProgressTracker(FIVE)
    (update,) = feed(tracker, "STEP 3/5 Generating the audio")
    assert update.current_step == "generate-audio" and update.progress_percent == 40.0
    (update,) = feed(tracker, "STEP 4/5")
    assert update.current_step == "generate-videos"


def test_a_known_name_wins_over_its_index():
    tracker = ProgressTracker(FIVE)
    assert feed(tracker, "STEP 1/5 generate-audio")[0].current_step == "generate-audio"


def test_nothing_reaches_100_before_finish():
    tracker = ProgressTracker(FIVE)
    feed(tracker, "STEP 5/5 assemble-video", "100%|##########| 10/10")
    assert tracker.progress_percent < 100.0
    feed(tracker, "PROGRESS 100 done")
    assert tracker.progress_percent == 99.9 and not tracker.done
    assert tracker.finish() == TrackerUpdate(100.0, None, "done")
    assert tracker.completed_steps == FIVE
    assert feed(tracker, "PROGRESS 100") == [None]


def test_one_json_line_can_set_step_progress_and_message():
    tracker = ProgressTracker(FIVE)
    (update,) = feed(tracker, '{"step": "generate-audio", "progress": 45, "message": "slide 2/5"}')
    assert update == TrackerUpdate(45.0, "generate-audio", "slide 2/5")


def test_none_when_nothing_changed():
    tracker = ProgressTracker(FIVE)
    assert feed(tracker, "STEP 1/5 fetch-paper") == [TrackerUpdate(0.0, "fetch-paper", None)]
    assert feed(tracker, "STEP 1/5 fetch-paper", "hello") == [None, None]
    feed(tracker, "PROGRESS 10 x")
    assert feed(tracker, "PROGRESS 10 x") == [None]
    assert tracker.last_ignored_reason is None  # nothing refused, merely nothing new


def test_a_bar_before_any_step_belongs_to_the_first():
    tracker = ProgressTracker(["only"])
    (update,) = feed(tracker, " 30%|###       | 3/10")
    assert update == TrackerUpdate(30.0, "only", None)


@pytest.mark.parametrize(
    "steps, weights",
    [
        ([], None),
        (["a", "a"], None),
        (["a", "b"], [1]),
        (["a", "b"], [1, -1]),
        (["a"], [0]),
        (["a"], [float("nan")]),
    ],
)
def test_tracker_refuses_bad_configuration(steps, weights):
    with pytest.raises(ValueError):
        ProgressTracker(steps, weights)


def test_result_lines_carry_the_pipelines_result():
    line = json.dumps({"result": {"video_url": "file:///tmp/a.mp4", "video_path": "/tmp/a.mp4"}})
    assert parse_line(line).result["video_path"] == "/tmp/a.mp4"
