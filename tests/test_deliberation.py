"""`recipes/deliberation.yaml` end to end on the tiny model, as a user runs it: structures
compared as a factor on the same tasks and agents; a build killed in the middle of its
structures resumes to the same dataset, with each combiner's `auto` instructions written once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "deliberation.yaml"
SETS = ["replicates=2"]  # 4 structures x 2 replicates = 8 discussions in 2 shards


def build(out: Path, *extra: str, kill_at: str | None = None):
    env = {**os.environ, "SYNTH_DISCO_KILL_AT": kill_at or ""}
    args = [sys.executable, "-m", "synth_disco", "build", str(RECIPE), "--out", str(out)]
    for s in SETS:
        args += ["--set", s]
    return subprocess.run([*args, *extra], env=env, capture_output=True, text=True, timeout=600)


def rows(run: Path, config: str) -> list[dict]:
    files = sorted((run / "dataset" / "data" / config).glob("*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deliberation") / "run"
    done = build(out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_structures_are_compared_on_the_same_tasks_and_agents(reference):
    discussions = rows(reference, "discussions")
    comments = rows(reference, "comments")
    assert len(discussions) == 8 and {d["status"] for d in discussions} == {"ok"}
    assert {(d["deliberation"], d["structure"]) for d in discussions} == {
        ("ensemble", "ensemble"),
        ("chain", "chain"),
        ("debate", "debate"),
        ("graph", "graph"),
    }
    for r in (0, 1):
        cells = {d["deliberation"]: d for d in discussions if d["replicate"] == r}
        assert len({d["post_id"] for d in cells.values()}) == 1  # the same task
        people = {k: [p["persona"]["id"] for p in d["participants"]] for k, d in cells.items()}
        assert people["ensemble"] == people["chain"] == people["graph"]
        assert people["debate"] == people["chain"][:2]  # the debate's two are among them
        assert len({d["task"] for d in cells.values()}) == 1
    for d in discussions:
        mine = sorted(
            (c for c in comments if c["discussion_id"] == d["discussion_id"]),
            key=lambda c: c["index"],
        )
        n = len(d["participants"])
        responses = [c for c in mine if c["cycle"] is not None]
        assert len(responses) == n * 2 == d["turns"]  # every agent once per cycle, 2 cycles
        assert mine[0]["role"] == "op" and mine[0]["text"] == d["task"]
        assert Counter(c["cycle"] for c in responses) == {1: n, 2: n}
        final = mine[-1]
        assert final["role"] == "moderator" and final["text"] == d["final_response"]
        assert final["parent_ids"] == [c["comment_id"] for c in responses if c["cycle"] == 2]
        assert d["moderator_instructions"]  # written by the model (`auto`)
        assert d["moderator"]["policy"] == "combiner" and d["moderator"]["instructions"] == "auto"
        ids = {c["comment_id"] for c in mine}
        assert all(set(c["parent_ids"]) <= ids for c in mine)
        if d["structure"] == "graph":
            assert d["orders"] == [[0, 1, 2], [0, 1, 2]]
        else:  # shuffled per cycle, recorded
            assert all(sorted(o) == list(range(n)) for o in d["orders"])


def test_every_structure_comment_points_at_its_prompt_and_exports_with_it(reference, tmp_path):
    prompts = {p["prompt_id"]: p for p in rows(reference, "prompts")}
    discussions = {d["discussion_id"]: d for d in rows(reference, "discussions")}
    generated = [c for c in rows(reference, "comments") if c["role"] in ("user", "moderator")]
    assert len(generated) == sum(d["turns"] + 1 for d in discussions.values())  # + the final
    for c in generated:
        prompt = prompts[c["prompt_id"]]  # not None, and in the `prompts` config
        d = discussions[c["discussion_id"]]
        if c["role"] == "moderator":
            assert prompt["role"] == "moderator"
            assert d["moderator_instructions"] in prompt["system"]  # the `auto` instructions
        else:
            assert prompt["role"] == "participant" and c["author"] in prompt["system"]
            persona = next(p["persona"] for p in d["participants"] if p["name"] == c["author"])
            assert persona["description"] in prompt["system"]
    # Agents with different personas answer from different prompts; one agent from one.
    by_persona: dict[tuple[str, str], set[str]] = {}
    for c in generated:
        if c["role"] == "user":
            by_persona.setdefault((c["discussion_id"], c["persona_id"]), set()).add(c["prompt_id"])
    assert all(len(ids) == 1 for ids in by_persona.values())
    for did in discussions:
        mine = [ids for (d, _), ids in by_persona.items() if d == did]
        assert len(set().union(*mine)) == len(mine) == len(discussions[did]["participants"])
    # SynDisco's logs: each structure comment carries the system message it was made from.
    done = subprocess.run(
        [sys.executable, "-m", "synth_disco", "export", str(reference), "--format", "syndisco"]
        + ["--out", str(tmp_path / "logs")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for did in discussions:
        logs = json.loads((tmp_path / "logs" / f"{did}.json").read_text())["logs"]
        mine = sorted((c for c in generated if c["discussion_id"] == did), key=lambda c: c["index"])
        assert logs[0]["model"] == "hardcoded"  # the task
        assert len(logs) == len(mine) + 1
        for entry, c in zip(logs[1:], mine, strict=True):
            system = json.loads(entry["prompt"])["system"]
            assert entry["text"] == c["text"] and system == prompts[c["prompt_id"]]["system"]
            assert system


def test_survey_weights_never_reach_a_prompt(reference):
    personas = [r for r in rows(reference, "personas") if r["pool"] == "respondents"]
    assert personas
    for p in personas:
        fields = {f["key"]: f["value"] for f in p["fields"]}
        assert p["description"].startswith(f"A {fields['age']}-year-old")
        assert fields["weight"] not in p["description"] and "weight" not in p["description"]


def test_card_describes_each_structure_and_show_prints_one(reference):
    card = (reference / "dataset" / "README.md").read_text()
    for kind in ("ensemble", "chain", "debate", "graph"):
        assert f"#### `{kind}`" in card
    assert card.count("```mermaid") == 4
    assert "proposer --> critic" not in card  # nodes are drawn by id, labelled by name
    assert 'a0["proposer"]' in card and "a0 --> a1" in card and "a1 --> a2" in card
    assert "Prompt template `auto_instructions`" in card
    discussion = next(d for d in rows(reference, "discussions") if d["structure"] == "debate")
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "synth_disco",
            "show",
            str(reference),
            "--discussion",
            discussion["discussion_id"],
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert out.startswith("debate, 2 cycles, ok")
    assert "cycle 1" in out and "cycle 2" in out and "saw: the task" in out
    assert "moderator instructions" in out and "final response by Moderator" in out
    assert discussion["final_response"].splitlines()[0][:40] in out


def instruction_records(run: Path) -> Counter:
    counts: Counter = Counter()
    for path in (run / "journal" / "discuss").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["t"] == "instructions":
                counts[record["d"]] += 1
    return counts


# Each build is killed at the next point and resumed by the next one.
# (A chain of 3 agents over 2 cycles takes 6 steps, its combiner a 7th.)
KILL_POINTS = [
    "discuss.step:1",  # the `auto` instructions and the first agents are journaled
    "discuss.step:2",  # mid-structure: chains and debates half way through a cycle
    "discuss.step:3",  # into the second cycle
    "shard.write:1",  # the combiners have answered; a shard's files written, not its marker
]


def test_killed_mid_structure_resumes_to_the_same_dataset(reference, tmp_path):
    out = tmp_path / "run"
    killed = build(out, kill_at=KILL_POINTS[0])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    first = instruction_records(out)
    assert first and all(n == 1 for n in first.values())
    for kill_at in KILL_POINTS[1:]:
        killed = build(out, kill_at=kill_at)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr[-2000:])
    resumed = build(out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for config, key in (
        ("discussions", "discussion_id"),
        ("comments", "comment_id"),
        ("annotations", "comment_id"),
    ):
        got, want = rows(out, config), rows(reference, config)
        assert len({r[key] for r in got}) == len(got) or config == "annotations"
        assert sorted(got, key=lambda r: json.dumps(r, sort_keys=True)) == sorted(
            want, key=lambda r: json.dumps(r, sort_keys=True)
        ), config
    # Written once per discussion, then reused from the journal by every resumed build.
    counts = instruction_records(out)
    assert len(counts) == 8 and set(counts.values()) == {1}
