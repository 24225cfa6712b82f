"""Build, push to the loopback Hub, and load every version back at its tag."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from datasets import load_dataset

from synth_disco.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "smoke.yaml")
SMALL = ["--set", "discussion.turns=2", "--set", "annotation.annotators.per_comment=1"]
REPO = "lab/smoke-release"


def cli(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def local_rows(run: Path, config: str) -> list[dict]:
    return load_dataset(str(run / "dataset"), config, split="train").to_list()


def key(row: dict) -> tuple:
    return tuple(
        str(row.get(k)) for k in ("comment_id", "discussion_id", "annotator_id", "dimension")
    )


@pytest.fixture
def released(hub_server, tmp_path):
    run = tmp_path / "run"
    done = cli("build", RECIPE, *SMALL, "--set", "replicates=1", "--out", str(run))
    assert done.exit_code == 0, done.output
    pushed = cli("push", str(run), "--repo", REPO)
    assert pushed.exit_code == 0, pushed.output
    return run


def test_push_then_load_at_tag_gives_the_local_rows(hub_server, released):
    assert "v0.1.0" in hub_server.tags(REPO)
    for config in ("discussions", "comments", "annotations"):
        remote = load_dataset(REPO, config, split="train", revision="v0.1.0").to_list()
        assert sorted(remote, key=key) == sorted(local_rows(released, config), key=key)


def test_repush_is_a_no_op_and_new_version_keeps_the_old_tag(hub_server, released):
    commits = hub_server.commit_count(REPO)
    again = cli("push", str(released), "--repo", REPO)
    assert again.exit_code == 0, again.output
    assert hub_server.commit_count(REPO) == commits

    old_comments = local_rows(released, "comments")
    more = cli(
        "build",
        RECIPE,
        *SMALL,
        "--set",
        "replicates=2",
        "--set",
        "version=0.2.0",
        "--out",
        str(released),
        "--push",
        "--repo",
        REPO,
    )
    assert more.exit_code == 0, more.output
    assert set(hub_server.tags(REPO)) == {"v0.1.0", "v0.2.0"}
    v1 = load_dataset(REPO, "comments", split="train", revision="v0.1.0").to_list()
    v2 = load_dataset(REPO, "comments", split="train", revision="v0.2.0").to_list()
    assert sorted(v1, key=key) == sorted(old_comments, key=key)
    assert len(v2) > len(v1)
    assert {r["comment_id"] for r in v1} <= {r["comment_id"] for r in v2}


def test_different_content_under_an_existing_tag_is_refused(hub_server, released, tmp_path):
    other = tmp_path / "other"
    done = cli(
        "build", RECIPE, *SMALL, "--set", "replicates=1", "--set", "seed=5", "--out", str(other)
    )
    assert done.exit_code == 0, done.output
    commits = hub_server.commit_count(REPO)
    refused = cli("push", str(other), "--repo", REPO)
    assert refused.exit_code == 1
    assert "v0.1.0" in refused.output and "version" in refused.output
    assert hub_server.commit_count(REPO) == commits


def test_failed_commit_leaves_no_tag_and_retry_succeeds(hub_server, tmp_path):
    run = tmp_path / "run"
    assert cli("build", RECIPE, *SMALL, "--set", "replicates=1", "--out", str(run)).exit_code == 0
    hub_server.fail_next("commit", status=500)
    failed = cli("push", str(run), "--repo", REPO)
    assert failed.exit_code == 1 and "Traceback" not in failed.output
    assert hub_server.tags(REPO) == {}
    retried = cli("push", str(run), "--repo", REPO)
    assert retried.exit_code == 0, retried.output
    assert "v0.1.0" in hub_server.tags(REPO)
