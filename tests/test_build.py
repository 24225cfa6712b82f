"""`synth-disco build recipes/smoke.yaml` end to end, as a user runs it."""

from __future__ import annotations

import re
from pathlib import Path

import datasets
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


# -- tables ready for analysis (issue 15) ------------------------------------------------------


def test_readme_pandas_example_runs_with_no_join(run):
    """The README's example, run as written against the smoke dataset: annotations carry the
    factor levels, so the mean label per level needs no join."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("```python", readme.index("so no join is needed"))
    block = readme[start + len("```python") : readme.index("```", start + 3)].strip()
    assert '"annotations"' in block and 'groupby("moderation").label.mean()' in block
    *setup, last = block.replace("runs/my-study/dataset", str(run / "dataset")).splitlines()
    scope: dict = {}
    exec("\n".join(setup), scope)
    means = eval(last, scope)
    assert set(means.index) == {"none", "every_k"}
    annotations = load(run, "annotations")
    for level in ("none", "every_k"):
        mine = [a["label"] for a in annotations if a["moderation"] == level]
        assert means[level] == pytest.approx(sum(mine) / len(mine))


def test_design_columns_on_every_per_discussion_table(run):
    design = {
        d["discussion_id"]: (d["cell_id"], d["moderation"], d["turn_taking"], d["replicate"])
        for d in load(run, "discussions")
    }
    for config in ("comments", "annotations", "aggregates"):
        rows = load(run, config)
        assert rows, config
        for r in rows:
            got = (r["cell_id"], r["moderation"], r["turn_taking"], r["replicate"])
            assert got == design[r["discussion_id"]], config


def test_labels_are_typed_and_keep_their_distribution(run):
    ds = load_dataset(str(run / "dataset"), "annotations", split="train")
    assert ds.features["label"].dtype == "int64"
    assert ds.features["toxicity"].dtype == "int64"  # a scale of integers: its values
    stance = ds.features["stance"]  # categories: a ClassLabel
    assert stance.names == ["agree", "disagree", "neutral"]
    for a in ds:
        if a["dimension"] == "toxicity":
            assert a["label"] == a["toxicity"] == int(a["label_text"]) and a["stance"] is None
        else:
            assert a["label"] == a["stance"] == stance.str2int(a["label_text"])
            assert a["toxicity"] is None
        probs = {s["label"]: s["prob"] for s in a["scores"]}
        assert len(probs) == (5 if a["dimension"] == "toxicity" else 3)
        assert sum(probs.values()) == pytest.approx(1.0)
        assert max(probs, key=probs.get) == a["label_text"]


def test_aggregates_and_agreement_are_published(run):
    annotations = load(run, "annotations")
    for agg in load(run, "aggregates"):
        mine = [
            a
            for a in annotations
            if a["comment_id"] == agg["comment_id"] and a["dimension"] == agg["dimension"]
        ]
        assert agg["n"] == len(mine) == 2
        if agg["dimension"] == "toxicity":
            assert agg["mean"] == pytest.approx(sum(a["label"] for a in mine) / 2)
        assert agg["majority_text"] in {a["label_text"] for a in mine}
        assert agg["majority"] in {a["label"] for a in mine}
    agreement = {r["dimension"]: r for r in load(run, "agreement")}
    assert set(agreement) == {"toxicity", "stance"}
    tox = agreement["toxicity"]
    assert tox["level"] == "ordinal" and tox["n_items"] > 0
    if tox["alpha"] is not None and tox["alpha_low"] is not None:
        assert tox["alpha_low"] <= tox["alpha"] <= tox["alpha_high"]


def test_every_comment_and_label_points_at_its_prompt(run):
    prompts = {p["prompt_id"]: p for p in load(run, "prompts")}
    assert {p["role"] for p in prompts.values()} == {"participant", "moderator", "annotator"}
    for c in load(run, "comments"):
        if c["role"] in ("op", "seed"):
            assert c["prompt_id"] is None
            continue
        prompt = prompts[c["prompt_id"]]
        assert prompt["role"] == ("moderator" if c["role"] == "moderator" else "participant")
        assert [t["name"] for t in prompt["templates"]] == ["turn"]
        assert "online discussion forum" in prompt["system"]
    labels = load(run, "annotations")
    assert {a["prompt_id"] for a in labels} == {
        p for p, row in prompts.items() if row["role"] == "annotator"
    }


def test_persona_attributes_are_typed_columns(run):
    ds = load_dataset(str(run / "dataset"), "personas", split="train")
    assert ds.features["age"].dtype == "int64"
    users = {p["id"]: p for p in ds if p["pool"] == "users"}
    assert users["s1"]["age"] == 30 and users["s1"]["current_employment"] == "baker"
    assert {"key": "age", "value": "30"} in users["s1"]["fields"]  # the key/value list stays
    raters = [p for p in ds if p["pool"] == "annotators"]
    assert raters and all(p["age"] is None for p in raters)  # the pool has no age


def test_a_column_name_has_one_type_in_every_config(run):
    seen: dict[str, tuple[str, str]] = {}
    for config in datasets.get_dataset_config_names(str(run / "dataset")):
        features = load_dataset(str(run / "dataset"), config, split="train").features
        for name, feature in features.items():
            kind = repr(feature)
            if name in seen:
                assert seen[name][1] == kind, (name, seen[name][0], config)
            else:
                seen[name] = (config, kind)
    assert {"index", "replicate", "discussion_id", "prompt_tokens"} <= set(seen)
