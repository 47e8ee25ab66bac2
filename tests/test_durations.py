"""Step durations read off a finished job's history: one definition for the ETA, insights and metrics."""

from progress_service.durations import job_duration, step_durations

STEPS = ["a", "b", "c"]


def entry(seq, at_ms, step, status="running"):
    return {"seq": seq, "at": at_ms, "current_step": step, "status": status, "progress_percent": 0}


def test_each_step_runs_from_its_first_entry_to_the_next_steps():
    history = [entry(1, 0, None, "pending"), entry(2, 1_000, "a"), entry(3, 1_500, "a"),
               entry(4, 3_000, "b"), entry(5, 7_000, "c"), entry(6, 7_250, None, "completed")]
    assert step_durations(history, STEPS) == {"a": 2.0, "b": 4.0, "c": 0.25}


def test_iso_times_are_read_as_well_as_milliseconds():
    history = [{"seq": 1, "at": "2026-12-01T00:00:00.000Z", "current_step": "a", "status": "running"},
               {"seq": 2, "at": "2026-12-01T00:00:01.500Z", "current_step": "b", "status": "running"}]
    assert step_durations(history, STEPS) == {"a": 1.5}


def test_a_failed_step_and_the_steps_never_reached_have_no_duration():
    history = [entry(1, 0, "a"), entry(2, 1_000, "b"), entry(3, 5_000, "b", "failed")]
    assert step_durations(history, STEPS) == {"a": 1.0}


def test_a_skipped_step_is_left_out_not_guessed():
    history = [entry(1, 0, "a"), entry(2, 2_000, "c"), entry(3, 3_000, None, "completed")]
    assert step_durations(history, STEPS) == {"a": 2.0, "c": 1.0}


def test_a_history_cut_by_its_cap_does_not_time_the_step_it_starts_in():
    history = [entry(40, 5_000, "a"), entry(41, 6_000, "b"), entry(42, 8_000, None, "completed")]
    assert step_durations(history, STEPS) == {"b": 2.0}


def test_job_duration_is_started_to_finished():
    assert job_duration({"started_at": "2026-12-01T00:00:00.000Z",
                         "finished_at": "2026-12-01T00:01:00.250Z"}) == 60.25
    assert job_duration({"started_at": None, "finished_at": "2026-12-01T00:01:00.250Z"}) is None
