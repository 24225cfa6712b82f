"""Kill a real `synth-disco build` at many points, resume it, and get the same dataset.

Each crash uses a named crash point (see ``synth_disco/faults.py``): the build SIGKILLs itself
there, as a power cut would, and the same command is run again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "smoke.yaml"
# Small enough to build many times: 4 discussions of 3 turns in 2 shards, 2 labels a comment.
SETS = ["replicates=1", "discussion.turns=3"]


def build(out: Path, *extra: str, kill_at: str | None = None, timeout: float = 300):
    env = {**os.environ, "SYNTH_DISCO_KILL_AT": kill_at or ""}
    args = [sys.executable, "-m", "synth_disco", "build", str(RECIPE), "--out", str(out)]
    for s in SETS:
        args += ["--set", s]
    return subprocess.run([*args, *extra], env=env, capture_output=True, text=True, timeout=timeout)


def rows(run: Path, config: str) -> list[dict]:
    files = sorted((run / "dataset" / "data" / config).glob("*.parquet"))
    out = [r for f in files for r in pq.read_table(f).to_pylist()]
    return out


def key(config: str):
    return {
        "discussions": lambda r: r["discussion_id"],
        "comments": lambda r: r["comment_id"],
        "annotations": lambda r: (r["comment_id"], r["annotator_id"], r["dimension"]),
    }[config]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    done = build(out)
    assert done.returncode == 0, done.stderr
    return out


def assert_same_dataset(run: Path, reference: Path) -> None:
    for config in ("discussions", "comments", "annotations"):
        got, want = rows(run, config), rows(reference, config)
        k = key(config)
        assert len({k(r) for r in got}) == len(got), f"duplicates in {config}"
        assert sorted(got, key=k) == sorted(want, key=k), config


# Each build is killed at the next point, then resumed by the next build (itself killed later):
# every point is reached from a partly finished run, and the last build finishes it.
KILL_POINTS = [
    "planned",  # early: the plan is written, nothing generated
    "discuss.step:2",  # mid-shard: journals hold some turns
    "shard.write:2",  # while a shard's files are written, before its done marker
    "between.stages",  # discussions done, annotation not started
    "annotate.step:2",  # mid-annotation
    "end",  # the very end: dataset assembled, process killed before exiting
]


def test_build_killed_at_every_point_resumes_to_the_same_dataset(reference, tmp_path):
    out = tmp_path / "run"
    for kill_at in KILL_POINTS:
        killed = build(out, kill_at=kill_at)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr[-2000:])
    resumed = build(out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_dataset(out, reference)


@pytest.fixture(scope="module")
def greedy_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("greedy") / "run"
    done = build(out, *GREEDY)
    assert done.returncode == 0, done.stderr
    return out


GREEDY = ("--set", "models.tiny.temperature=0")


@pytest.mark.parametrize("decoding", ["sampled", "greedy"])
def test_killed_mid_discussion_resumes_to_the_same_text(decoding, request, tmp_path):
    extra = GREEDY if decoding == "greedy" else ()
    ref = request.getfixturevalue("greedy_reference" if extra else "reference")
    out = tmp_path / "run"
    killed = build(out, *extra, kill_at="discuss.step:3")
    assert killed.returncode == -signal.SIGKILL
    journal = b"".join(p.read_bytes() for p in (out / "journal" / "discuss").glob("*.jsonl"))
    assert journal.count(b'"t":"comment"') > 0  # it really stopped mid-way
    assert build(out, *extra).returncode == 0
    assert_same_dataset(out, ref)


# Every truncated reply asked once more (nearly all of the tiny model's are): the journal holds
# `regenerated` events between comments, and a kill can fall between two attempts of a turn.
REGENERATE = ("--set", "quality.regenerate=1", "--set", "quality.regenerate_on=[truncated]")


def test_killed_while_regenerating_resumes_to_the_same_dataset(tmp_path_factory, tmp_path):
    ref = tmp_path_factory.mktemp("regenerate") / "run"
    assert build(ref, *REGENERATE).returncode == 0
    out = tmp_path / "run"
    for kill_at in ("discuss.step:3", "discuss.step:4"):
        killed = build(out, *REGENERATE, kill_at=kill_at)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    journal = b"".join(p.read_bytes() for p in (out / "journal" / "discuss").glob("*.jsonl"))
    assert b'"kind":"regenerated"' in journal
    assert build(out, *REGENERATE).returncode == 0
    assert_same_dataset(out, ref)
    events = sorted(rows(out, "events"), key=lambda r: (r["discussion_id"], r["index"]))
    assert events == sorted(rows(ref, "events"), key=lambda r: (r["discussion_id"], r["index"]))
    assert any(e["kind"] == "regenerated" for e in events)


def test_finished_run_does_nothing_on_rerun(reference):
    before = {p: p.stat().st_mtime_ns for p in (reference / "shards").rglob("*.parquet")}
    again = build(reference)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr
    after = {p: p.stat().st_mtime_ns for p in (reference / "shards").rglob("*.parquet")}
    assert before == after


def test_changed_recipe_is_refused_and_replicates_extend(reference, tmp_path):
    out = tmp_path / "run"
    assert build(out).returncode == 0
    changed = build(out, "--set", "discussion.context_window=1")
    assert changed.returncode == 2
    assert "recipe changed" in changed.stderr and "replicates" in changed.stderr
    first = {r["discussion_id"]: r for r in rows(out, "comments")}
    extended = build(out, "--set", "replicates=2")
    assert extended.returncode == 0, extended.stderr[-2000:]
    discussions = rows(out, "discussions")
    assert len(discussions) == 8
    again = {r["discussion_id"]: r for r in rows(out, "comments")}
    assert all(again[d] == first[d] for d in first)  # earlier discussions kept as they were


def test_sigint_stops_at_a_step_and_prints_the_resume_command(reference, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "synth_disco", "build", str(RECIPE), "--out", str(out)]
    for s in SETS:
        args += ["--set", s]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    journal = out / "journal" / "discuss"
    deadline = time.time() + 120
    while time.time() < deadline and not any(journal.glob("*.jsonl")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "resume with: synth-disco build" in err
    status = subprocess.run(
        [sys.executable, "-m", "synth_disco", "status", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and "discuss" in status.stdout
    assert "not yet assembled" in status.stdout
    resumed = build(out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_dataset(out, reference)


def test_unusable_output_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done = build(blocker / "run")
    assert done.returncode == 1
    assert "a file is in the way" in done.stderr and "Traceback" not in done.stderr
    assert blocker.read_text() == "not a directory"
