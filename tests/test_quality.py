"""Quality flags: hand-written cases per flag, near misses that must not be flagged, template
fragments of the real built-in templates, thresholds, stop strings and determinism."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from synth_disco.discussion.prompts import Shown, Speaker, build_messages
from synth_disco.discussion.quality import (
    FLAG_DOCS,
    FLAG_NAMES,
    FLAGS,
    QualityConfig,
    comment_headers,
    compression_ratio,
    default_stop_strings,
    flag_comment,
    flag_docs,
    prompt_scaffolding,
    repeated_ngram_ratio,
    scaffold_fragments,
    shingle_jaccard,
)

TEMPLATES = (
    Path(__file__).resolve().parents[1] / "generator" / "synth_disco" / "discussion" / "templates"
)
TURN = (TEMPLATES / "turn.j2").read_text(encoding="utf-8")
SYSTEM = (TEMPLATES / "system.j2").read_text(encoding="utf-8")

NAMES = ["alder", "jonah.b", "marguerite_b", "tomas.k", "kim"]
# A nurse persona's field values as the source reader gives them (the handle included: it
# must be ignored).
NURSE = ["jonah.b", "38", "female", "nurse", "bachelor's degree", "patient, dry humour", "Leeds"]
OP_TEXT = "The 38 bus is late again.\nYou are all welcome to complain."
QUOTED = [OP_TEXT, "Same here.", "It was fine for me.", "Please keep it civil."]


def rendered_prompt() -> str:
    """A real prompt of the built-in templates: jonah.b answering tomas.k."""
    messages = build_messages(
        {"system": SYSTEM, "turn": TURN},
        context="A neighbourhood forum.",
        title="Bus routes",
        op=Shown("alder", "op", OP_TEXT),
        seed_comments=[Shown("kim", "seed", "Same here.")],
        visible=[
            Shown("tomas.k", "user", "It was fine for me."),
            Shown("kim", "moderator", "Please keep it civil."),
        ],
        omitted=2,
        speaker=Speaker(
            "jonah.b",
            "user",
            "Age: 38. Current employment: nurse.",
            "Stay in character.\nWrite one short comment.",
        ),
        parent=Shown("tomas.k", "user", "It was fine for me."),
    )
    return "\n".join(m["content"] for m in messages)


SCAFFOLDING = prompt_scaffolding(rendered_prompt(), [TURN, SYSTEM], QUOTED)

EARLIER = [
    OP_TEXT,
    "The 38 bus has been late every single morning this week, and nobody at the council "
    "seems to care.",
    "Agreed.",
]


def flags(text: str, config: QualityConfig | None = None, **kw) -> list[str]:
    args = {
        "finish_reason": "stop",
        "earlier": EARLIER,
        "persona_values": NURSE,
        "participant_names": NAMES,
        "scaffolding": SCAFFOLDING,
        "config": config or QualityConfig(),
    }
    args.update(kw)
    return flag_comment(text, **args)


def raised(flag: str, text: str, config: QualityConfig | None = None, **kw) -> bool:
    """Whether ``flag`` is raised when it is the only flag computed."""
    cfg = replace(config or QualityConfig(), flags=(flag,))
    out = flags(text, cfg, **kw)
    assert set(out) <= {flag}
    return flag in out


def case(flag: str, text: str, expected: bool, id: str, **kw):
    return pytest.param(flag, text, expected, kw, id=f"{flag}-{'yes' if expected else 'no'}-{id}")


LOOP = "I think the bus is late. " * 8
LOOP_CUT = (
    "The council should listen to us. The council should listen to us. The council should "
    "listen to us. The council should listen to us. The council should"
)
TWICE = (
    "The council should really listen to people who actually take the bus every day. "
    "The council should really listen to people who actually take the bus every day."
)
PROSE = (
    "Honestly the new bus route has been a disaster for those of us on the east side. I used "
    "to get to work in twenty minutes and now it takes closer to forty, because the 38 loops "
    "through the retail park first. I wrote to the council twice and got the same form letter "
    "back both times. If anyone has a better contact there, I would love to hear it."
)
RHETORIC = (
    "We need more buses, more buses at night, more buses on weekends, more buses to the "
    "hospital, and more buses to the station and the school on the hill, please."
)

CASES = [
    # -- truncated ------------------------------------------------------------------------------
    case("truncated", "The bus is late and the", True, "length", finish_reason="length"),
    case("truncated", "The bus is late.", False, "stop", finish_reason="stop"),
    case("truncated", "The bus is late.", False, "eos", finish_reason="eos"),
    case("truncated", "The bus is late.", False, "none", finish_reason=None),
    # -- empty ----------------------------------------------------------------------------------
    case("empty", "", True, "empty"),
    case("empty", "  \n\t ", True, "whitespace"),
    case("empty", "No.", False, "short-word"),
    case("empty", "\U0001f44d", False, "emoji"),
    # -- echoed_scaffolding ---------------------------------------------------------------------
    case("echoed_scaffolding", "You are jonah.b.\nI think the bus is fine.", True, "you-are"),
    case("echoed_scaffolding", "[2 earlier comments not shown]\nIt is late.", True, "omitted"),
    case("echoed_scaffolding", "Your instructions: be nice. The bus is late.", True, "instr"),
    case("echoed_scaffolding", "I agree.\ntomas.k wrote:\nIt was fine.", True, "header"),
    case("echoed_scaffolding", "Fine. Write only the comment text, as jonah.b.", True, "mid"),
    case("echoed_scaffolding", "> About you: Age: 38.\nHi all.", True, "quoted-about"),
    case("echoed_scaffolding", "Original post by alder:\nThe bus is late.", True, "op-head"),
    case("echoed_scaffolding", "You are right that the 38 is late.", False, "you-are-right"),
    case("echoed_scaffolding", "As I said in an earlier comment, it is late.", False, "earlier"),
    case("echoed_scaffolding", "What about you: do you take the bus?", False, "about-you"),
    case("echoed_scaffolding", "tomas.k wrote that it was fine. It was not.", False, "wrote-that"),
    case("echoed_scaffolding", "Thread: is this the right place?", False, "thread-word"),
    case("echoed_scaffolding", "---\nThanks, all.", False, "rule-line"),
    case("echoed_scaffolding", "You are all welcome to complain.", False, "quoted-op-line"),
    # -- speaker_prefix -------------------------------------------------------------------------
    case("speaker_prefix", "alder: I disagree with all of this.", True, "name-colon"),
    case("speaker_prefix", "User alder posted: the bus is late.", True, "user-posted"),
    case("speaker_prefix", "**alder**: the bus is late.", True, "bold"),
    case("speaker_prefix", "[3] alder: the bus is late.", True, "numbered"),
    case("speaker_prefix", "3. alder: the bus is late.", True, "numbered-dot"),
    case("speaker_prefix", "Jonah.b wrote: the bus is late.", True, "case-verb"),
    case("speaker_prefix", "[tomas.k]: the bus is late.", True, "bracketed"),
    case("speaker_prefix", "  > **alder** (38, nurse) said: it is late.", True, "decorated"),
    case("speaker_prefix", "kim (moderator): please stay on topic.", True, "moderator-paren"),
    case("speaker_prefix", "User 12: the bus is late.", True, "generic-number"),
    case("speaker_prefix", "User GreenTea posted: the bus is late.", True, "generic-verb"),
    case("speaker_prefix", "Speaker B: the bus is late.", True, "generic-letter"),
    case("speaker_prefix", "Moderator: please stay on topic.", True, "moderator"),
    case("speaker_prefix", "I agree with alder: the bus is late.", False, "name-mid-sentence"),
    case("speaker_prefix", "@alder: the bus is late.", False, "addressing"),
    case("speaker_prefix", "alder's point: fair enough.", False, "possessive"),
    case("speaker_prefix", "alder, you're right: it is late.", False, "vocative"),
    case("speaker_prefix", "Alder trees: lovely in autumn.", False, "name-as-word"),
    case("speaker_prefix", "User experience: the app is bad.", False, "user-experience"),
    case("speaker_prefix", "Note: the bus is late.", False, "note"),
    case("speaker_prefix", "Users: please be kind.", False, "users"),
    # -- persona_leak ---------------------------------------------------------------------------
    case("persona_leak", "As a 38-year-old nurse, I think it matters.", True, "age-job"),
    case("persona_leak", "As a nurse, I see this every day.", True, "as-a-job"),
    case("persona_leak", "Well, as a busy nurse in town I disagree.", True, "as-a-adj-job"),
    case("persona_leak", "I'm a 38 year old female from Leeds.", True, "three-values"),
    case("persona_leak", "I have a bachelor's degree and live in Leeds.", True, "two-values"),
    case("persona_leak", "Speaking as a female driver: no.", True, "speaking-as"),
    case("persona_leak", "I work as a nurse, so shifts matter.", True, "work-as"),
    case("persona_leak", "As a 38 year old, I remember it.", True, "age-only"),
    case("persona_leak", "I'm 38 and I live in Leeds.", True, "im-age-and-city"),
    case("persona_leak", "jonah.b (38, Leeds) here.", True, "age-in-parens"),
    case("persona_leak", "The 38 bus to Leeds is late again.", False, "number-not-age"),
    case("persona_leak", "Nurses work hard and deserve better pay.", False, "nurses-once"),
    case("persona_leak", "Be patient, the bus will come.", False, "one-word"),
    case("persona_leak", "I moved to Leeds last year.", False, "one-value"),
    case("persona_leak", "As a result, the 38 bus is late.", False, "as-a-result"),
    case("persona_leak", "Jobs such as a nurse need the bus.", False, "such-as"),
    case("persona_leak", "jonah.b here, the nurse was right.", False, "name-not-value"),
    case("persona_leak", "As a nurse, I see it daily.", False, "no-values", persona_values=[]),
    case("persona_leak", "Yes, yes and no.", False, "uninformative", persona_values=["yes", "no"]),
    # -- assistant_voice ------------------------------------------------------------------------
    case("assistant_voice", "I can't fulfill this request.", True, "cant-fulfill"),
    case("assistant_voice", "As an AI, I don't have opinions on buses.", True, "as-an-ai"),
    case("assistant_voice", "As an AI language model I cannot vote.", True, "as-ai-lm"),
    case("assistant_voice", "I\u2019m sorry, but I cannot help with that request.", True, "sorry"),
    case("assistant_voice", "As a language model, I can't say.", True, "as-lm"),
    case("assistant_voice", "Sure! Here's a comment in the voice of jonah.b: hi", True, "sure"),
    case("assistant_voice", "I'm just an AI, so I can't take sides.", True, "just-an-ai"),
    case("assistant_voice", "Here is my reply as tomas.k: the bus is late.", True, "here-is"),
    case("assistant_voice", "I don't have personal opinions, but buses matter.", True, "personal"),
    case("assistant_voice", "I cannot comply.", True, "comply"),
    case("assistant_voice", "Certainly! I'd be happy to write that.", True, "certainly"),
    case("assistant_voice", "AI will replace bus drivers soon, mark my words.", False, "ai-word"),
    case("assistant_voice", "As an AI researcher, I think the hype is wrong.", False, "ai-job"),
    case("assistant_voice", "I'm sorry, but that is just not true.", False, "sorry-human"),
    case("assistant_voice", "I can't help with the garden this weekend.", False, "cant-help"),
    case("assistant_voice", "Sure, here's the thing: the 38 is always late.", False, "sure-thing"),
    case("assistant_voice", "Large language models write half the web now.", False, "llm-topic"),
    case("assistant_voice", "I can't comply with rules that make no sense.", False, "comply-rules"),
    # -- repetition -----------------------------------------------------------------------------
    case("repetition", LOOP, True, "sentence-loop"),
    case("repetition", LOOP_CUT, True, "loop-cut-mid-sentence"),
    case("repetition", "ha" * 150, True, "char-loop"),
    case("repetition", "Great point!" + "!" * 250, True, "punct-loop"),
    case("repetition", "No.", False, "short"),
    case("repetition", "No no no no no no.", False, "short-loop"),
    case("repetition", PROSE, False, "prose"),
    case("repetition", RHETORIC, False, "rhetorical"),
    case("repetition", TWICE, False, "said-twice"),
    # -- near_duplicate -------------------------------------------------------------------------
    case("near_duplicate", EARLIER[1], True, "exact-copy"),
    case(
        "near_duplicate",
        "The 38 bus has been late every morning this week, and nobody at the council "
        "seems to care at all.",
        True,
        "small-edits",
    ),
    case("near_duplicate", EARLIER[1].upper().replace(" ", "  "), True, "case-space"),
    case("near_duplicate", EARLIER[1] + " Exactly.", True, "copy-plus-word"),
    case("near_duplicate", OP_TEXT.replace("\n", " "), True, "copies-the-op"),
    case("near_duplicate", "The 38 bus is late again.", False, "half-of-the-op"),
    case("near_duplicate", "Agreed.", False, "short-repeat"),
    case(
        "near_duplicate",
        "The 38 bus has been late every single morning this week. I think the real problem "
        "is the new timetable, which nobody asked for, and the drivers are as annoyed as us.",
        False,
        "quotes-half",
    ),
    case("near_duplicate", "The council never answers email about the 38.", False, "same-topic"),
    case("near_duplicate", EARLIER[1], False, "no-earlier", earlier=[]),
]


@pytest.mark.parametrize(("flag", "text", "expected", "kw"), CASES)
def test_flag_cases(flag: str, text: str, expected: bool, kw: dict) -> None:
    assert raised(flag, text, **kw) is expected


def test_every_flag_has_positive_and_negative_cases() -> None:
    seen = {(p.values[0], p.values[2]) for p in CASES}
    for name in FLAG_NAMES:
        assert (name, True) in seen and (name, False) in seen, name


def test_all_flags_together_on_a_bad_reply() -> None:
    text = "jonah.b: As an AI, I can't fulfill this request. " * 6
    out = flags(text, finish_reason="length", earlier=[text])
    assert out == sorted(out)
    assert out == [
        "assistant_voice",
        "near_duplicate",
        "repetition",
        "speaker_prefix",
        "truncated",
    ]


def test_clean_reply_gets_no_flags() -> None:
    text = "I take the 38 most days and it has been fine for me. Maybe it depends on the stop?"
    assert flags(text) == []


# -- scaffold fragments and the rendered prompt ------------------------------------------------


def test_scaffold_fragments_of_builtin_turn_template() -> None:
    frags = scaffold_fragments(TURN)
    for expected in [
        "Original post by",
        "replied:",
        "earlier comment",
        "not shown]",
        "wrote:",
        "You are",
        "About you:",
        "Your instructions:",
        "Write your next comment",
        ". Write only the comment text, as",
        "(moderator)",
    ]:
        assert expected in frags
    for f in frags:
        assert len(f) >= 4
        assert "{" not in f and "}" not in f
        assert f in " ".join(TURN.split())  # literal text of the template
    # Tag contents are not text: the "s" of the plural, variable names.
    assert not any("speaker" in f or "omitted" in f or f == "s" for f in frags)
    assert len(frags) == len(set(frags))


def test_scaffold_fragments_of_builtin_system_template() -> None:
    frags = scaffold_fragments(SYSTEM)
    assert frags[0] == "You are taking part in an online discussion forum."
    assert frags[1].startswith("Each turn, one participant writes one comment.")
    assert len(frags) == 2


def test_scaffold_fragments_min_chars() -> None:
    assert "wrote:" in scaffold_fragments(TURN, min_chars=6)
    assert "wrote:" not in scaffold_fragments(TURN, min_chars=7)
    assert all(len(f) >= 20 for f in scaffold_fragments(TURN, min_chars=20))


def test_scaffold_fragments_of_custom_template_syntax() -> None:
    source = (
        "{# a comment that is not text #}Forum log follows.\n"
        "{%- for c in comments -%}\n<{{ c.author }}> {{ c.text }}\n{%- endfor %}\n"
        "{% raw %}Literal {{ braces }} here{% endraw %}\n"
        "Now answer   in character as {{ me }}."
    )
    frags = scaffold_fragments(source)
    assert frags == [
        "Forum log follows.",
        "Literal {{ braces }} here",
        "Now answer in character as",
    ]


def test_prompt_scaffolding_of_a_real_prompt() -> None:
    assert "You are jonah.b." in SCAFFOLDING
    assert "[2 earlier comments not shown]" in SCAFFOLDING
    assert "tomas.k wrote:" in SCAFFOLDING
    assert "kim (moderator) wrote:" in SCAFFOLDING
    assert "kim replied:" in SCAFFOLDING
    assert "Original post by alder:" in SCAFFOLDING
    assert "Your instructions:" in SCAFFOLDING
    # Quoted comment lines are not scaffolding, even when they contain template words.
    assert "You are all welcome to complain." not in SCAFFOLDING
    assert "It was fine for me." not in SCAFFOLDING
    assert sorted(SCAFFOLDING) == SCAFFOLDING


def test_prompt_scaffolding_cuts_quoted_text_out_of_a_line() -> None:
    template = "{% for c in comments %}{{ c.author }} wrote: {{ c.text }}\n{% endfor %}Go."
    prompt = "alder wrote: You are wrong about the buses\nGo."
    out = prompt_scaffolding(prompt, [template], ["You are wrong about the buses"])
    assert "alder wrote:" in out
    assert not any("buses" in s for s in out)


def test_echo_of_a_recipe_overridden_template() -> None:
    template = (
        "Forum log follows.\n{% for c in comments %}<{{ c.author }}> {{ c.text }}\n{% endfor %}"
        "Now answer in character as {{ me }}."
    )
    prompt = "Forum log follows.\n<alder> hi\nNow answer in character as bob."
    scaffolding = prompt_scaffolding(prompt, [template], ["hi"])
    assert raised("echoed_scaffolding", "Forum log follows.\nok", scaffolding=scaffolding)
    assert raised(
        "echoed_scaffolding", "Now answer in character as bob. ok", scaffolding=scaffolding
    )
    # The built-in template's words are not this recipe's scaffolding.
    assert not raised("echoed_scaffolding", "You are jonah.b.", scaffolding=scaffolding)


def test_prompt_scaffolding_extra_lines() -> None:
    """Instruction lines after the first hold no template text; ``extra`` adds them."""
    instructions = "Stay in character.\nWrite one short comment, in your own voice."
    plain = prompt_scaffolding(rendered_prompt(), [TURN, SYSTEM], QUOTED)
    more = prompt_scaffolding(rendered_prompt(), [TURN, SYSTEM], QUOTED, extra=[instructions])
    reply = "Write one short comment, in your own voice.\nThe bus is late."
    assert not raised("echoed_scaffolding", reply, scaffolding=plain)
    assert raised("echoed_scaffolding", reply, scaffolding=more)


def test_scaffolding_is_matched_whitespace_insensitively() -> None:
    assert raised("echoed_scaffolding", "  **You   are jonah.b.**\nhi")
    assert raised("echoed_scaffolding", "ok\n\t[2 earlier\tcomments not shown]")
    # Case matters: template text is copied verbatim.
    assert not raised("echoed_scaffolding", "YOUR INSTRUCTIONS: none")


# -- thresholds --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "text", "default", "changed"),
    [
        pytest.param("repetition", TWICE, False, {"repetition_max_ratio": 0.4}, id="ngram-ratio"),
        pytest.param("repetition", "No " * 12, False, {"repetition_min_words": 10}, id="min-words"),
        pytest.param(
            "repetition", "Great!" + "!" * 250, True, {"compression_min_ratio": 0.0}, id="zlib"
        ),
        pytest.param(
            "repetition", "Great!" + "!" * 250, True, {"compression_min_chars": 400}, id="zlib-len"
        ),
        pytest.param(
            "persona_leak",
            "I moved to Leeds last year.",
            False,
            {"persona_min_values": 1},
            id="values",
        ),
        pytest.param(
            "persona_leak",
            "As a nurse, I see this every day.",
            True,
            {"persona_self_description": False},
            id="self-description",
        ),
        pytest.param(
            "near_duplicate",
            "The 38 bus has been late every morning, and nobody at the council cares.",
            False,
            {"near_duplicate_threshold": 0.4},
            id="jaccard",
        ),
        pytest.param("near_duplicate", EARLIER[1], True, {"near_duplicate_window": 1}, id="window"),
        pytest.param(
            "near_duplicate", "Agreed.", False, {"near_duplicate_min_chars": 5}, id="min-chars"
        ),
        pytest.param(
            "echoed_scaffolding", "You are right.", False, {"scaffold_min_chars": 7}, id="min-chars"
        ),
        pytest.param(
            "echoed_scaffolding",
            "Ok. Your instructions: none.",
            False,
            {"scaffold_anywhere_chars": 18},
            id="anywhere",
        ),
    ],
)
def test_thresholds_change_outcomes(flag: str, text: str, default: bool, changed: dict) -> None:
    assert raised(flag, text) is default
    assert raised(flag, text, QualityConfig(**changed)) is not default


def test_near_duplicate_window_looks_at_the_last_comments_only() -> None:
    earlier = [
        EARLIER[1],
        *(f"Comment number {i} about something else entirely." for i in range(5)),
    ]
    assert raised("near_duplicate", EARLIER[1], earlier=earlier)
    assert not raised(
        "near_duplicate", EARLIER[1], QualityConfig(near_duplicate_window=5), earlier=earlier
    )


def test_config_takes_a_list_of_flags() -> None:
    cfg = QualityConfig(flags=["repetition", "truncated"])
    assert cfg.flags == ("repetition", "truncated")
    assert cfg.enabled == ("truncated", "repetition")  # registry order
    hash(cfg)  # frozen and hashable, like the defaults
    with pytest.raises(ValueError, match="list of flag names"):
        QualityConfig(flags="truncated")


def test_config_chooses_flags() -> None:
    text = LOOP
    assert flags(text, finish_reason="length") == ["repetition", "truncated"]
    assert flags(text, QualityConfig(flags=("truncated",)), finish_reason="length") == ["truncated"]
    assert flags(text, QualityConfig(flags=()), finish_reason="length") == []


@pytest.mark.parametrize(
    "kw",
    [
        {"flags": ("truncated", "nonsense")},
        {"flags": ("empty", "empty")},
        {"repetition_max_ratio": 0.0},
        {"near_duplicate_threshold": 1.5},
        {"compression_min_ratio": 1.0},
        {"near_duplicate_window": 0},
        {"repetition_ngram": 0},
    ],
    ids=lambda kw: "-".join(kw),
)
def test_config_rejects_bad_values(kw: dict) -> None:
    with pytest.raises(ValueError):
        QualityConfig(**kw)


def test_flag_docs_cover_every_flag() -> None:
    assert tuple(FLAG_DOCS) == FLAG_NAMES == tuple(FLAGS) == QualityConfig().flags
    for name, meaning in FLAG_DOCS.items():
        assert name.isidentifier() and name == name.lower()
        assert meaning and "\n" not in meaning and "{" not in meaning
    assert "0.7 or more" in FLAG_DOCS["near_duplicate"]


def test_flag_docs_follow_the_config() -> None:
    cfg = QualityConfig(flags=("near_duplicate", "persona_leak"), near_duplicate_threshold=0.85)
    docs = flag_docs(cfg)
    assert list(docs) == ["persona_leak", "near_duplicate"]
    assert "0.85 or more" in docs["near_duplicate"]


def test_measures() -> None:
    assert repeated_ngram_ratio("No.") == 0.0
    assert repeated_ngram_ratio("a b c a b c a b c") == pytest.approx(4 / 7)
    assert compression_ratio("") == 1.0
    assert compression_ratio("ha" * 150) < 0.1 < 0.5 < compression_ratio(PROSE)
    assert shingle_jaccard("Hello  World", "hello world") == 1.0
    assert shingle_jaccard("abcdefgh", "zyxwvuts") == 0.0


# -- stop strings ------------------------------------------------------------------------------


def test_comment_headers_of_builtin_turn_template() -> None:
    assert comment_headers(TURN) == [
        ("Original post by ", ":"),
        ("", " replied:"),
        ("", " wrote:"),
        ("", " (moderator) wrote:"),
    ]
    assert comment_headers(SYSTEM) == []


def test_default_stop_strings_builtin() -> None:
    stops = default_stop_strings(TURN, ["alder", "kim", "alder"])
    assert stops == sorted(set(stops))
    for s in [
        "\nalder:",
        "\nalder wrote:",
        "\nalder replied:",
        "\nalder (moderator) wrote:",
        "\nOriginal post by alder:",
        "\nkim:",
        "\nkim wrote:",
    ]:
        assert s in stops
    assert len(stops) == 10


def cut(text: str, stops: list[str]) -> str:
    """What an engine returns: the text up to the first stop string."""
    hits = [text.find(s) for s in stops if s in text]
    return text[: min(hits)] if hits else text


def test_default_stop_strings_end_a_reply_at_another_turn() -> None:
    stops = default_stop_strings(TURN, NAMES)
    assert cut("I agree.\nalder wrote:\nNo you don't.", stops) == "I agree."
    assert cut("I agree.\n\nkim: stop it.", stops) == "I agree.\n"
    assert cut("I agree.\nkim (moderator) wrote:\nOk.", stops) == "I agree."
    # Not a new turn: a name mid-line, a line that starts with other words.
    for reply in ["I agree with alder: yes.", "Hm.\nYou are right.", "Hm.\nalder is right."]:
        assert cut(reply, stops) == reply


def test_default_stop_strings_follow_a_custom_template() -> None:
    template = (
        "{% for c in comments %}**{{ c.author }}** says: {{ c.text }}\n{% endfor %}"
        "Comment by {{ me }}{% if mod %} (mod){% endif %}:"
    )
    assert comment_headers(template) == [
        ("**", "** says:"),
        ("Comment by ", ":"),
        ("Comment by ", " (mod):"),
    ]
    assert default_stop_strings(template, ["bob"]) == [
        "\n**bob** says:",
        "\nComment by bob (mod):",
        "\nComment by bob:",
        "\nbob:",
    ]
    # A prefix of another stop makes the longer one redundant.
    assert default_stop_strings("{{ a }}:x\n{{ b }}: {{ c }}", ["bob"]) == ["\nbob:"]


# -- determinism -------------------------------------------------------------------------------


def test_deterministic_and_independent_of_order() -> None:
    texts = [p.values[1] for p in CASES]
    forward = [flags(t, finish_reason="length") for t in texts]
    backward = [flags(t, finish_reason="length") for t in reversed(texts)][::-1]
    again = [flags(t, finish_reason="length") for t in texts]
    assert forward == backward == again
    assert all(out == sorted(out) for out in forward)
    assert prompt_scaffolding(rendered_prompt(), [TURN, SYSTEM], QUOTED) == SCAFFOLDING
    assert default_stop_strings(TURN, NAMES) == default_stop_strings(TURN, list(reversed(NAMES)))
