"""The user's own pipelines: the PROGRESS_PIPELINES file (each rule of its strict check),
entry points found by importlib.metadata, the registry, and ``progress-service pipelines``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import REPO, cli_env

from progress_cli import exit_codes
from progress_service.config import ConfigError, Settings
from progress_service.pipeline_config import ArgvTemplate, read_pipeline_file
from progress_service.pipelines import (
    PIPELINES,
    Pipeline,
    get_pipeline,
    load_pipelines,
    require_pipeline,
)

GOOD = """
[pipelines.transcode]
steps = ["download", "transcode", "upload"]
weights = [1, 8, 1]
command = ["python", "-m", "mytool", "{paper_id}", "--out", "{out_dir}", "--job={job_id}", "{{x}}"]
timeout = 1800
resumable = true
description = "video in, smaller video out"

[pipelines.plain]
steps = ["only"]
command = ["./run.sh", "{paper_id}"]
"""


def write(tmp_path: Path, text: str, name: str = "pipelines.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def settings_for(path: Path | str) -> Settings:
    return Settings.from_env({"PROGRESS_PIPELINES": str(path)})


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "progress_cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


# -- a good file ------------------------------------------------------------------------


def test_a_file_of_pipelines_joins_the_bundled_ones(tmp_path):
    path = write(tmp_path, GOOD)
    registry = load_pipelines(settings_for(path))
    assert list(registry) == ["video", "transcode", "plain"]
    transcode = registry["transcode"]
    assert transcode.steps == ("download", "transcode", "upload")
    assert transcode.weights == (1.0, 8.0, 1.0)
    assert transcode.timeout == 1800 and transcode.resumable is True
    assert transcode.description == "video in, smaller video out"
    assert transcode.source == str(path) and registry["video"].source == "bundled"
    plain = registry["plain"]
    assert plain.weights is None and plain.timeout is None and plain.resumable is False
    # each placeholder filled in within its own argument; {{ }} are literal braces
    assert transcode.command("34265844", "/out/j1", "j1") == [
        "python", "-m", "mytool", "34265844", "--out", "/out/j1", "--job=j1", "{x}"]
    # get_pipeline / require_pipeline find them with settings; without, only the bundled ones
    assert get_pipeline("plain", settings_for(path)) is plain
    assert require_pipeline("transcode", settings_for(path)) is transcode
    with pytest.raises(ValueError, match="unknown pipeline 'plain': known pipelines are video"):
        get_pipeline("plain")
    with pytest.raises(ValueError, match="known pipelines are plain, transcode, video"):
        require_pipeline("nope", settings_for(path))


def test_a_paper_id_is_always_one_argument():
    command = ArgvTemplate(("prog", "{paper_id}", "{out_dir}/{job_id}.log"))
    assert command("a b; rm -rf /", "/tmp/o", "j") == ["prog", "a b; rm -rf /", "/tmp/o/j.log"]


# -- the strict check: one test per rule --------------------------------------------------

OK_STEPS = 'steps = ["a", "b"]'
OK_COMMAND = 'command = ["prog", "{paper_id}"]'


def table(*lines: str, name: str = "mine") -> str:
    return f"[pipelines.{name}]\n" + "\n".join(lines) + "\n"


RULES = [
    # (id, the file, the key the message must name, a phrase it must say)
    ("unknown-key", table(OK_STEPS, OK_COMMAND, 'colour = "red"'), "colour", "unknown key"),
    ("missing-steps", table(OK_COMMAND), "steps", "missing"),
    ("missing-command", table(OK_STEPS), "command", "missing"),
    ("empty-steps", table("steps = []", OK_COMMAND), "steps", "empty"),
    ("duplicate-steps", table('steps = ["a", "b", "a"]', OK_COMMAND), "steps", "'a' is named twice"),
    ("steps-not-a-list", table('steps = "a,b"', OK_COMMAND), "steps", "list of step names"),
    ("blank-step", table('steps = ["a", " "]', OK_COMMAND), "steps", "non-empty name"),
    ("weights-wrong-length", table(OK_STEPS, OK_COMMAND, "weights = [1, 2, 3]"), "weights",
     "3 weights for 2 steps"),
    ("weight-zero", table(OK_STEPS, OK_COMMAND, "weights = [1, 0]"), "weights", "number > 0"),
    ("weight-negative", table(OK_STEPS, OK_COMMAND, "weights = [-1, 2]"), "weights", "number > 0"),
    ("weight-not-a-number", table(OK_STEPS, OK_COMMAND, 'weights = [1, "2"]'), "weights", "number > 0"),
    ("weight-a-bool", table(OK_STEPS, OK_COMMAND, "weights = [true, 1]"), "weights", "number > 0"),
    ("weight-nan", table(OK_STEPS, OK_COMMAND, "weights = [nan, 1]"), "weights", "number > 0"),
    ("command-shell-string", table(OK_STEPS, 'command = "mytool {paper_id} > out.txt"'), "command",
     "not a shell string"),
    ("command-empty", table(OK_STEPS, "command = []"), "command", "non-empty list"),
    ("command-not-strings", table(OK_STEPS, 'command = ["prog", 3, "{paper_id}"]'), "command",
     "argument 1 must be a string"),
    ("command-empty-program", table(OK_STEPS, 'command = ["", "{paper_id}"]'), "command",
     "the program"),
    ("placeholder-unknown", table(OK_STEPS, 'command = ["prog", "{paper_id}", "{paper}"]'), "command",
     "unknown placeholder {paper}"),
    ("placeholder-positional", table(OK_STEPS, 'command = ["prog", "{paper_id}", "{}"]'), "command",
     "unknown placeholder {}"),
    ("placeholder-attribute", table(OK_STEPS, 'command = ["prog", "{paper_id.upper}"]'), "command",
     "unknown placeholder {paper_id.upper}"),
    ("placeholder-format", table(OK_STEPS, 'command = ["prog", "{paper_id:>9}"]'), "command",
     "no conversion or format"),
    ("placeholder-conversion", table(OK_STEPS, 'command = ["prog", "{paper_id!r}"]'), "command",
     "no conversion or format"),
    ("braces-unclosed", table(OK_STEPS, 'command = ["prog", "{paper_id"]'), "command",
     "malformed braces"),
    ("braces-stray", table(OK_STEPS, 'command = ["prog", "{paper_id}}"]'), "command",
     "malformed braces"),
    ("no-paper-id", table(OK_STEPS, 'command = ["prog", "{out_dir}", "{job_id}"]'), "command",
     "must pass {paper_id}"),
    ("timeout-zero", table(OK_STEPS, OK_COMMAND, "timeout = 0"), "timeout", "whole number of seconds"),
    ("timeout-fraction", table(OK_STEPS, OK_COMMAND, "timeout = 1.5"), "timeout",
     "whole number of seconds"),
    ("timeout-string", table(OK_STEPS, OK_COMMAND, 'timeout = "60"'), "timeout",
     "whole number of seconds"),
    ("timeout-bool", table(OK_STEPS, OK_COMMAND, "timeout = true"), "timeout", "whole number of seconds"),
    ("resumable-not-bool", table(OK_STEPS, OK_COMMAND, 'resumable = "yes"'), "resumable",
     "true or false"),
    ("description-not-string", table(OK_STEPS, OK_COMMAND, "description = 3"), "description",
     "must be a string"),
]


@pytest.mark.parametrize(("text", "key", "phrase"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_each_mistake_is_a_config_error_naming_file_pipeline_and_key(tmp_path, text, key, phrase):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_pipelines(settings_for(path))
    message = str(caught.value)
    assert f"PROGRESS_PIPELINES={str(path)!r}" in message
    assert "pipeline 'mine'" in message and f"key {key!r}" in message
    assert phrase in message


@pytest.mark.parametrize(("text", "pipeline", "phrase"), [
    (table(OK_STEPS, OK_COMMAND, name='"bad name"'), "'bad name'", "must be an id"),
    (table(OK_STEPS, OK_COMMAND, name="video"), "'video'", "a bundled pipeline's"),
    ("[pipelines]\nmine = 3\n", "'mine'", "must be a table"),
], ids=["name-not-an-id", "name-of-a-bundled-pipeline", "pipeline-not-a-table"])
def test_a_bad_pipeline_name_or_shape_is_a_config_error_naming_file_and_pipeline(tmp_path, text,
                                                                                  pipeline, phrase):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_pipelines(settings_for(path))
    message = str(caught.value)
    assert str(path) in message and f"pipeline {pipeline}" in message and phrase in message


@pytest.mark.parametrize(("content", "phrase"), [
    (None, "no such file"),
    ("[pipelines.mine\nsteps = 1\n", "is not valid TOML"),
    (b"[pipelines.mine]\ndescription = \"\xff\"\n", "is not UTF-8"),
    ('title = "mine"\n' + table(OK_STEPS, OK_COMMAND), "unknown key 'title' at the top"),
    ("pipelines = 3\n", "key 'pipelines' must be a table"),
], ids=["missing", "not-toml", "not-utf8", "top-level-key", "pipelines-not-a-table"])
def test_a_file_that_cannot_be_read_is_a_config_error_naming_it(tmp_path, content, phrase):
    path = tmp_path / "pipelines.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        read_pipeline_file(path, PIPELINES)
    assert f"PROGRESS_PIPELINES={str(path)!r}" in str(caught.value) and phrase in str(caught.value)


def test_a_folder_is_not_a_pipelines_file(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        read_pipeline_file(tmp_path, PIPELINES)


def test_a_pipeline_made_in_python_is_checked_too():
    def command(p, o, j):
        return ["prog", p]

    assert Pipeline(name="mine", steps=["a", "b"], command=command, weights=[1, 3]).steps == ("a", "b")
    for bad in ({"weights": (1, 0)}, {"weights": (1,)}, {"steps": ()}, {"steps": ("a", "a")},
                {"name": "bad name"}, {"resumable": "yes"}, {"timeout": 0}, {"command": "prog"}):
        fields = {"name": "mine", "steps": ("a", "b"), "command": command, **bad}
        with pytest.raises(ValueError, match="pipeline"):
            Pipeline(**fields)


# -- progress-service pipelines ----------------------------------------------------------


def test_the_pipelines_command_lists_every_pipeline_with_its_source(settings, tmp_path):
    path = write(tmp_path, GOOD)
    env = cli_env(settings, PROGRESS_PIPELINES=str(path))
    done = cli("pipelines", env=env)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["NAME", "STEPS", "WEIGHTS", "TIMEOUT", "RESUMABLE", "SOURCE"]
    assert [row.split()[0] for row in rows] == ["video", "transcode", "plain"]
    assert "download, transcode, upload" in rows[1] and "1, 8, 1" in rows[1]
    assert "1800 s" in rows[1] and " yes " in rows[1] and rows[1].endswith(str(path))
    assert rows[0].endswith("bundled") and "equal" in rows[2] and "3600 s (default)" in rows[2]

    done = cli("pipelines", "--json", env=env)
    assert done.returncode == 0, done.stderr
    listed = {p["name"]: p for p in json.loads(done.stdout)}
    assert list(listed) == ["video", "transcode", "plain"]
    assert listed["transcode"] == {
        "name": "transcode", "steps": ["download", "transcode", "upload"], "weights": [1.0, 8.0, 1.0],
        "timeout": 1800, "resumable": True, "description": "video in, smaller video out",
        "source": str(path),
        "command": ["python", "-m", "mytool", "{paper_id}", "--out", "{out_dir}", "--job={job_id}",
                    "{{x}}"]}
    assert listed["video"]["source"] == "bundled" and listed["video"]["command"] is None


def test_the_pipelines_command_exits_78_naming_the_mistake(settings, tmp_path):
    path = write(tmp_path, table(OK_STEPS, OK_COMMAND, "weights = [1]"))
    done = cli("pipelines", env=cli_env(settings, PROGRESS_PIPELINES=str(path)))
    assert done.returncode == exit_codes.CONFIG
    assert str(path) in done.stderr and "pipeline 'mine'" in done.stderr and "key 'weights'" in done.stderr
    assert "Traceback" not in done.stderr
    # so does every command that loads the pipelines: the worker, before it takes a job
    done = cli("worker", "--burst", "--no-mirror", env=cli_env(settings, PROGRESS_PIPELINES=str(path)))
    assert done.returncode == exit_codes.CONFIG and "key 'weights'" in done.stderr


def test_the_pipelines_command_explains_itself(settings):
    done = cli("pipelines", "--help", env=cli_env(settings))
    assert done.returncode == 0
    for phrase in ("PROGRESS_PIPELINES", "[pipelines.transcode]", "{paper_id}", "{job_id}",
                   "progress_service.pipelines", "examples:", "--json", "78"):
        assert phrase in done.stdout, phrase


# -- entry points: real importlib.metadata discovery, in a subprocess ---------------------

MODULE = '''
import sys
from progress_service.pipelines import Pipeline


def command(paper_id, out_dir, job_id):
    return [sys.executable, "-c", "print('STEP one'); print('STEP two')", paper_id]


SINGLE = Pipeline(name="ep-single", steps=["one", "two"], command=command, weights=[1, 3],
                  description="from an entry point")


def several():
    return [Pipeline(name="ep-a", steps=["one"], command=command),
            Pipeline(name="ep-b", steps=["one", "two"], command=command, timeout=60, resumable=True)]


NOT_A_PIPELINE = {"name": "ep-dict"}
VIDEO = Pipeline(name="video", steps=["one"], command=command)


def explodes():
    raise RuntimeError("no licence server")
'''


def install_dist(site: Path, entry_points: dict[str, str]) -> Path:
    """A distribution 't-pipes' in folder ``site``: module tpipes and a .dist-info with these
    entry points in the group progress_service.pipelines. On PYTHONPATH, importlib.metadata finds it."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "tpipes.py").write_text(MODULE)
    info = site / "t_pipes-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: t-pipes\nVersion: 1.0\n")
    lines = [f"{name} = {value}" for name, value in entry_points.items()]
    (info / "entry_points.txt").write_text("[progress_service.pipelines]\n" + "\n".join(lines) + "\n")
    return site


def ep_env(settings, site: Path, **values: str) -> dict[str, str]:
    env = cli_env(settings, **values)
    env["PYTHONPATH"] = f"{site}:{env['PYTHONPATH']}"
    return env


def test_entry_points_add_pipelines(settings, tmp_path):
    site = install_dist(tmp_path / "site", {"single": "tpipes:SINGLE", "several": "tpipes:several"})
    path = write(tmp_path, table(OK_STEPS, OK_COMMAND, name="from-file"))
    done = cli("pipelines", "--json", env=ep_env(settings, site, PROGRESS_PIPELINES=str(path)))
    assert done.returncode == 0, done.stderr
    listed = {p["name"]: p for p in json.loads(done.stdout)}
    assert list(listed) == ["video", "from-file", "ep-single", "ep-a", "ep-b"]
    assert listed["ep-single"]["source"] == "entry point single"
    assert listed["ep-single"]["weights"] == [1.0, 3.0]
    assert listed["ep-single"]["description"] == "from an entry point"
    assert listed["ep-a"]["source"] == listed["ep-b"]["source"] == "entry point several"
    assert listed["ep-b"]["timeout"] == 60 and listed["ep-b"]["resumable"] is True
    assert listed["from-file"]["source"] == str(path)


@pytest.mark.parametrize(("value", "phrase"), [
    ("tpipes_missing:SINGLE", "cannot be loaded: ModuleNotFoundError"),
    ("tpipes:NO_SUCH_NAME", "cannot be loaded: AttributeError"),
    ("tpipes:explodes", "cannot be loaded: RuntimeError: no licence server"),
    ("tpipes:NOT_A_PIPELINE", "must give a progress_service.pipelines.Pipeline"),
    ("tpipes:VIDEO", "pipeline 'video': the name is a bundled pipeline's"),
], ids=["no-module", "no-attribute", "raises", "not-a-pipeline", "bundled-name"])
def test_a_broken_entry_point_is_a_config_error_naming_it(settings, tmp_path, value, phrase):
    site = install_dist(tmp_path / "site", {"broken": value})
    done = cli("pipelines", env=ep_env(settings, site))
    assert done.returncode == exit_codes.CONFIG, done.stdout + done.stderr
    assert "entry point" in done.stderr and "broken" in done.stderr and phrase in done.stderr
    assert "Traceback" not in done.stderr


def test_an_entry_point_may_not_take_a_name_of_the_file(settings, tmp_path):
    site = install_dist(tmp_path / "site", {"single": "tpipes:SINGLE"})
    path = write(tmp_path, table(OK_STEPS, OK_COMMAND, name="ep-single"))
    done = cli("pipelines", env=ep_env(settings, site, PROGRESS_PIPELINES=str(path)))
    assert done.returncode == exit_codes.CONFIG
    assert "entry point single" in done.stderr and f"is defined by {path} too" in done.stderr


def test_an_entry_point_pipeline_runs_through_the_queue(settings, connected_store, tmp_path):
    """Submitted and run by the CLI, both with the distribution on their path."""
    site = install_dist(tmp_path / "site", {"single": "tpipes:SINGLE"})
    env = ep_env(settings, site, PROGRESS_OUTPUT_DIR=str(tmp_path / "out"))
    done = cli("submit", "p1", "--pipeline", "ep-single", env=env)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    done = cli("worker", "--burst", "--no-mirror", env=env)
    assert done.returncode == 0, done.stderr
    done = cli("watch", job_id, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    snap = connected_store.get(job_id)
    assert snap["status"] == "completed" and snap["pipeline"] == "ep-single"
    assert snap["steps"] == ["one", "two"] and snap["completed_steps"] == ["one", "two"]
    # without the distribution, the pipeline is unknown here: refused at submit (64)
    done = cli("submit", "p1", "--pipeline", "ep-single", env=cli_env(settings))
    assert done.returncode == exit_codes.USAGE and "unknown pipeline 'ep-single'" in done.stderr
