"""Deliberation structures: what each agent is shown, order, the combiner, `auto` instructions.

The structures run through the batched runner on the tiny model (the transformers code path),
with the engine wrapped to keep every request. What an agent is shown is checked against the
rules of each structure written out here again (not read back from the code), on the prompts
the engine really received.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections import Counter
from pathlib import Path

import pytest

from fakes import FakeEngine, make_spec
from synth_disco.discussion.stage import DiscussionRunner
from synth_disco.discussion.structure_state import StructureState
from synth_disco.discussion.structures import Structure, order_seed
from synth_disco.engines.base import ChatRequest, Completion, EngineConfig
from synth_disco.recipe.schema import DiscussionConfig
from synth_disco.seeds import derive_seed
from synth_disco.store.run_dir import RunStore


class Recording:
    """An engine wrapper that keeps every request it was sent, and the size of each call."""

    def __init__(self, inner):
        self.inner = inner
        self.requests: dict[str, ChatRequest] = {}
        self.calls: list[list[str]] = []

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        self.calls.append([r.id for r in requests])
        self.requests.update({r.id: r for r in requests})
        return self.inner.generate(requests)


@pytest.fixture(scope="module")
def tiny():
    from synth_disco.engines.registry import load_engine

    engine = load_engine(EngineConfig("tiny", engine="tiny"))
    yield engine
    engine.close()


def structure_spec(
    structure: str,
    *,
    n: int = 3,
    cycles: int = 2,
    replicate: int = 0,
    discussion_id: str | None = None,
    recipe_seed: int = 5,
    seed: int | None = None,
    **discussion,
):
    """A structured discussion's spec; ``seed`` is the discussion's own seed (the plan derives
    it from the recipe seed and the discussion id: ``plan_seed``)."""
    spec = make_spec(
        n=n,
        discussion_id=discussion_id or f"{structure}-r{replicate:05d}",
        seed=zlib.crc32((discussion_id or structure).encode()) % 1000 + replicate
        if seed is None
        else seed,
        extra={"structure": structure, "cycles": cycles, **discussion},
    )
    config = {
        **spec.config,
        "seed": recipe_seed,
        # Sampled, so that the responses of one discussion differ from each other.
        "models": {
            "m": {"engine": "tiny", "model": "tiny", "max_new_tokens": 12, "temperature": 1.0}
        },
    }
    return dataclasses.replace(spec, config=config, replicate=replicate)


def run(tmp_path: Path, specs, engine, **kw):
    store = RunStore(tmp_path)
    recording = Recording(engine)
    result = DiscussionRunner(store, lambda s: specs, lambda cfg: recording, [], **kw).run([0])
    assert result.failed == 0, result.failures
    comments = store.read_shard("discuss", 0, "comments").to_pylist()
    discussions = store.read_shard("discuss", 0, "discussions").to_pylist()
    return comments, discussions, recording


def responses_of(comments, did):
    return [c for c in comments if c["discussion_id"] == did and c["cycle"] is not None]


def prompt_of(recording: Recording, spec, row) -> str:
    slot = [p.name for p in spec.participants].index(row["author"])
    rid = f"{spec.discussion_id}/c{row['cycle']}s{slot}/0.{row['attempts'] - 1}"
    return recording.requests[rid].messages[-1]["content"]


def expected_seen(kind: str, rows, row, last_n=None, ins=None, names=None):
    """The responses ``row``'s author may see, by the structure's rule, oldest first."""
    key = lambda r: (r["cycle"], r["position"])  # noqa: E731
    if kind == "ensemble":
        seen = [r for r in rows if r["cycle"] < row["cycle"]]
    elif kind == "graph":
        mine = names.index(row["author"])
        seen = [
            r for r in rows if names.index(r["author"]) in ins[mine] and r["cycle"] <= row["cycle"]
        ]
    else:  # chain, debate
        seen = [r for r in rows if key(r) < key(row)]
    seen.sort(key=key)
    return seen[-last_n:] if last_n else seen


def check_visibility(spec, comments, recording, kind, **rule):
    rows = responses_of(comments, spec.discussion_id)
    task = [c for c in comments if c["discussion_id"] == spec.discussion_id][0]
    long = [r for r in rows if len(r["text"]) >= 12]
    assert len(long) >= len(rows) - 1, "the tiny model's texts are too short to tell apart"
    for row in rows:
        prompt = prompt_of(recording, spec, row)
        seen = expected_seen(kind, rows, row, **rule)
        for r in seen:
            assert r["text"] in prompt, (row["comment_id"], r["comment_id"])
        for r in long:
            if r not in seen:
                assert r["text"] not in prompt, (row["comment_id"], "shown", r["comment_id"])
        assert row["parent_ids"] == ([r["comment_id"] for r in seen] or [task["comment_id"]])
        assert task["text"] in prompt  # the task, always
    return rows


@pytest.mark.parametrize("last_n", [None, 2])
def test_chain_agent_sees_every_earlier_response_up_to_last_n(tmp_path, tiny, last_n):
    spec = structure_spec("chain", n=3, cycles=2, last_n=last_n)
    comments, _, recording = run(tmp_path, [spec], tiny)
    rows = check_visibility(spec, comments, recording, "chain", last_n=last_n)
    assert len(rows) == 6
    assert [(r["cycle"], r["position"]) for r in rows] == [(c, p) for c in (1, 2) for p in range(3)]
    # One agent at a time: 6 engine calls, one request each.
    assert [len(c) for c in recording.calls] == [1] * 6


def test_ensemble_answers_a_cycle_in_one_call_and_sees_earlier_cycles_only(tmp_path, tiny):
    spec = structure_spec("ensemble", n=4, cycles=3, last_n=5)
    comments, _, recording = run(tmp_path, [spec], tiny)
    rows = check_visibility(spec, comments, recording, "ensemble", last_n=5)
    assert len(rows) == 12
    assert [len(c) for c in recording.calls] == [4, 4, 4]  # a cycle per call
    first = [r for r in rows if r["cycle"] == 1]
    assert all(r["parent_ids"] == [comments[0]["comment_id"]] for r in first)  # the task


@pytest.mark.parametrize("kind", ["ensemble", "debate"])
def test_only_prompts_a_later_cycle_extends_are_kept_for_reuse(tmp_path, tiny, kind):
    # An agent's next cycle starts with the prompt of its answer in this one; nothing starts
    # with a last-cycle prompt, so the engine is told not to keep those (ChatRequest).
    spec = structure_spec(kind, n=2, cycles=3)
    _, _, recording = run(tmp_path, [spec], tiny)
    assert len(recording.requests) == 6
    for rid, request in recording.requests.items():
        assert request.keep_prefix == ("/c3s" not in rid), rid


def test_debate_marks_own_and_other_responses(tmp_path, tiny):
    spec = structure_spec("debate", n=2, cycles=3)
    comments, _, recording = run(tmp_path, [spec], tiny)
    rows = check_visibility(spec, comments, recording, "debate")
    assert len(rows) == 6
    marked = 0
    for row in rows:
        prompt = prompt_of(recording, spec, row)
        for r in expected_seen("debate", rows, row):
            label = "You" if r["author"] == row["author"] else "The other debater"
            assert f"[{label}, round {r['cycle']}]\n{r['text']}" in prompt
            marked += 1
    assert marked == 15  # 0 + 1 + ... + 5 earlier responses shown in all


def test_graph_agent_sees_its_in_neighbours_only_in_kahn_order(tmp_path, tiny):
    # 0 -> 2, 1 -> 2, 2 -> 3, 0 -> 3 (by name and by index): levels [0, 1], [2], [3].
    nodes = ["scout", "skeptic", "drafter", "editor"]
    graph = {"nodes": nodes, "edges": [["scout", "drafter"], [1, 2], [2, "editor"], [0, 3]]}
    spec = structure_spec("graph", n=4, cycles=2, graph=graph)
    comments, discussions, recording = run(tmp_path, [spec], tiny)
    names = [p.name for p in spec.participants]
    ins = {0: [], 1: [], 2: [0, 1], 3: [0, 2]}
    rows = check_visibility(spec, comments, recording, "graph", ins=ins, names=names)
    assert len(rows) == 8
    assert [len(c) for c in recording.calls] == [2, 1, 1, 2, 1, 1]  # level by level
    assert discussions[0]["orders"] == [[0, 1, 2, 3], [0, 1, 2, 3]]
    drafter = [r for r in rows if r["author"] == names[2] and r["cycle"] == 1][0]
    prompt = prompt_of(recording, spec, drafter)
    assert "[scout, round 1]" in prompt and "[skeptic, round 1]" in prompt  # named nodes


def test_combiner_sees_every_final_cycle_response(tmp_path, tiny):
    mod = {"name": "Chair", "role": "combiner", "instructions": "Be fair."}
    specs = [
        structure_spec("chain", n=3, cycles=2, last_n=1, moderator=mod),
        structure_spec("debate", n=2, cycles=2, moderator=mod),
    ]
    comments, discussions, recording = run(tmp_path, specs, tiny)
    for spec, row in zip(specs, discussions, strict=True):
        mine = [c for c in comments if c["discussion_id"] == spec.discussion_id]
        final = mine[-1]
        assert final["role"] == "moderator" and final["cycle"] is None
        assert row["final_response"] == final["text"]
        last = [r for r in responses_of(comments, spec.discussion_id) if r["cycle"] == 2]
        assert final["parent_ids"] == [r["comment_id"] for r in last]
        request = recording.requests[f"{spec.discussion_id}/final/0.0"]
        system, user = (m["content"] for m in request.messages)
        assert "Be fair." in system
        for r in last:
            assert r["text"] in user
        if spec.config["discussion"]["structure"] == "debate":
            for r in last:
                slot = [p.name for p in spec.participants].index(r["author"])
                assert f"[Debater {slot + 1}, round 2]\n{r['text']}" in user
        earlier = [r for r in responses_of(comments, spec.discussion_id) if r["cycle"] == 1]
        assert not any(len(r["text"]) >= 12 and r["text"] in user for r in earlier)


def test_every_response_points_at_the_prompt_it_was_made_from(tmp_path, tiny):
    mod = {"name": "Chair", "role": "combiner", "instructions": "Be fair.", "task": "Judge it."}
    spec = structure_spec("chain", n=3, cycles=2, moderator=mod, context="A town meeting.")
    store = RunStore(tmp_path)
    recording = Recording(tiny)
    DiscussionRunner(store, lambda s: [spec], lambda cfg: recording, []).run([0])
    comments = store.read_shard("discuss", 0, "comments").to_pylist()
    prompts = {p["prompt_id"]: p for p in store.read_shard("discuss", 0, "prompts").to_pylist()}
    names = [p.name for p in spec.participants]
    by_agent: dict[str, set[str]] = {}
    for c in comments[1:]:
        prompt = prompts[c["prompt_id"]]
        key = "final" if c["cycle"] is None else f"c{c['cycle']}s{names.index(c['author'])}"
        system = recording.requests[f"{spec.discussion_id}/{key}/0.0"].messages[0]["content"]
        assert prompt["system"] == system  # the system message it was really made from
        templates = [t["name"] for t in prompt["templates"]]
        if c["role"] == "moderator":
            assert prompt["role"] == "moderator" and "Be fair." in system
            assert templates == ["combiner_task", "combiner_turn", "combiner_combination"]
        else:
            assert prompt["role"] == "participant" and c["author"] in system
            assert templates == ["task", "agent_turn", "combination"]
            by_agent.setdefault(c["author"], set()).add(c["prompt_id"])
    assert comments[0]["prompt_id"] is None  # the task
    # One prompt per agent (its persona is in its system message), the same in every cycle.
    assert all(len(ids) == 1 for ids in by_agent.values()) and len(by_agent) == 3
    assert len(set().union(*by_agent.values())) == 3 and len(prompts) == 4


def plan_seed(discussion_id: str, recipe_seed: int = 5) -> int:
    """A discussion's seed as ``design/plan.py`` derives it."""
    return derive_seed(recipe_seed, discussion_id)


def shuffled(structure: str, did: str, replicate: int = 0, **kw):
    return structure_spec(
        structure,
        n=4,
        cycles=3,
        shuffle=True,
        replicate=replicate,
        discussion_id=did,
        seed=plan_seed(did),
        **kw,
    )


def test_shuffle_is_drawn_per_discussion_and_cycle_and_recorded(tmp_path, tiny):
    # Two cells of one replicate: the same agents and task, each with its own seed.
    a, b = shuffled("chain", "a-r00000"), shuffled("ensemble", "b-r00000")
    comments, discussions, _ = run(tmp_path / "first", [a, b], tiny)
    orders = {d["discussion_id"]: d["orders"] for d in discussions}
    cfg = DiscussionConfig(structure="chain", participants=4, shuffle=True)
    for spec, row in zip((a, b), discussions, strict=True):
        got = orders[spec.discussion_id]
        assert all(sorted(o) == [0, 1, 2, 3] for o in got) and len(got) == 3
        names = [p.name for p in spec.participants]
        for r in responses_of(comments, spec.discussion_id):  # each response records its place
            assert got[r["cycle"] - 1][r["position"]] == names.index(r["author"])
        # Drawn from the discussion's recorded seed and the cycle: reproducible from the row.
        assert got == [Structure(cfg, 4, order_seed(row["seed"])).order(c) for c in (1, 2, 3)]
        assert len({tuple(o) for o in got}) > 1  # drawn anew each cycle
    assert orders["a-r00000"] != orders["b-r00000"]  # each cell of the replicate its own
    # A rebuild draws the same orders.
    _, again, _ = run(tmp_path / "again", [a, b], tiny)
    assert {d["discussion_id"]: d["orders"] for d in again} == orders


def test_shuffled_orders_are_the_same_after_a_resume(tmp_path):
    spec = shuffled("chain", "a-r00000")
    store = RunStore(tmp_path / "resumed")
    steps = {"n": 0}

    def stop() -> bool:
        steps["n"] += 1
        return steps["n"] > 6  # half way through cycle 2

    runner = DiscussionRunner(
        store, lambda s: [spec], lambda cfg: FakeEngine(), [], should_stop=stop
    )
    assert runner.run([0]).stopped
    DiscussionRunner(store, lambda s: [spec], lambda cfg: FakeEngine(), []).run([0])
    resumed = store.read_shard("discuss", 0, "discussions").to_pylist()
    comments, whole, _ = run(tmp_path / "whole", [spec], FakeEngine())
    assert resumed[0]["orders"] == whole[0]["orders"]
    placed = [(r["cycle"], r["position"], r["author"]) for r in comments if r["cycle"]]
    again = store.read_shard("discuss", 0, "comments").to_pylist()
    assert [(r["cycle"], r["position"], r["author"]) for r in again if r["cycle"]] == placed


def test_orders_are_independent_across_cells_and_cycles():
    """Over 600 replicates of two cells (4 agents: 24 orders), two orders agree about 1/24 of
    the time: between the cells of a replicate (they always did when the order was drawn per
    replicate) and between the cycles of a discussion. Who goes first is uniform."""
    n = 600
    same_cells = same_cycles = 0
    firsts: Counter = Counter()
    for rep in range(n):
        chain, ensemble = (
            StructureState(shuffled(kind, f"{kind}-r{rep:05d}", replicate=rep)).structure
            for kind in ("chain", "ensemble")
        )
        same_cells += chain.order(1) == ensemble.order(1)
        same_cycles += chain.order(1) == chain.order(2)
        firsts[chain.order(1)[0]] += 1
    for same in (same_cells, same_cycles):
        assert n / 24 / 2 < same < n / 24 * 2, same
    assert set(firsts) == {0, 1, 2, 3} and all(abs(k - n / 4) < 40 for k in firsts.values())
    unshuffled = structure_spec("chain", n=4, cycles=3, seed=plan_seed("chain-r00000"))
    state = StructureState(unshuffled)
    assert [state.structure.order(c) for c in (1, 2, 3)] == [[0, 1, 2, 3]] * 3


def test_auto_instructions_written_once_retried_when_empty_and_reused_after_resume(tmp_path):
    mod = {
        "name": "Chair",
        "role": "combiner",
        "instructions": "auto",
        "task": "Judge: {{ post.text }}",
    }
    specs = [
        structure_spec("ensemble", n=3, cycles=2, moderator=mod, discussion_id=f"e{i}-r00000")
        for i in range(3)
    ]

    def reply(r: ChatRequest) -> str:
        if "/instructions/0.0" in r.id and r.id.startswith("e1"):
            return "   "  # empty: asked again with a seed derived from the attempt
        if "/instructions/" in r.id:
            return f"Weigh every answer, seed {r.seed}."
        return f"answer {r.id}"

    store = RunStore(tmp_path)
    first = Recording(FakeEngine(reply))
    steps = {"n": 0}

    def stop() -> bool:
        steps["n"] += 1
        return steps["n"] > 2  # two steps: the instructions (and their retry) are journaled

    runner = DiscussionRunner(store, lambda s: specs, lambda cfg: first, [], should_stop=stop)
    assert runner.run([0]).stopped
    second = Recording(FakeEngine(reply))
    DiscussionRunner(store, lambda s: specs, lambda cfg: second, []).run([0])

    asked = [rid for call in first.calls + second.calls for rid in call if "/instructions/" in rid]
    assert sorted(asked) == sorted(
        ["e0-r00000/instructions/0.0", "e1-r00000/instructions/0.0", "e1-r00000/instructions/0.1"]
        + ["e2-r00000/instructions/0.0"]
    )
    assert not any("/instructions/" in rid for call in second.calls for rid in call)
    seeds = {rid: first.requests[rid].seed for rid in asked}
    assert seeds["e1-r00000/instructions/0.0"] != seeds["e1-r00000/instructions/0.1"]
    # The instructions prompt carries the moderator's own task, not the agents'.
    prompt = first.requests["e0-r00000/instructions/0.0"].messages[-1]["content"]
    assert "Judge: Should cities ban cars" in prompt
    rows = {
        d["discussion_id"]: d for d in store.read_shard("discuss", 0, "discussions").to_pylist()
    }
    for spec in specs:
        did = spec.discussion_id
        text = rows[did]["moderator_instructions"]
        assert (
            text
            == f"Weigh every answer, seed {seeds[[a for a in asked if a.startswith(did)][-1]]}."
        )
        final = second.requests[f"{did}/final/0.0"]
        assert text in final.messages[0]["content"]  # the combiner follows them
        assert "Judge: Should cities ban cars" in final.messages[1]["content"]
    # The auto call shares the first engine call with the agents of cycle 1.
    assert len(first.calls[0]) == 3 * (1 + 3)


def test_a_structure_step_batches_many_discussions(tmp_path):
    specs = [structure_spec("chain", n=3, cycles=1, discussion_id=f"c{i}-r00000") for i in range(5)]
    specs += [
        structure_spec("ensemble", n=3, cycles=1, discussion_id=f"e{i}-r00000") for i in range(5)
    ]
    engine = Recording(FakeEngine())
    DiscussionRunner(RunStore(tmp_path), lambda s: specs, lambda cfg: engine, []).run([0])
    # Step 1: 5 chains x 1 agent + 5 ensembles x 3 agents; then the chains' next agents.
    assert [len(c) for c in engine.calls] == [20, 5, 5]


def test_a_retried_ensemble_agent_still_sees_nothing_of_its_own_cycle(tmp_path):
    spec = structure_spec("ensemble", n=3, cycles=1)

    def reply(r: ChatRequest) -> str:
        return "" if r.id.endswith("/c1s1/0.0") else f"answer from {r.id}"

    comments, _, engine = run(tmp_path, [spec], FakeEngine(reply))
    assert [len(c) for c in engine.calls] == [3, 1]  # the empty answer is asked again alone
    retried = engine.requests[f"{spec.discussion_id}/c1s1/0.1"]
    assert "answer from" not in retried.messages[-1]["content"]
    assert retried.seed != engine.requests[f"{spec.discussion_id}/c1s1/0.0"].seed
    row = [r for r in responses_of(comments, spec.discussion_id) if r["attempts"] == 2][0]
    assert row["position"] == 1 and row["parent_ids"] == [comments[0]["comment_id"]]


# -- recipe errors ---------------------------------------------------------------------------

BASE = """\
name: s
models: {m: {engine: tiny}}
personas: {users: [a, b, c, d]}
posts: [What should the town do about parking?]
discussion:
"""


def validate(tmp_path: Path, body: str):
    from click.testing import CliRunner

    from synth_disco.cli import main

    path = tmp_path / "recipe.yaml"
    path.write_text(BASE + body)
    result = CliRunner().invoke(main, ["validate", str(path)])
    return path.read_text().splitlines(), result


def line_of(lines: list[str], text: str) -> int:
    return next(i for i, ln in enumerate(lines, 1) if text in ln)


@pytest.mark.parametrize(
    ("body", "at", "key", "words"),
    [
        (
            "  structure: graph\n  participants: 3\n  graph:\n    edges:\n"
            "      - [0, 1]\n      - [1, 2]\n      - [2, 0]\n",
            "- [2, 0]",
            "discussion.graph.edges.2",
            "edge [2, 0] closes a cycle (0 -> 1 -> 2 -> 0)",
        ),
        (
            "  structure: graph\n  participants: 3\n  graph:\n    nodes: [liberal, moderate, green]\n"
            "    edges:\n      - [liberal, moderate]\n      - [moderate, conservative]\n",
            "[moderate, conservative]",
            "discussion.graph.edges.1.1",
            "no agent 'conservative' (agents: 0-2, or liberal, moderate, green)",
        ),
        (
            "  structure: graph\n  participants: 3\n  graph: {edges: [[0, 3]]}\n",
            "edges: [[0, 3]]",
            "discussion.graph.edges.0.1",
            "no agent 3",
        ),
        (
            "  structure: debate\n  participants: 3\n",
            "participants: 3",
            "discussion.participants",
            "a debate has exactly two participants, not 3",
        ),
        (
            "  moderator: {role: combiner}\n",
            "moderator:",
            "discussion.moderator.role",
            "a combiner writes the final response of a deliberation structure",
        ),
        (
            "  structure: chain\n  moderator: {policy: every_k}\n",
            "moderator:",
            "discussion.moderator.role",
            "set role: combiner",
        ),
        (
            "  structure: chain\n  combination: chian\n",
            "combination: chian",
            "discussion.combination",
            "no combination preset 'chian'",
        ),
        (
            "  structure: chain\n  task: 'Discuss {{ post.body }}'\n",
            "task:",
            "discussion.task",
            "template does not render",
        ),
    ],
    ids=[
        "graph-cycle",
        "unknown-agent-name",
        "unknown-agent-index",
        "debate-three",
        "combiner-in-forum",
        "forum-moderator-in-chain",
        "preset-typo",
        "task-template",
    ],
)
def test_structure_errors_name_file_line_and_key(tmp_path, body, at, key, words):
    lines, result = validate(tmp_path, body)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    want = f"recipe.yaml:{line_of(lines, at)}:"
    hits = [ln for ln in result.stderr.splitlines() if want in ln and f" {key}:" in ln]
    assert hits and any(words in ln for ln in hits), result.stderr


def test_a_debate_level_is_blamed_for_the_base_participants(tmp_path):
    body = (
        "  participants: 3\n"
        "factors:\n"
        "  form:\n"
        "    chain: {discussion.structure: chain}\n"
        "    debate: {discussion.structure: debate}\n"
    )
    lines, result = validate(tmp_path, body)
    assert result.exit_code == 2
    want = f"recipe.yaml:{line_of(lines, 'debate: {')}:"
    problems = [ln for ln in result.stderr.splitlines() if "recipe.yaml:" in ln]
    assert len(problems) == 1, result.stderr  # the chain level with 3 participants is fine
    assert want in problems[0] and " discussion.participants:" in problems[0]
    assert "exactly two participants" in problems[0] and "'form' is 'debate'" in problems[0]


def test_structure_template_checks_know_every_variable_the_prompts_pass(tmp_path):
    """Templates naming every variable of the validation's sample context render in a run
    (the checker and the structures' prompt builders agree on the names)."""
    from synth_disco.recipe.templates import sample_context

    def naming_all(kind: str, *shown: str) -> str:
        tests = " ".join("{{ " + name + " is defined }}" for name in sample_context(kind))
        return " ".join([tests, *("{{ " + s + " }}" for s in shown)])

    templates = {
        "agent_system": naming_all("agent_system"),
        "agent_turn": naming_all("agent_turn", "previous", "task"),
        "combiner_system": naming_all("combiner_system"),
        "combiner_turn": naming_all("combiner_turn", "combined", "task"),
        "auto_instructions": naming_all("auto_instructions", "task"),
    }
    mod = {
        "role": "combiner",
        "instructions": "auto",
        "task": naming_all("task"),
        "combination": naming_all("combination"),
    }
    spec = structure_spec(
        "chain",
        n=2,
        cycles=2,
        task=naming_all("task"),
        combination=naming_all("combination"),
        templates=templates,
        moderator=mod,
    )
    _, _, engine = run(tmp_path, [spec], FakeEngine())
    texts = [m["content"] for r in engine.requests.values() for m in r.messages]
    assert len(engine.requests) == 2 * 2 + 2  # agents, the instructions, the final response
    assert texts and all(set(t.split()) == {"True"} for t in texts), texts


def test_plan_counts_the_calls_structures_make():
    from synth_disco.design.plan import plan
    from synth_disco.recipe.load import load_recipe

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "deliberation.yaml"
    summary = plan(load_recipe(recipe)).summary()
    # Per replicate: ensemble, chain and graph 3 agents x 2 cycles, debate 2 x 2.
    assert summary.turns == 3 * (6 + 6 + 4 + 6)
    assert summary.moderator_calls == 12 * 2  # each combiner: `auto` instructions + final
    # Annotated: every response and every final response, one annotator, one dimension
    # (the instructions are not a comment).
    assert summary.annotation_calls == 66 + 12
