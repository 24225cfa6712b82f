"""Whole builds with ``engine: openai`` against the loopback server (tests/openai_server.py):
many turns in flight, failed requests as failed turns that ``--retry-failed`` redoes, an
unrecoverable answer stopping the build with one message, the API key kept out of every file,
the server's model id on the rows and the card, and kill -9 resuming to the same dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from openai_server import CHAT, Fault, OpenAIServer
from synth_disco.pipeline.build import TooManyFailures, build

KEY = "sk-loopback-SECRET-4242424242"
KEY_ENV = "SYNTH_DISCO_TEST_OPENAI_KEY"
N_DISCUSSIONS, TURNS, ANNOTATORS = 4, 3, 2


def recipe(folder: Path, url: str, **model: object) -> Path:
    """A small recipe: 4 discussions of 3 turns on the loopback server, 2 labels a comment."""
    data = {
        "name": "openai-loopback",
        "seed": 5,
        "models": {
            "srv": {
                "engine": "openai",
                "model": "org/test-model",  # the server serves it as "test-model"
                "base_url": url,
                "api_key_env": KEY_ENV,
                "max_retries": 1,
                "backoff_initial_s": 0.01,
                "backoff_max_s": 0.05,
                "max_new_tokens": 12,
                "temperature": 0.0,
                **model,
            }
        },
        "personas": {
            "users": [{"id": f"u{i}", "username": f"user{i}"} for i in range(3)],
            "annotators": [{"id": f"a{i}", "username": f"rater{i}"} for i in range(2)],
        },
        "posts": [
            {"id": "p1", "title": "Parking", "text": "Close the square to cars on Saturdays?"},
            {"id": "p2", "title": "School", "text": "Is a four-day school week a good idea?"},
        ],
        "discussion": {"participants": 2, "turns": TURNS},
        "replicates": N_DISCUSSIONS,
        "annotation": {
            "annotators": {"pool": "annotators", "per_comment": ANNOTATORS},
            "dimensions": {"toxicity": {"scale": [1, 2, 3, 4, 5]}},
        },
        "output": {"shard_size": 2},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def rows(run: Path, config: str) -> list[dict]:
    files = sorted((run / "dataset" / "data" / config).glob("*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def files_holding(folder: Path, secret: str) -> list[str]:
    return [
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and secret.encode() in p.read_bytes()
    ]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    monkeypatch.setenv(KEY_ENV, KEY)
    with OpenAIServer(api_key=KEY) as srv:
        yield srv
        assert not srv.errors, "openai stub crashed:\n" + "\n".join(srv.errors)


def test_build_end_to_end_failed_turn_retried_and_key_kept_out(server, tmp_path) -> None:
    server.delay_s = 0.2  # answers take a while: the step's requests overlap at the server
    path = recipe(tmp_path, server.url, max_retries=0)
    out = tmp_path / "run"
    # The first request fails once; with no retries left its turn fails, and the error the
    # server sent quotes the Authorization header (as careless servers do).
    server.fail_next(CHAT, Fault(status=500, message="overloaded", echo_auth=True))
    with pytest.raises(TooManyFailures, match="--retry-failed"):
        build(path, out=out, stage="discuss")  # 1 of 4 failed: too many, yet nothing crashed
    shards = sorted((out / "shards" / "discuss").glob("*.discussions.parquet"))
    failed = [d for f in shards for d in pq.read_table(f).to_pylist() if d["status"] == "failed"]
    assert len(failed) == 1 and "500" in failed[0]["error"] and "Bearer ***" in failed[0]["error"]
    journal = b"".join(p.read_bytes() for p in (out / "journal" / "discuss").glob("*.jsonl"))
    assert journal.count(b'"kind":"failed_turn"') == 1
    # Every step handed all pending turns over at once, and they were in flight together.
    assert server.max_in_flight == N_DISCUSSIONS

    server.delay_s = 0.0
    report = build(path, out=out, retry_failed=True)
    assert report.discuss.failed == 0
    discussions = rows(out, "discussions")
    assert len(discussions) == N_DISCUSSIONS and {d["status"] for d in discussions} == {"ok"}
    comments = [c for c in rows(out, "comments") if c["role"] == "user"]
    assert len(comments) == N_DISCUSSIONS * TURNS
    # Rows name the model the server reported ("test-model"), not the recipe's alias.
    assert {c["model"] for c in comments} == {"test-model"}
    assert {d["model"] for d in discussions} == {"test-model"}
    labels = rows(out, "annotations")
    assert len(labels) == len(comments) * ANNOTATORS  # generated comments, not the posts
    assert {a["model"] for a in labels} == {"test-model"} and {a["status"] for a in labels} == {
        "ok"
    }
    for a in labels:
        assert sum(s["prob"] for s in a["scores"]) == pytest.approx(1.0)
        # the loopback server's favourite first token (labels of a scale are typed: 2, "2")
        assert a["label"] == 2 and a["label_text"] == "2"
    card = (out / "dataset" / "README.md").read_text()
    assert "`org/test-model` (served as `test-model`)" in card
    assert "sampled replies repeat only where the server honours per-request seeds" in card
    manifest = json.loads((out / "dataset" / "synth_disco" / "manifest.json").read_text())
    assert manifest["models"]["srv"]["reported_id"] == "test-model"
    # Every request carried the key; no file of the run or its dataset holds it.
    assert {h.auth for h in server.hits} == {f"Bearer {KEY}"}
    assert files_holding(out, KEY) == []


def cli(path: Path, out: Path, *extra: str, kill_at: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "SYNTH_DISCO_KILL_AT": kill_at}
    args = [sys.executable, "-m", "synth_disco", "build", str(path), "--out", str(out), *extra]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def test_unrecoverable_answer_stops_the_build_with_one_message(server, tmp_path) -> None:
    path = recipe(tmp_path, server.url)
    out = tmp_path / "run"
    too_long = "This model's maximum context length is 64 tokens."
    server.fail_next(CHAT, Fault(status=400, message=too_long))
    stopped = cli(path, out)
    assert stopped.returncode == 2, stopped.stderr[-2000:]
    assert "answered 400" in stopped.stderr and "maximum context length" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert not (out / "dataset").exists()
    # The run is intact: the same command finishes it.
    done = cli(path, out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(rows(out, "discussions")) == N_DISCUSSIONS


def test_wrong_key_stops_at_load_without_showing_it(server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-wrong-KEY-777")
    path = recipe(tmp_path, server.url)
    stopped = cli(path, tmp_path / "run")
    assert stopped.returncode == 2, stopped.stderr[-2000:]
    assert "answered 401" in stopped.stderr and f"${KEY_ENV}" in stopped.stderr
    assert "sk-wrong-KEY-777" not in stopped.stderr and "Traceback" not in stopped.stderr
    assert files_holding(tmp_path / "run", "sk-wrong-KEY-777") == []


# Killed at each point in turn, each build resuming the last: every point is reached from a
# partly finished run, and the last build finishes it.
KILL_POINTS = ["discuss.step:2", "shard.write:1", "between.stages", "annotate.step:1", "end"]


def test_killed_openai_build_resumes_to_the_same_dataset(server, tmp_path) -> None:
    path = recipe(tmp_path, server.url)
    reference = tmp_path / "reference"
    assert cli(path, reference).returncode == 0
    out = tmp_path / "run"
    for kill_at in KILL_POINTS:
        killed = cli(path, out, kill_at=kill_at)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr[-2000:])
    resumed = cli(path, out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    keys = {
        "discussions": lambda r: r["discussion_id"],
        "comments": lambda r: r["comment_id"],
        "annotations": lambda r: (r["comment_id"], r["annotator_id"], r["dimension"]),
    }
    for config, key in keys.items():
        got, want = rows(out, config), rows(reference, config)
        assert len({key(r) for r in got}) == len(got), f"duplicates in {config}"
        assert sorted(got, key=key) == sorted(want, key=key), config
    assert files_holding(out, KEY) == [] and files_holding(reference, KEY) == []


def test_resume_against_a_server_that_moved(server, tmp_path) -> None:
    """How to reach the server is not part of the experiment: a build killed mid-way resumes
    against the same model at another address (the fingerprint leaves base_url out)."""
    out = tmp_path / "run"
    killed = cli(recipe(tmp_path, server.url), out, kill_at="discuss.step:2")
    assert killed.returncode == -signal.SIGKILL
    with OpenAIServer(api_key=KEY) as moved:
        path = recipe(tmp_path, moved.url, timeout_s=30)
        resumed = cli(path, out)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "recipe changed" not in resumed.stderr and moved.hits_to(CHAT)
    assert {d["status"] for d in rows(out, "discussions")} == {"ok"}
    changed = cli(recipe(tmp_path, server.url, top_logprobs=5), out)
    assert changed.returncode == 2 and "recipe changed" in changed.stderr  # scores would change
