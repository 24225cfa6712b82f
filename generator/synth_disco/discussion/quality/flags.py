"""The quality flags: their registry (``FLAGS``), their meanings for the dataset card
(``flag_docs``) and ``flag_comment``, which computes one comment's flags.

Each flag is a short snake_case name stored in a list column of the ``comments`` table, with a
one-line meaning for the dataset card (``FLAG_DOCS``). ``flag_comment`` computes the flags of
one comment from plain strings, so it needs nothing but the standard library; it is pure and
deterministic (same inputs, same sorted list) and cheap enough to run on every comment.

What the caller passes (the discussion state machine):

- ``text``: the comment as published, i.e. *after* ``clean_reply``. Flags describe what a user
  of the dataset sees, so a speaker prefix that cleaning already removed is not flagged; one it
  could not remove ("[3] alder:", "User 12:", a name from outside the discussion) is.
- ``finish_reason``: the engine's (``"length"`` means the token limit was hit).
- ``earlier``: the texts of earlier comments of the same discussion, oldest first (the OP and
  seed comments included: copying the OP is as bad as copying a reply). Only the last
  ``QualityConfig.near_duplicate_window`` are compared.
- ``persona_values``: the speaker persona's attribute values (``Persona.fields`` values, not the
  id or the name; a list attribute as the source reader joined it, "patient, dry humour").
  Empty for a moderator or a persona given as free text only.
- ``participant_names``: every name in the discussion (speakers, seed authors, moderator).
- ``scaffolding``: the prompt's scaffolding, from ``prompt_scaffolding`` (the template's literal
  text and the rendered lines built from it, such as "You are jonah.b." or "alder wrote:").

Flag rules (thresholds are fields of ``QualityConfig``; defaults in brackets):

``truncated``
    ``finish_reason == "length"``.
``empty``
    the text is empty or whitespace only.
``echoed_scaffolding``
    a scaffolding fragment of at least ``scaffold_min_chars`` [8] characters (and with a
    letter in it) begins a line of the reply (after leading whitespace and markdown or quote
    decoration: ``> * _ #``, straight, curly and back quotes), or one of at least
    ``scaffold_anywhere_chars`` [30] characters occurs anywhere in it. Matching is
    case-sensitive on whitespace-collapsed text: template text is copied verbatim, while a
    person writing "you are right" or "in an earlier comment" mid-sentence echoes nothing.
``speaker_prefix``
    the reply starts (after whitespace, markdown decoration and an optional number such as
    "[3]", "3." or "#3") with a participant's name, or a generic "User X"/"Speaker 2"/
    "Participant 3"/"Moderator", optionally bold or bracketed, optionally followed by a short
    parenthesis ("(moderator)") and a verb (wrote, said, posted, replied, ...), then a colon.
    A generic label without a verb needs a handle-like X (a digit, "_" or "." in it, or a
    single letter), so "User experience: ..." is not a prefix. "@alder: ..." (addressing
    someone) and a name mid-sentence ("I agree with alder: ...") are not prefixes.
``persona_leak``
    the reply contains at least ``persona_min_values`` [2] distinct persona values, or (when
    ``persona_self_description`` [True]) describes itself with one: "as a/an", at a clause
    start or after "speaking"/"work(ed)"/"me"/"myself", then at most three words, then a
    persona value or "<age>-year-old" / "<age> years old" for a numeric value ("As a
    38-year-old nurse", "Honestly, as a busy nurse"; not "such as a nurse", "As a result").
    A value matches as a whole phrase, case-insensitively ("nurse" does not match "nurses";
    "patient, dry humour" only as that phrase); a number only as an age ("I'm 38", "aged 38",
    "38 years", "38yo", "(38"), so "the 38 bus" is not the persona's age. Values that cannot
    identify anyone are ignored: empty, yes/no/none/unknown/other and the like, non-numeric
    values under 3 characters, and values equal to a participant's name.
``assistant_voice``
    the reply speaks as an assistant rather than a forum user: "As an AI, ...", "I'm just an
    AI", "As a language model", refusals ("I can't fulfill this request", "I'm sorry, but I
    cannot ...", "I cannot comply"), "I don't have personal opinions", "Sure! Here's a
    comment ...", "Here is my reply as ...:", "Let me know if you'd like me to adjust ...".
    The rules (``voice._ASSISTANT``) are narrow on purpose: "AI" in a sentence, "As an AI
    researcher", "I'm sorry, but that's not true" and "I can't help with the garden" are
    ordinary forum talk.
``repetition``
    a loop: with at least ``repetition_min_words`` [20] words, the share of word
    ``repetition_ngram``-grams [3] that repeat an earlier n-gram of the reply is at least
    ``repetition_max_ratio`` [0.5] (a sentence said three times or more; said twice it scores
    ~0.45); or, with at least ``compression_min_chars`` [200] characters, the DEFLATE
    compression ratio (``compression_ratio``) is at most ``compression_min_ratio`` [0.25]
    (loops of punctuation or symbols, "!!!!..."). Natural forum prose scores ~0.0-0.15 on the
    first measure and ~0.55-0.75 on the second.
``near_duplicate``
    among the last ``near_duplicate_window`` [50] earlier texts, one whose set of word
    ``near_duplicate_ngram``-grams [2] has a Jaccard similarity of at least
    ``near_duplicate_threshold`` [0.7] with the reply's (one word changed in a 20-word comment
    scores ~0.8; two comments on the same topic ~0.1). Texts shorter than
    ``near_duplicate_min_chars`` [20] (whitespace collapsed) are neither flagged nor compared
    ("Agreed." twice is a conversation, not a copy).

Words are the casefolded ``\\w+`` runs of the text; a run longer than 20 characters counts
character by character, so text without spaces (Chinese, Thai) and "hahaha..." loops are
measured too. Word n-grams rather than character shingles keep the cached sets small (a few
KB per comment) and the comparisons cheap. Word lists and n-gram sets are cached per text (LRU,
4,096 texts), pairs whose set sizes alone rule the threshold out are skipped, and the regular
expressions are compiled once per name set or persona; so a comment costs one pass over its
own text plus set intersections with a bounded number of earlier ones.

Cost: ``python -m synth_disco.discussion.quality`` runs ``_benchmark``: 10,000 comments in
discussions of 20 (each against all its predecessors), with 5 names, 6 persona values and the
scaffolding of its own rendered built-in prompt. On the shared 2-core development machine
(Python 3.11, load ~3) it takes ~0.55 CPU s in ``prompt_scaffolding`` and ~0.9 CPU s in
``flag_comment``: ~0.15 ms a comment in all. The tiny engine makes ~300 comments a second
(bench/RESULTS.md), ~3.3 ms each, so flagging adds ~4% there; next to a real model it is noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

from synth_disco.discussion.quality.comment import CommentCheck, Flag
from synth_disco.discussion.quality.near_duplicate import _near_duplicate
from synth_disco.discussion.quality.persona_leak import _persona_leak
from synth_disco.discussion.quality.repetition import _repetition
from synth_disco.discussion.quality.scaffold import _echoed
from synth_disco.discussion.quality.speakers import _speaker_prefix
from synth_disco.discussion.quality.voice import _assistant_voice
from synth_disco.recipe.quality import FLAG_NAMES, QualityConfig

# -- truncated, empty --------------------------------------------------------------------------


def _truncated(c: CommentCheck) -> bool:
    return c.finish_reason == "length"


def _empty(c: CommentCheck) -> bool:
    return not c.text.strip()


# -- registry ----------------------------------------------------------------------------------

FLAGS: dict[str, Flag] = {
    f.name: f
    for f in [
        Flag("truncated", "The reply hit the token limit (finish_reason 'length').", _truncated),
        Flag("empty", "The comment is empty after cleaning.", _empty),
        Flag(
            "echoed_scaffolding",
            "The comment repeats text of its own prompt's template (e.g. 'You are <name>.', "
            "'<name> wrote:', '[2 earlier comments not shown]', 'Your instructions:').",
            _echoed,
        ),
        Flag(
            "speaker_prefix",
            "The comment starts with a speaker label such as 'alder:', '**alder**:', "
            "'[3] alder:' or 'User X posted:'.",
            _speaker_prefix,
        ),
        Flag(
            "persona_leak",
            "The comment restates its persona's attributes: {persona_min_values} or more of "
            "its values, or a self-description such as 'As a 38-year-old nurse'.",
            _persona_leak,
        ),
        Flag(
            "assistant_voice",
            "The comment speaks as an AI assistant or refuses ('As an AI', 'I can't fulfill "
            "this request', 'Sure! Here's a comment').",
            _assistant_voice,
        ),
        Flag(
            "repetition",
            "The comment loops: a share of {repetition_max_ratio} or more of its word "
            "{repetition_ngram}-grams repeat, or it compresses to {compression_min_ratio} of "
            "its size or less.",
            _repetition,
        ),
        Flag(
            "near_duplicate",
            "The comment nearly copies one of the {near_duplicate_window} comments before it "
            "in its discussion (word {near_duplicate_ngram}-gram Jaccard similarity of "
            "{near_duplicate_threshold} or more).",
            _near_duplicate,
        ),
    ]
}
assert tuple(FLAGS) == FLAG_NAMES


def flag_docs(config: QualityConfig) -> dict[str, str]:
    """What each flag ``config`` computes means, with its thresholds, for the dataset card."""
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    return {name: FLAGS[name].meaning.format(**values) for name in config.enabled}


FLAG_DOCS: dict[str, str] = flag_docs(QualityConfig())  # the meanings at the defaults


def flag_comment(
    text: str,
    *,
    finish_reason: str,
    earlier: Sequence[str],
    persona_values: Sequence[str],
    participant_names: Sequence[str],
    scaffolding: Sequence[str],
    config: QualityConfig,
) -> list[str]:
    """The sorted names of the flags (among ``config``'s) that this comment raises.

    See the module docstring for what each argument should hold and each flag's rule.
    """
    check = CommentCheck(
        text, finish_reason or "", earlier, persona_values, participant_names, scaffolding, config
    )
    return sorted(name for name in config.enabled if FLAGS[name].check(check))
