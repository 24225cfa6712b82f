"""Quality flags in a run: computed when a comment is made, `quality:` in the recipe,
regeneration of flagged turns (journaled, resumable), default stop strings, the card's section
and the build summary. The flag rules themselves are tested in test_quality.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from datasets import load_dataset

from fakes import FakeEngine, make_spec, run_alone
from synth_disco.cli import main
from synth_disco.discussion.prompts import builtin_template
from synth_disco.discussion.quality import header_stop_strings, strip_dangling_header
from synth_disco.discussion.state import DiscussionState
from synth_disco.engines.base import Completion
from synth_disco.errors import RecipeError
from synth_disco.recipe.load import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "smoke.yaml"
AI = "As an AI language model, I cannot share personal opinions."
CLEAN = "Cars in the square are noisy, but the market needs deliveries."
# Distinct clean replies (the same one twice would be a near duplicate).
CLEAN_REPLIES = [
    CLEAN,
    "Close it on Saturdays and see what the shops say after a month.",
    "My bus goes through there, so I would rather keep the road open.",
    "Parents with prams will love it; delivery drivers will not.",
]


def spec_with(quality: dict | None = None, **kw):
    spec = make_spec(**kw)
    if quality is not None:
        spec.config["quality"] = quality
    return spec


# -- flags on the comment ------------------------------------------------------------------------


def test_every_generated_comment_gets_its_flags_when_made():
    replies = iter([AI, CLEAN, "user0: " + CLEAN + " Honestly.", CLEAN])
    state = run_alone(spec_with(turns=4), FakeEngine(lambda r: next(replies)))
    flags = [c.flags for c in state.comments]
    assert flags[0] == []  # the OP is not judged
    assert flags[1] == ["assistant_voice"]
    assert flags[2] == []
    # cleaning removed the speaker's own prefix: the published text is what is judged
    assert state.comments[3].text.startswith("Cars") and "speaker_prefix" not in flags[3]
    assert flags[4] == ["near_duplicate"]  # the same text as comment 2


def test_flags_follow_the_recipe_choice_and_thresholds():
    spec = spec_with({"flags": ["repetition"], "thresholds": {"repetition_min_words": 3}})
    state = run_alone(spec, FakeEngine(lambda r: "no no no no no no no no"))
    assert all(c.flags == ["repetition"] for c in state.comments[1:])
    state = run_alone(spec_with({"flags": []}), FakeEngine(lambda r: AI))
    assert all(c.flags == [] for c in state.comments)


def test_truncation_and_echoed_scaffolding_are_flagged():
    class Truncating(FakeEngine):
        def generate(self, requests):
            out = super().generate(requests)
            return [Completion(c.id, c.text, 10, 16, "length") for c in out]

    state = run_alone(spec_with(turns=2), Truncating(lambda r: "Your instructions: Be yourself."))
    assert state.comments[1].flags == ["echoed_scaffolding", "truncated"]


# -- regeneration --------------------------------------------------------------------------------


def test_a_flagged_turn_is_asked_again_with_a_new_seed_and_the_clean_reply_kept():
    seen: list[int] = []

    def reply(request):
        seen.append(request.seed)
        return AI if len(seen) % 2 == 1 else CLEAN_REPLIES[len(seen) // 2]

    state = run_alone(spec_with({"regenerate": 2}, turns=2), FakeEngine(reply))
    assert [c.attempts for c in state.comments[1:]] == [2, 2]
    assert [c.flags for c in state.comments[1:]] == [[], []]
    assert len(set(seen)) == len(seen) == 4  # each attempt its own seed
    events = [(e.kind, e.index, e.attempt, e.flags, e.raw_text) for e in state.events]
    assert events == [
        ("regenerated", 1, 1, ["assistant_voice"], AI),
        ("regenerated", 2, 1, ["assistant_voice"], AI),
    ]


def test_the_last_attempt_is_kept_and_still_flagged_when_all_fail():
    engine = FakeEngine(lambda r: AI)
    state = run_alone(spec_with({"regenerate": 3}, turns=1), engine)
    assert state.status == "ok"
    (comment,) = state.comments[1:]
    assert comment.attempts == 4 and comment.flags == ["assistant_voice"]
    assert [e.attempt for e in state.events] == [1, 2, 3]
    assert len({r.seed for call in engine.calls for r in call}) == 4


def test_regenerate_on_limits_which_flags_cost_a_new_attempt():
    spec = spec_with({"regenerate": 2, "regenerate_on": ["repetition"]}, turns=1)
    state = run_alone(spec, FakeEngine(lambda r: AI))
    assert state.comments[1].attempts == 1 and state.events == []


def test_without_regenerate_the_seeds_are_those_of_earlier_versions():
    """No regeneration: one request per turn, seeded as before quality flags existed."""
    engine = FakeEngine(lambda r: AI)
    run_alone(spec_with(turns=2), engine)
    run_alone(spec_with({"flags": []}, turns=2), again := FakeEngine(lambda r: AI))
    assert [r.seed for c in engine.calls for r in c] == [r.seed for c in again.calls for r in c]


def test_empty_retries_and_regenerations_have_separate_budgets():
    replies = iter([AI, "", "", CLEAN])
    spec = spec_with({"regenerate": 1}, turns=1, extra={"max_empty_retries": 2})
    state = run_alone(spec, FakeEngine(lambda r: next(replies)))
    assert state.status == "ok" and state.comments[1].attempts == 4
    assert [e.kind for e in state.events] == ["regenerated"]


def test_replaying_the_journal_mid_regeneration_rebuilds_the_same_discussion():
    def reply(request):  # flagged on even seeds: a mix of kept and regenerated turns
        return AI if request.seed % 2 == 0 else f"Seed {request.seed} says the square is fine."

    spec = spec_with({"regenerate": 2}, turns=6)
    state = DiscussionState(spec)
    records = []
    engine = FakeEngine(reply)
    while not state.done:
        (c,) = engine.generate([state.next_request()])
        records += state.apply(c)
    assert any(r["t"] == "event" and r["kind"] == "regenerated" for r in records)
    for cut in range(1, len(records)):
        again = DiscussionState(spec)
        for r in records[:cut]:
            again.absorb(r)
        again.settle()  # as the runner does after a replay
        while not again.done:
            (c,) = engine.generate([again.next_request()])
            again.apply(c)
        assert again.comments == state.comments and again.events == state.events, cut


# -- stop strings --------------------------------------------------------------------------------


def test_header_stop_strings_come_from_the_turn_template_without_names():
    assert header_stop_strings(builtin_template("turn.j2")) == [
        "\nOriginal post by ",
        " (moderator) wrote:\n",
        " replied:\n",
        " wrote:\n",
    ]
    own = "{% for c in comments %}**{{ c.author }}** says:\n{{ c.text }}\n{% endfor %}"
    assert header_stop_strings(own) == ["** says:\n"]
    # the text on the header's own line: " says: " would cut prose, so no stop string
    inline = "{% for c in comments %}{{ c.author }} says: {{ c.text }}\n{% endfor %}"
    assert header_stop_strings(inline) == []


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("I agree.\n\nbirch", "I agree."),
        ("I agree.\n**Birch**", "I agree."),
        ("I agree.\n[moderator]", "I agree."),
        ("I agree.\nbirch is right", "I agree.\nbirch is right"),  # a sentence, not a header
        ("I agree with birch", "I agree with birch"),  # one line: nothing dangles
        ("I agree.\nUser 3", "I agree.\nUser 3"),  # two words: not a label
        ("I agree.\n\npk_sondre", "I agree."),  # a handle the model invented
        ("I agree.\nCheers", "I agree.\nCheers"),  # a sign-off, not a handle
    ],
)
def test_a_name_left_by_a_header_stop_is_removed(text, kept):
    assert strip_dangling_header(text, ["alder", "birch", "Moderator"]) == kept


def test_requests_carry_the_stop_strings_and_every_discussion_the_same_ones():
    engine = FakeEngine(lambda r: "Fine.\n\nuser2")

    class Stopped(FakeEngine):
        def generate(self, requests):
            out = engine.generate(requests)
            return [Completion(c.id, c.text, 10, 3, "stop") for c in out]

    one = run_alone(spec_with(turns=2), Stopped())
    run_alone(spec_with(turns=2, discussion_id="other-r00000", seed=9), Stopped())
    stops = {r.params.stop for call in engine.calls for r in call}
    assert stops == {tuple(header_stop_strings(builtin_template("turn.j2")))}
    assert [c.text for c in one.comments[1:]] == ["Fine.", "Fine."]
    assert one.comments[1].raw_text == "Fine.\n\nuser2"
    off = FakeEngine(lambda r: "Fine.")
    run_alone(spec_with({"stop_strings": False}, turns=1), off)
    assert off.calls[0][0].params.stop == ()


# -- the recipe block ----------------------------------------------------------------------------


def problems(tmp_path: Path, quality: str) -> list[str]:
    text = RECIPE.read_text(encoding="utf-8") + "\nquality:\n" + quality
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    return [str(p) for p in err.value.problems]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("  flags: [truncated, loops]\n", "unknown quality flag(s) 'loops'"),
        ("  thresholds: {repetition_max: 0.4}\n", "unknown threshold 'repetition_max'"),
        ("  thresholds: {repetition_min_words: 2.5}\n", "must be a whole number"),
        ("  thresholds: {repetition_max_ratio: 1.5}\n", "repetition_max_ratio must be in (0, 1]"),
        ("  flags: [truncated]\n  regenerate_on: [repetition]\n", "not computed: repetition"),
        ("  regenerate: -1\n", "greater than or equal to 0"),
        ("  regenrate: 2\n", "unknown key"),
    ],
)
def test_a_bad_quality_block_is_reported_at_its_line(tmp_path, block, message):
    found = problems(tmp_path, block)
    assert any(message in p and "quality" in p for p in found), found
    line = len(RECIPE.read_text(encoding="utf-8").splitlines()) + 2
    assert any(f":{line}:" in p or f":{line + 1}:" in p for p in found), found


def test_a_factor_may_compare_regeneration_settings(tmp_path):
    text = RECIPE.read_text(encoding="utf-8").replace(
        "factors:\n",
        "factors:\n  regenerate:\n    off: {}\n    on: {quality.regenerate: 2}\n",
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    assert load_recipe(path).recipe.factors["regenerate"]["on"] == {"quality.regenerate": 2}


# -- a build with the tiny model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def regenerated_run(tmp_path_factory) -> tuple[Path, str]:
    """The smoke recipe with every truncated reply asked once more (the tiny model's 24-token
    replies nearly all hit the limit, so nearly every turn takes two attempts)."""
    out = tmp_path_factory.mktemp("quality") / "run"
    sets = [
        "replicates=1",
        "quality.regenerate=1",
        "quality.regenerate_on=[truncated]",
        "annotation=null",
    ]
    args = ["build", str(RECIPE), "--out", str(out)] + [x for s in sets for x in ("--set", s)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_a_build_stores_flags_attempts_and_regenerated_replies(regenerated_run):
    out, _ = regenerated_run
    comments = load_dataset(str(out / "dataset"), "comments", split="train").to_list()
    generated = [c for c in comments if c["role"] in ("user", "moderator")]
    assert generated and all(isinstance(c["flags"], list) for c in comments)
    truncated_first = sum(c["attempts"] == 2 for c in generated)
    assert truncated_first >= len(generated) // 2
    events = load_dataset(str(out / "dataset"), "events", split="train").to_list()
    regenerated = [e for e in events if e["kind"] == "regenerated"]
    assert len(regenerated) == truncated_first
    assert all(e["flags"] == ["truncated"] and e["raw_text"] for e in regenerated)


def test_the_card_and_the_build_summary_show_the_rates(regenerated_run):
    out, output = regenerated_run
    assert "quality flags (share of" in output and "truncated" in output
    card = (out / "dataset" / "README.md").read_text(encoding="utf-8")
    section = card[card.index("### Quality flags") :]
    assert "| `truncated` | The reply hit the token limit" in section
    assert "moderation = every_k" in section and "->" in section  # before -> published
    assert (
        "![Quality flag rates per level of moderation](figures/quality_by_moderation.png)" in card
    )
    assert (out / "dataset" / "figures" / "quality_by_moderation.png").stat().st_size > 1000
