"""`synth-disco build recipes/smoke.yaml` end to end, as a user runs it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from datasets import load_dataset

from synth_disco.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "smoke.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke") / "run"
    result = CliRunner().invoke(main, ["build", str(RECIPE), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def load(run: Path, config: str) -> list[dict]:
    return load_dataset(str(run / "dataset"), config, split="train").to_list()


def test_counts_ids_links_roles(run):
    discussions = load(run, "discussions")
    comments = load(run, "comments")
    # 2 factors x 2 levels x 2 replicates
    assert len(discussions) == 8
    assert {d["status"] for d in discussions} == {"ok"}
    ids = [c["comment_id"] for c in comments]
    assert len(ids) == len(set(ids))
    by_id = {c["comment_id"]: c for c in comments}
    for d in discussions:
        mine = sorted(
            (c for c in comments if c["discussion_id"] == d["discussion_id"]),
            key=lambda c: c["index"],
        )
        assert len(mine) == d["n_comments"]
        assert [c["index"] for c in mine] == list(range(len(mine)))
        assert mine[0]["role"] == "op" and mine[0]["parent_id"] is None
        users = [c for c in mine if c["role"] == "user"]
        assert len(users) == d["turns"] == 4
        names = {p["name"] for p in d["participants"]}
        assert len(d["participants"]) == 3
        for c in mine[1:]:
            assert by_id[c["parent_id"]]["discussion_id"] == d["discussion_id"]
            assert by_id[c["parent_id"]]["index"] < c["index"]
        assert {c["author"] for c in users} <= names
        if d["moderation"] == "every_k":
            assert any(c["role"] == "moderator" for c in mine)
        else:
            assert all(c["role"] != "moderator" for c in mine)


def test_seeds_and_factor_levels_are_recorded(run):
    discussions = load(run, "discussions")
    assert {d["moderation"] for d in discussions} == {"none", "every_k"}
    assert {d["turn_taking"] for d in discussions} == {"round_robin", "random_weighted"}
    assert {(d["turn_taking"], d["turn_policy"]) for d in discussions} == {
        ("round_robin", "round_robin"),
        ("random_weighted", "random_weighted"),
    }
    assert len({d["seed"] for d in discussions}) == 8
    # Matched design: the cells of one replicate share their post and their people.
    for r in (0, 1):
        cells = [d for d in discussions if d["replicate"] == r]
        assert len({d["post_id"] for d in cells}) == 1
        assert len({tuple(p["persona"]["id"] for p in d["participants"]) for d in cells}) == 1


def test_comment_text_is_clean(run):
    comments = load(run, "comments")
    discussions = load(run, "discussions")
    names = {p["name"] for d in discussions for p in d["participants"]} | {"Moderator"}
    prefix = re.compile(rf"^\s*(?:{'|'.join(map(re.escape, names))})\s*:", re.IGNORECASE)
    for c in comments:
        assert c["text"].strip(), c
        assert not prefix.match(c["text"]), c["text"]
        if c["role"] in ("user", "moderator"):
            assert c["model"] == "tiny" and c["completion_tokens"] > 0
            assert c["finish_reason"] in ("stop", "length", "eos")


def test_show_prints_a_thread_and_status_reports_done(run):
    discussions = load(run, "discussions")
    did = discussions[0]["discussion_id"]
    shown = CliRunner().invoke(main, ["show", str(run), "--discussion", did])
    assert shown.exit_code == 0, shown.output
    assert discussions[0]["op"] in shown.output
    status = CliRunner().invoke(main, ["status", str(run)])
    assert status.exit_code == 0
    assert "8/8" in status.output and "dataset: assembled" in status.output
    missing = CliRunner().invoke(main, ["show", str(run), "--discussion", "nope"])
    assert missing.exit_code == 2


def test_failing_discussions_are_isolated_summarised_and_retried(tmp_path):
    long_post = "word " * 6000  # more tokens than the tiny model's context
    args = [
        "build",
        str(RECIPE),
        "--out",
        str(tmp_path / "run"),
        "--set",
        f"posts=[{{id: long, text: '{long_post}'}}, {{id: short, text: Hello all}}]",
        "--set",
        "discussion.turns=2",
        "--set",
        "annotation=null",
    ]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 1, first.output
    assert "4 of 8 discussions failed" in first.output
    assert "exceeds the model context" in first.output
    assert "--retry-failed" in first.output
    rows = load(tmp_path / "run", "discussions")
    status = {
        r["post_id"]: {x["status"] for x in rows if x["post_id"] == r["post_id"]} for r in rows
    }
    assert status == {"long": {"failed"}, "short": {"ok"}}
    # A retry runs only the failed ones again (they fail again: the post is still too long).
    again = CliRunner().invoke(main, [*args, "--retry-failed"])
    assert again.exit_code == 1
    ok_before = [r for r in rows if r["status"] == "ok"]
    ok_after = [r for r in load(tmp_path / "run", "discussions") if r["status"] == "ok"]
    assert ok_before == ok_after
