"""Discussion semantics: turn-taking distributions, prompts, moderator, cleaning, replay."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from fakes import FakeEngine, make_spec, run_alone
from synth_disco.discussion.cleaning import clean_reply
from synth_disco.discussion.policies import Node, next_turn
from synth_disco.discussion.prompts import builtin_template, templates_for
from synth_disco.discussion.state import DiscussionState
from synth_disco.discussion.templates_used import templates_used
from synth_disco.recipe.load import load_recipe
from synth_disco.recipe.schema import DiscussionConfig, TurnTaking
from synth_disco.recipe.templates import sample_context

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"
SPEAKERS = ["ana", "ben", "cai", "dee"]


def simulate(policy: TurnTaking, turns: int, seed: int) -> list[tuple[Node, str]]:
    """Run a policy alone; returns (comment, who it answered) pairs."""
    history = [Node("op", "OP", None)]
    out = []
    for t in range(turns):
        turn = next_turn(policy, SPEAKERS, history, t, seed)
        node = Node(f"c{t}", turn.speaker, turn.parent_id)
        history.append(node)
        out.append(node)
    return history


def reply_back_rate(p: float) -> float:
    hits = chances = 0
    for seed in range(300):
        history = simulate(TurnTaking(policy="random_weighted", p_respond=p), 12, seed)
        by_id = {n.comment_id: n for n in history}
        for prev, cur in zip(history[1:], history[2:], strict=False):
            answered = by_id.get(prev.parent_id)
            if answered is None or answered.author not in SPEAKERS:
                continue
            if answered.author == prev.author:
                continue
            chances += 1
            hits += cur.author == answered.author
    return hits / chances


def test_p_respond_changes_who_speaks_next():
    rates = {p: reply_back_rate(p) for p in (0.0, 0.4, 1.0)}
    # p=0: the answered author is one of 3 others, drawn uniformly -> 1/3.
    assert rates[0.0] == pytest.approx(1 / 3, abs=0.04)
    # p=0.4: 0.4 + 0.6 * 1/3 = 0.6.
    assert rates[0.4] == pytest.approx(0.6, abs=0.04)
    assert rates[1.0] == 1.0


def test_random_never_repeats_last_speaker_and_is_uniform():
    counts = Counter()
    for seed in range(200):
        history = simulate(TurnTaking(policy="random"), 10, seed)
        for a, b in zip(history[1:], history[2:], strict=False):
            assert a.author != b.author
        counts.update(n.author for n in history[1:])
    expected = sum(counts.values()) / 4
    assert all(abs(c - expected) / expected < 0.1 for c in counts.values())


def test_round_robin_cycles_and_random_first_is_unbiased():
    history = simulate(TurnTaking(policy="round_robin"), 8, seed=3)
    assert [n.author for n in history[1:]] == SPEAKERS * 2
    firsts = Counter(
        simulate(TurnTaking(policy="round_robin", random_first=True), 1, seed)[1].author
        for seed in range(800)
    )
    assert set(firsts) == set(SPEAKERS)
    assert all(abs(c - 200) < 45 for c in firsts.values())


def test_reply_tree_branches():
    op_parents = total = 0
    depth_one_non_last = 0
    for seed in range(200):
        history = simulate(TurnTaking(policy="reply_tree", reply_to_op=0.3), 10, seed)
        by_id = {n.comment_id: n for n in history}
        for i, n in enumerate(history[1:], start=1):
            assert by_id[n.parent_id].author != n.author
            total += 1
            op_parents += n.parent_id == "op"
            depth_one_non_last += n.parent_id not in ("op", history[i - 1].comment_id)
    assert 0.3 < op_parents / total < 0.45  # 0.3 plus the forced first reply to the OP
    assert depth_one_non_last > 0.2 * total  # replies go to earlier comments, not just the last


def test_op_and_seeds_stay_visible_with_authors_and_speaker_named():
    spec = make_spec(turns=10, context_window=2, seed_comments=2)
    engine = FakeEngine()
    state = run_alone(spec, engine)
    last_prompt = engine.calls[-1][0].messages[-1]["content"]
    assert "Should cities ban cars" in last_prompt
    assert "Original post by Original Poster" in last_prompt
    assert "seeder1 replied" in last_prompt
    speaker = state.comments[-1].author
    assert f"You are {speaker}" in last_prompt
    assert "earlier comments not shown" in last_prompt
    assert "{" not in last_prompt  # natural text, not JSON
    # seed comments keep their real authors and are never attributed to participants
    roles = [(c.author, c.role) for c in state.comments[:3]]
    assert roles == [("Original Poster", "op"), ("seeder0", "seed"), ("seeder1", "seed")]
    assert all(c.role == "user" for c in state.comments[3:])
    assert len(state.comments) == 3 + 10


def test_moderator_every_k_and_on_demand():
    mod = {"name": "Mod", "instructions": "Keep it civil.", "policy": "every_k", "k": 2}
    state = run_alone(make_spec(turns=6, moderator=mod), FakeEngine())
    roles = [c.role for c in state.comments[1:]]
    assert roles == ["user", "user", "moderator", "user", "user", "moderator", "user", "user"]

    mod = {"name": "Mod", "policy": "on_demand"}

    def reply(request):
        if "NO INTERVENTION" in request.messages[-1]["content"]:
            return "Mod: NO INTERVENTION."
        return "I think so."

    state = run_alone(make_spec(turns=4, moderator=mod), FakeEngine(reply))
    assert [c.role for c in state.comments[1:]] == ["user"] * 4
    assert [e.kind for e in state.events] == ["no_intervention"] * 3
    assert all(c.text for c in state.comments)


def test_moderator_as_participant_takes_turns():
    mod = {"name": "Mod", "policy": "as_participant"}
    state = run_alone(make_spec(n=2, turns=6, moderator=mod), FakeEngine())
    assert [c.author for c in state.comments[1:]] == ["user0", "user1", "Mod"] * 2


def test_empty_replies_retry_with_new_seed_then_fail():
    seen = []

    def reply(request):
        seen.append(request.seed)
        return "" if len(seen) == 1 else "ok then"

    state = run_alone(make_spec(turns=2), FakeEngine(reply))
    assert state.status == "ok"
    assert state.comments[1].attempts == 2
    assert seen[0] != seen[1]

    state = run_alone(
        make_spec(turns=2, extra={"max_empty_retries": 2}), FakeEngine(lambda r: "  ")
    )
    assert state.status == "failed"
    assert "empty reply" in state.error and "3 attempts" in state.error
    assert [e.kind for e in state.events] == ["failed_turn"]
    assert len(state.comments) == 1


def test_replay_rebuilds_the_same_state():
    spec = make_spec(turns=7, policy={"policy": "random_weighted", "p_respond": 0.5})
    engine = FakeEngine()
    state = DiscussionState(spec)
    records = []
    while not state.done:
        (c,) = engine.generate([state.next_request()])
        records += state.apply(c)
    again = DiscussionState(spec)
    for r in records[:9]:
        again.absorb(r)
    while not again.done:
        (c,) = engine.generate([again.next_request()])
        again.apply(c)
    assert again.comments == state.comments


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("ana: I disagree.", "I disagree."),
        ("**ana**: I disagree.", "I disagree."),
        ("User ana posted: I disagree.", "I disagree."),
        ('"I disagree."', "I disagree."),
        ("\u201cI disagree.\u201d", "I disagree."),
        ("I disagree.\nben: No you don't.", "I disagree."),
        ("I disagree.\n**ben** wrote: nope", "I disagree."),
        ('She said "no" and "yes".', 'She said "no" and "yes".'),
        ("Anastasia is right.", "Anastasia is right."),
        ("ana: ana: twice", "twice"),
    ],
)
def test_cleaning(raw, clean):
    assert clean_reply(raw, "ana", ["ben", "cai"]) == clean


def _system_prompts(engine: FakeEngine) -> dict[str, list[str]]:
    """The system messages the engine was sent, by speaker role (from the request ids)."""
    out: dict[str, list[str]] = {"user": [], "moderator": []}
    for batch in engine.calls:
        for r in batch:
            slot = r.id.split("/")[1]
            out["moderator" if slot.startswith("m") else "user"].append(r.messages[0]["content"])
    return out


def test_moderator_system_template_is_the_moderators_system_prompt():
    """Issue 12, defect 1: ``discussion.templates.moderator_system`` was accepted and never used."""
    mod = {"name": "Mod", "instructions": "Keep it civil.", "policy": "every_k", "k": 2}
    templates = {"moderator_system": "You moderate this forum. {{ context }}"}
    engine = FakeEngine()
    spec = make_spec(turns=4, moderator=mod, extra={"templates": templates, "context": "Be kind."})
    run_alone(spec, engine)
    prompts = _system_prompts(engine)
    assert prompts["moderator"] == ["You moderate this forum. Be kind."]
    assert len(prompts["user"]) == 4
    assert all(p.startswith("You are taking part in an online discussion") for p in prompts["user"])


def test_without_moderator_system_the_moderator_gets_the_system_template_in_use():
    mod = {"name": "Mod", "policy": "after_each"}
    engine = FakeEngine()
    spec = make_spec(
        turns=3, moderator=mod, extra={"templates": {"system": "Rules: {{ context }}"}}
    )
    run_alone(spec, engine)
    prompts = _system_prompts(engine)
    assert prompts["moderator"] == ["Rules:"] * 2
    assert prompts["user"] == ["Rules:"] * 3


def test_templates_used_are_the_texts_discussions_render():
    system, turn = builtin_template("system.j2"), builtin_template("turn.j2")
    assert templates_for(DiscussionConfig()) == {"system": system, "turn": turn}
    # smoke.yaml: only the `every_k` level of a factor adds a moderator.
    smoke = load_recipe(SMOKE).recipe
    assert templates_used(smoke) == {"system": system, "turn": turn, "moderator_system": system}
    custom = load_recipe(
        SMOKE, ["discussion.templates.moderator_system=Moderate. {{ context }}"]
    ).recipe
    assert templates_used(custom)["moderator_system"] == "Moderate. {{ context }}"
    # What a discussion of the recipe renders from is what templates_used says.
    state = DiscussionState(make_spec(moderator={"name": "Mod"}))
    assert state._templates == {"system": system, "turn": turn, "moderator_system": system}


def test_template_checks_know_every_variable_the_prompts_pass():
    """A template naming every variable of the validation's sample context renders in a
    discussion (the checker and the prompt builder agree on the names)."""

    def naming_all(kind: str) -> str:
        return " ".join("{{ " + name + " is defined }}" for name in sample_context(kind))

    templates = {kind: naming_all(kind) for kind in ("system", "turn", "moderator_system")}
    mod = {"name": "Mod", "policy": "on_demand"}
    engine = FakeEngine()
    run_alone(make_spec(turns=2, moderator=mod, extra={"templates": templates}), engine)
    texts = [m["content"] for batch in engine.calls for r in batch for m in r.messages]
    assert texts and all(set(t.split()) == {"True"} for t in texts)
