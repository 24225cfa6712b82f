"""Quality flags for generated comments: which published comments are broken, and how.

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
    The rules (``_ASSISTANT``) are narrow on purpose: "AI" in a sentence, "As an AI
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

Stop strings. ``header_stop_strings`` gives the ones runs send by default (``quality.stop_strings``):
the turn template's comment headers without names, the same for every discussion, so the
transformers engine keeps batching (it batches only requests with equal stop strings and builds
one stopping criterion per distinct set); ``strip_dangling_header`` removes the name such a
stop leaves on a reply's last line. ``default_stop_strings`` gives stops with every speaker's
name, exact but one set per discussion: ``bench/stop_strings.py`` measures the difference (4x
slower on 8 discussions). See the two docstrings.
"""

from __future__ import annotations

import bisect
import functools
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

from synth_disco.recipe.quality import FLAG_NAMES, QualityConfig

# -- configuration: FLAG_NAMES and QualityConfig live with the recipe schema (recipe/quality.py),
# which validates a recipe's `quality:` block with them; they are re-exported here.

# -- the comment being judged ------------------------------------------------------------------


@dataclass(frozen=True)
class CommentCheck:
    """Everything a flag may look at (``flag_comment``'s arguments)."""

    text: str
    finish_reason: str
    earlier: Sequence[str]
    persona_values: Sequence[str]
    participant_names: Sequence[str]
    scaffolding: Sequence[str]
    config: QualityConfig = field(default_factory=QualityConfig)


@dataclass(frozen=True)
class Flag:
    """A flag: its column value, its one-line meaning for the dataset card (a format string
    over ``QualityConfig``'s fields, see ``flag_docs``) and its check."""

    name: str
    meaning: str
    check: Callable[[CommentCheck], bool]


def _collapse(s: str) -> str:
    """Whitespace runs as one space, none at the ends."""
    return " ".join(s.split())


def _norm_quotes(s: str) -> str:
    return s.replace("\u2019", "'").replace("\u2018", "'")


# -- truncated, empty --------------------------------------------------------------------------


def _truncated(c: CommentCheck) -> bool:
    return c.finish_reason == "length"


def _empty(c: CommentCheck) -> bool:
    return not c.text.strip()


# -- echoed scaffolding ------------------------------------------------------------------------

_JINJA_TAG = re.compile(r"(\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\})", re.DOTALL)
_RAW = re.compile(r"\{%-?\s*raw\s*-?%\}(.*?)\{%-?\s*endraw\s*-?%\}", re.DOTALL)


def _segments(source: str) -> list[tuple[str, str]]:
    """A Jinja source as ("text" | "expr" | "stmt", content) pieces; comments dropped.

    Regex-based: enough for forum templates (``{% raw %}`` blocks count as text; a tag whose
    string literal contains a closing delimiter is not supported).
    """
    out: list[tuple[str, str]] = []
    pos = 0
    for raw in _RAW.finditer(source):
        out.extend(_tag_segments(source[pos : raw.start()]))
        out.append(("text", raw.group(1)))
        pos = raw.end()
    out.extend(_tag_segments(source[pos:]))
    return out


def _tag_segments(source: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for i, piece in enumerate(_JINJA_TAG.split(source)):
        if i % 2 == 0:
            if piece:
                out.append(("text", piece))
        elif piece.startswith("{{"):
            out.append(("expr", piece[2:-2].strip("- ")))
        elif piece.startswith("{%"):
            out.append(("stmt", piece[2:-2].strip("- ")))
    return out


@functools.lru_cache(maxsize=64)
def _fragments(template_source: str, min_chars: int) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for kind, content in _segments(template_source):
        if kind != "text":
            continue
        for line in content.split("\n"):
            frag = _collapse(line)
            if len(frag) >= min_chars:
                out[frag] = None
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _fragment_finder(
    templates: tuple[str, ...], min_chars: int
) -> tuple[tuple[str, ...], re.Pattern[str] | None]:
    """The templates' fragments, and one pattern that finds any of them in a line."""
    frags = tuple(dict.fromkeys(f for t in templates for f in _fragments(t, min_chars)))
    if not frags:
        return frags, None
    ordered = sorted(frags, key=len, reverse=True)
    # Spaces in a fragment match any run of spaces or tabs (fragments are collapsed).
    alt = "|".join(r"[^\S\n]+".join(map(re.escape, f.split(" "))) for f in ordered)
    return frags, re.compile(alt)


def scaffold_fragments(template_source: str, min_chars: int = 4) -> list[str]:
    """The literal text of a Jinja template: the text between its tags, split into lines,
    whitespace-collapsed, each kept once (in order) if at least ``min_chars`` long.

    For the built-in turn template this gives e.g. "Original post by", "replied:", "earlier
    comment", "not shown]", "wrote:", "You are", "About you:", "Your instructions:" and the
    closing instructions. A recipe that overrides the template gets its own fragments.
    """
    return list(_fragments(template_source, min_chars))


def prompt_scaffolding(
    prompt: str,
    templates: Sequence[str],
    quoted: Sequence[str] = (),
    extra: Sequence[str] = (),
    min_chars: int = 4,
) -> list[str]:
    """The scaffolding of one rendered prompt, for ``flag_comment(scaffolding=...)``.

    ``prompt`` is the rendered prompt (the system and user messages joined by newlines),
    ``templates`` the template sources it was rendered from, ``quoted`` the texts it quotes
    (the OP, seed and earlier comments: not scaffolding). The result is the templates' literal
    fragments plus every rendered line that contains one of them and is not a line of a quoted
    text, with any quoted line embedded in it cut out: "You are jonah.b.", "alder wrote:",
    "[2 earlier comments not shown]", "About you: Age: 38. ...". ``extra`` texts (e.g. the
    speaker's instructions, whose later lines hold no template text) add their lines as they
    are. Sorted, so the same prompt gives the same list.
    """
    frags, finder = _fragment_finder(tuple(templates), min_chars)
    out = set(frags)
    out.update(x for text in extra for x in map(_collapse, text.split("\n")) if len(x) >= min_chars)
    quoted_lines = {q for text in quoted for q in map(_collapse, text.split("\n")) if q}
    cutters = sorted((q for q in quoted_lines if len(q) >= min_chars), key=len)
    cutter_sizes = [len(q) for q in cutters]
    for line in prompt.split("\n"):
        n = _collapse(line)
        if not n or n in quoted_lines or finder is None or not finder.search(n):
            continue
        # Quoted lines short enough to sit inside this one, longest first.
        inside = cutters[: bisect.bisect_left(cutter_sizes, len(n))]
        pieces = [n]
        for q in reversed(inside):
            if any(q in p for p in pieces):
                pieces = [s for p in pieces for s in p.split(q)]
        out.update(p.strip() for p in pieces if len(p.strip()) >= min_chars)
    return sorted(out)


_LINE_DECORATION = " \t>*_#\"'`\u201c\u201d"
_LETTER = re.compile(r"[^\W\d_]")


@functools.lru_cache(maxsize=64)
def _scaffold_matchers(
    scaffolding: tuple[str, ...], min_chars: int, anywhere_chars: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(fragments matched at a line start, fragments matched anywhere)."""
    frags = {" ".join(f.split()) for f in scaffolding}
    at_start = tuple(sorted(f for f in frags if len(f) >= min_chars and _LETTER.search(f)))
    return at_start, tuple(f for f in at_start if len(f) >= anywhere_chars)


def _echoed(c: CommentCheck) -> bool:
    cfg = c.config
    at_start, anywhere = _scaffold_matchers(
        tuple(c.scaffolding), cfg.scaffold_min_chars, cfg.scaffold_anywhere_chars
    )
    if not at_start:
        return False
    for line in c.text.split("\n"):
        if _collapse(line.lstrip(_LINE_DECORATION)).startswith(at_start):
            return True
    if anywhere:
        whole = _collapse(c.text)
        return any(f in whole for f in anywhere)
    return False


# -- speaker prefix ----------------------------------------------------------------------------

_VERB = (
    r"(?:wrote|writes|says|said|posted|posts|replied|replies|responded|responds|"
    r"commented|comments|asked|asks|added|adds)"
)
_GENERIC = r"(?:user|speaker|participant|commenter|poster|member|person)"
_DECOR = r"[\s>#*_\"'`\u201c\u201d]*"
_NUMBER = r"(?:(?:\[\d+\]|\(\d+\)|#\d+|\d+[.)])\s*)?"
_OPEN = r"(?:\*\*|__|\[|\()?"
_CLOSE = r"(?:\*\*|__|\]|\))?"
_AFTER = rf"\s*(?:\([^)\n]{{0,40}}\))?\s*(?:{_VERB})?\s*(?:\*\*|__)?\s*:"


@functools.lru_cache(maxsize=1024)
def _prefix_pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    alts = [
        # A generic label with a verb: any handle ("User GreenTea posted:").
        rf"{_GENERIC}\s+[\w.-]{{1,40}}{_CLOSE}\s*(?:\([^)\n]{{0,40}}\))?\s*{_VERB}"
        r"\s*(?:\*\*|__)?\s*:",
        # A generic label without one: a handle-like id ("User 12:", "Speaker B:").
        rf"{_GENERIC}(?:\s*#?\d+|\s+[a-z]|\s+[\w.-]*[\d_.][\w.-]*){_CLOSE}{_AFTER}",
        rf"(?:moderator|mod){_CLOSE}{_AFTER}",
    ]
    if names:
        alt = "|".join(re.escape(n) for n in names)
        alts.insert(0, rf"(?:{_GENERIC}\s+)?(?:{alt}){_CLOSE}{_AFTER}")
    return re.compile(rf"^{_DECOR}{_NUMBER}{_OPEN}\s*(?:{'|'.join(alts)})", re.IGNORECASE)


def _speaker_prefix(c: CommentCheck) -> bool:
    names = tuple(sorted({n for n in c.participant_names if n}, key=lambda n: (-len(n), n)))
    return _prefix_pattern(names).match(c.text) is not None


# -- persona leak ------------------------------------------------------------------------------

_UNINFORMATIVE = {
    "yes", "no", "true", "false", "none", "n/a", "na", "null", "unknown", "other",
    "prefer not to say", "-",
}  # fmt: skip
_NUMERIC = re.compile(r"\d+(?:\.\d+)?")
_AS_A = re.compile(r"as\s+an?\s")
# What may come right before "as a" in a self-description: a clause start, or one of these words.
_CLAUSE_BEFORE = re.compile(
    r"(?:(?:^|[.!?;:,(\n\"])\s*|\b(?:speaking|work|works|worked|working|me|myself)\s+)\Z"
)


_AGE_BEFORE = re.compile(r"(?:\b(?:i'?m|i\s+am|aged?:?)\s+|\(\s*)\Z")
_AGE_AFTER = re.compile(r"[\s-]*(?:years?|yrs?|y/?o)\b")


# The value tests below take the lowercased text and check the character before a match by
# hand: a pattern that starts with a literal is found by a fast scan, one that starts with a
# look-behind or runs case-insensitively is tried at every position (5x slower).


def _starts_word(text: str, i: int, also: str = "") -> bool:
    return i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_" + also)


def _word_in(phrase: re.Pattern[str], low: str) -> bool:
    return any(_starts_word(low, m.start()) for m in phrase.finditer(low))


def _age_in(number: re.Pattern[str], low: str) -> bool:
    """Whether the number occurs as an age: "I'm 38", "aged 38", "38 years", "38yo", "(38"."""
    for m in number.finditer(low):
        if not _starts_word(low, m.start(), "."):
            continue
        if _AGE_BEFORE.search(low, max(0, m.start() - 12), m.start()):
            return True
        if _AGE_AFTER.match(low, m.end()):
            return True
    return False


def _phrase(value: str) -> str:
    return r"\s+".join(re.escape(w) for w in value.split())


@functools.lru_cache(maxsize=4096)
def _persona_patterns(
    values: tuple[str, ...],
) -> tuple[tuple[Callable[[str], object], ...], re.Pattern[str] | None]:
    """One test per usable value (truthy when it occurs), and the self-description pattern
    over all of them."""
    per_value = []
    words, ages = [], []
    for v in values:
        if _NUMERIC.fullmatch(v):
            n = re.escape(v)
            per_value.append(functools.partial(_age_in, re.compile(rf"{n}(?!\w|\.\d)")))
            ages.append(n)
        else:
            phrase = re.compile(rf"{_phrase(v.lower())}(?!\w)")
            per_value.append(functools.partial(_word_in, phrase))
            words.append(_phrase(v.lower()))
    alts = []
    if ages:
        alts.append(rf"(?:{'|'.join(ages)})[\s-]*(?:years?|yrs?)[\s-]*old\b")
    if words:
        alts.append(rf"(?:{'|'.join(sorted(words, key=len, reverse=True))})(?!\w)")
    self_desc = None
    if alts:  # matched on the lowercased text at an "as a" (see _self_described)
        body = "|".join(alts)
        self_desc = re.compile(rf"as\s+an?\s+(?:[\w'-]+[\s,]+){{0,3}}?(?:{body})")
    return tuple(per_value), self_desc


def _self_described(self_desc: re.Pattern[str], low: str) -> bool:
    for m in _AS_A.finditer(low):
        i = m.start()
        if (
            _starts_word(low, i)
            and _CLAUSE_BEFORE.search(low, max(0, i - 12), i)
            and self_desc.match(low, i)
        ):
            return True
    return False


@functools.lru_cache(maxsize=4096)
def _usable_values(values: tuple[str, ...], names: tuple[str, ...]) -> tuple[str, ...]:
    taken = {n.casefold() for n in names if n}
    out: dict[str, None] = {}
    for v in values:
        v = _collapse(_norm_quotes(str(v)))
        k = v.casefold()
        if not v or k in _UNINFORMATIVE or k in taken:
            continue
        if len(v) < 3 and not _NUMERIC.fullmatch(v):
            continue
        out[v] = None
    return tuple(sorted(out))


def _persona_leak(c: CommentCheck) -> bool:
    values = _usable_values(tuple(c.persona_values), tuple(c.participant_names))
    if not values:
        return False
    text = _norm_quotes(c.text)
    low = text.lower()
    # Every pattern needs its value's first word in the text: test that first (it is cheap).
    present = [i for i, v in enumerate(values) if v.split()[0].lower() in low]
    if not present:
        return False
    per_value, self_desc = _persona_patterns(values)
    if (
        c.config.persona_self_description
        and self_desc is not None
        and _self_described(self_desc, low)
    ):
        return True
    hits = 0
    for test in (per_value[i] for i in present):
        if test(low):
            hits += 1
            if hits >= c.config.persona_min_values:
                return True
    return False


# -- assistant voice ---------------------------------------------------------------------------

_AI = (
    r"(?:an?\s+)?(?:ai|artificial intelligence)"
    r"(?:\s+(?:language\s+)?model|\s+assistant|\s+chatbot)?"
)
_THEN = (
    r"(?=\s*(?:[,.;:!)]|$)|\s+(?:and|so|but|i|my|that|with|without|developed|trained|created|"
    r"built|designed|programmed|made)\b)"
)
_CANT = (
    r"i\s+(?:can't|cannot|can\s+not|won't|will\s+not|am\s+unable\s+to|'m\s+unable\s+to|"
    r"am\s+not\s+able\s+to|'m\s+not\s+able\s+to|must\s+(?:respectfully\s+)?decline\s+to)"
)
_REQUEST = r"(?:this|that|your|the|such\s+a)\s+(?:request|task|prompt)"
# Each rule: the words one of which must be in the (casefolded) text for it to apply, checked
# first because a substring test is far cheaper than the pattern; then the pattern.
_ASSISTANT: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = tuple(
    (triggers, re.compile("|".join(patterns), re.MULTILINE))
    for triggers, patterns in [
        (
            (" ai", "artificial", "language model", "assistant"),
            [
                rf"\bas\s+{_AI}{_THEN}",
                r"\bas\s+a\s+(?:large\s+)?language\s+model\b",
                rf"\bi(?:'m|\s+am)\s+(?:just\s+|only\s+|merely\s+|simply\s+|not\s+)?"
                rf"(?:{_AI}|an?\s+(?:large\s+)?language\s+model|an?\s+(?:virtual\s+)?assistant)"
                rf"{_THEN}",
                rf"\bas\s+(?:a|an|your)\s+(?:helpful\s+|friendly\s+|virtual\s+)?assistant{_THEN}",
            ],
        ),
        (
            ("can't", "cannot", "can not", "won't", "will not", "unable", "not able", "decline"),
            [
                rf"\b{_CANT}\s+(?:fulfill|fulfil|comply\s+with|complete|help\s+with|"
                rf"assist\s+with|process|respond\s+to)\s+{_REQUEST}",
                rf"\b{_CANT}\s+(?:comply|assist)(?=\s*[.!,]|\s+with\s+(?:this|that)\b)",
                rf"\b{_CANT}\s+(?:generate|create|produce|write)\s+(?:content|a\s+response|"
                r"(?:a|this|that|such)\s+(?:\w+\s+){0,2}(?:content|comment|response|post)\s+that)",
                rf"\b{_CANT}\s+(?:engage\s+in|continue)\s+(?:this|that)\s+"
                r"(?:role-?\s?play|conversation)",
            ],
        ),
        (
            ("sorry",),
            [
                r"\bi(?:'m|\s+am)\s+(?:really\s+|very\s+|so\s+)?sorry,?\s+but\s+(?:"
                rf"{_CANT}|i\s+(?:don't|do\s+not)\s+(?:feel\s+comfortable|have\s+(?:personal|"
                r"the\s+ability|access))|as\s+an?\s+(?:ai|language)|i\s+must\s+"
                r"(?:respectfully\s+)?(?:decline|refuse))",
            ],
        ),
        (
            ("personal",),
            [
                r"\bi\s+(?:don't|do\s+not)\s+have\s+personal\s+(?:opinions|beliefs|feelings|"
                r"experiences|preferences|views)\b",
            ],
        ),
        (
            ("sure", "certainly", "of course", "absolutely"),
            [
                r"^\W*(?:sure|certainly|of\s+course|absolutely)\s*[!,.]\s*(?:"
                r"here(?:'s|\s+is|\s+are)\b[^.\n]{0,40}?\b"
                r"(?:comment|response|reply|post|message|version|draft)s?\b|"
                r"i(?:'d|\s+would)\s+be\s+(?:happy|glad)\s+to\b)",
            ],
        ),
        (
            ("here's", "here is"),
            [
                r"\bhere(?:'s|\s+is)\s+(?:a|an|my|the|your)\s+(?:[\w-]+\s+){0,3}?"
                r"(?:comment|response|reply|forum\s+post|message|draft)\s*"
                r"(?::|\b(?:as|from|in\s+the\s+(?:voice|style|persona))\b)",
            ],
        ),
        (
            ("let me know",),
            [
                r"\blet\s+me\s+know\s+if\s+you(?:'d|\s+would)\s+like\s+(?:me\s+to\s+)?"
                r"(?:any\s+)?(?:changes|adjust|revis|modif|rephras|another\s+version|"
                r"a\s+different)",
            ],
        ),
    ]
)


def _assistant_voice(c: CommentCheck) -> bool:
    text = _norm_quotes(c.text).casefold()
    flat = " " + _collapse(text)  # triggers are tested on this: " ai" also at the start
    return any(
        any(t in flat for t in triggers) and pattern.search(text) is not None
        for triggers, pattern in _ASSISTANT
    )


# -- repetition --------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")
_LONG_RUN = 20


@functools.lru_cache(maxsize=4096)
def _tokens(text: str) -> tuple[str, ...]:
    """The casefolded words of a text (``\\w+`` runs). A run longer than 20 characters is
    taken character by character: text without spaces (Chinese, Japanese, Thai) or a loop
    such as "hahahaha..." is then measured by its characters, not as one huge word."""
    out: list[str] = []
    for w in _WORD.findall(text.casefold()):
        if len(w) > _LONG_RUN:
            out.extend(w)
        else:
            out.append(w)
    return tuple(out)


def repeated_ngram_ratio(text: str, n: int = 3) -> float:
    """The share of the word n-grams of ``text`` that repeat an earlier one (0 when none)."""
    words = _tokens(text)
    total = len(words) - n + 1
    if total <= 0:
        return 0.0
    distinct = len(set(zip(*(words[i:] for i in range(n)), strict=False)))
    return (total - distinct) / total


def compression_ratio(text: str) -> float:
    """Compressed size / UTF-8 size: ~0.6 for prose, low for loops.

    Raw DEFLATE (no zlib header) with a 4 KiB window and a small hash table: for a comment of a
    few hundred bytes this is the same ratio as ``zlib.compress`` within a few hundredths, at
    a seventh of the cost (most of which is setting up the default 32 KiB window).
    """
    data = text.encode("utf-8")
    if not data:
        return 1.0
    z = zlib.compressobj(6, zlib.DEFLATED, -12, 4)
    return (len(z.compress(data)) + len(z.flush())) / len(data)


def _repetition(c: CommentCheck) -> bool:
    cfg = c.config
    text = c.text.strip()
    if (
        len(_tokens(text)) >= cfg.repetition_min_words
        and repeated_ngram_ratio(text, cfg.repetition_ngram) >= cfg.repetition_max_ratio
    ):
        return True
    if len(text) >= cfg.compression_min_chars:
        return compression_ratio(text) <= cfg.compression_min_ratio
    return False


# -- near duplicate ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _shingled(text: str, n: int) -> tuple[int, frozenset[tuple[str, ...]]]:
    """The length of the whitespace-collapsed text, and the set of its word n-grams (the one
    short n-gram of all its words when it has fewer than n)."""
    words = _tokens(text)
    size = len(_collapse(text))
    if len(words) <= n:
        return size, frozenset((words,)) if words else frozenset()
    return size, frozenset(zip(*(words[i:] for i in range(n)), strict=False))


def shingle_jaccard(a: str, b: str, n: int = 2) -> float:
    """Jaccard similarity of the word n-gram sets of two texts (casefolded words, see
    ``_tokens``); 1.0 for two texts without words."""
    sa, sb = _shingled(a, n)[1], _shingled(b, n)[1]
    if not sa and not sb:
        return 1.0
    inter = len(sa & sb)
    return inter / (len(sa) + len(sb) - inter)


def _near_duplicate(c: CommentCheck) -> bool:
    cfg = c.config
    k, t = cfg.near_duplicate_ngram, cfg.near_duplicate_threshold
    size, mine = _shingled(c.text, k)
    if size < cfg.near_duplicate_min_chars:
        return False
    n = len(mine)
    for other in c.earlier[-cfg.near_duplicate_window :]:
        other_size, theirs = _shingled(other, k)
        if other_size < cfg.near_duplicate_min_chars:
            continue
        m = len(theirs)
        if min(n, m) < t * max(n, m):  # Jaccard <= min/max: cannot reach the threshold
            continue
        inter = len(mine & theirs)
        if inter >= t * (n + m - inter):
            return True
    return False


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


# -- stop strings ------------------------------------------------------------------------------

_OPENS = re.compile(r"^(?:if|for|macro|call|filter|with|block)\b")
_CLOSES = re.compile(r"^end\w*\b")


@functools.lru_cache(maxsize=64)
def _comment_headers(template_source: str) -> tuple[tuple[str, str], ...]:
    lines: list[list[tuple[str, str, int]]] = [[]]
    depth = 0
    for kind, content in _segments(template_source):
        if kind == "stmt":
            if _CLOSES.match(content):
                depth -= 1
            elif _OPENS.match(content):
                depth += 1
            continue
        if kind == "expr":
            lines[-1].append(("expr", content, depth))
            continue
        for i, part in enumerate(content.split("\n")):
            if i:
                lines.append([])
            if part:
                lines[-1].append(("text", part, depth))
    out: dict[tuple[str, str], None] = {}
    for line in lines:
        first = next((i for i, it in enumerate(line) if it[0] == "expr"), None)
        if first is None:
            continue
        base_depth = line[first][2]
        # Before the name: the literal text at the name's own level ("Comment by ", "**").
        before = "".join(c for _, c, d in line[:first] if d == base_depth).lstrip()
        pieces = []
        for kind, content, d in line[first + 1 :]:
            if kind == "expr":
                break  # the header ends where the next value (the comment text) starts
            pieces.append((content, d > base_depth))
        full = "".join(p for p, _ in pieces).rstrip()
        base = "".join(p for p, optional in pieces if not optional).rstrip()
        for after in (base, full):
            if after.endswith(":") and len(after) <= 40 and len(before) <= 40:
                out[(before, after)] = None
    return tuple(out)


def comment_headers(turn_template: str) -> list[tuple[str, str]]:
    """The template's comment headers, as (text before the name, text after it) pairs.

    A header is a template line with an expression (the author's name) followed, up to the
    next expression or the end of the line, by literal text ending in ":". Literal text
    inside ``{% if %}`` after the name is optional, so the built-in turn template gives
    ("Original post by ", ":"), ("", " replied:"), ("", " wrote:") and
    ("", " (moderator) wrote:"); a recipe's "**{{ c.author }}** says: {{ c.text }}" gives
    ("**", "** says:").
    """
    return list(_comment_headers(turn_template))


def default_stop_strings(turn_template: str, names: Sequence[str]) -> list[str]:
    """Stop strings that end a reply where the model starts writing another speaker's turn.

    For each name: ``"\\n<name>:"`` and ``"\\n" + before + name + after`` for each of the
    turn template's ``comment_headers`` ("\\nalder wrote:", "\\nalder (moderator) wrote:",
    "\\nOriginal post by alder:"), so a recipe-overridden template gets stops for its own
    headers. A stop that another one is a prefix of is dropped (the shorter one fires first).
    Sorted and deduplicated.

    Pass every name of the discussion, the speaker's own included: a line starting with the
    speaker's name and a colon is a new turn too. A name mid-line ("I agree with alder: ...")
    and a line that starts with other words are not cut. Stops are exact-case (engines match
    them literally); ``clean_reply`` still cuts case-insensitive leftovers.

    The names differ per discussion, so the stop tuples do too: an engine that groups requests
    by stop tuple, or builds stopping criteria per tuple (the transformers engine does both;
    building one scans the vocabulary), sees one group per discussion instead of one per run.
    """
    headers = [("", ":"), *_comment_headers(turn_template)]
    stops = {f"\n{b}{n}{a}" for n in dict.fromkeys(names) if n and n.strip() for b, a in headers}
    return sorted(s for s in stops if not any(t != s and s.startswith(t) for t in stops))


def header_stop_strings(turn_template: str) -> list[str]:
    """The stop strings a run uses by default: the turn template's comment headers, without
    names, so every discussion of a cell gets the same ones.

    For each of ``comment_headers``: ``"\n" + before`` when the header has words before the
    name ("\nOriginal post by "); else, when the header ends its line in the template,
    ``after + "\n"`` (" wrote:\n", " replied:\n", " (moderator) wrote:\n"): a model starting
    another turn writes "\nbirch wrote:\n", and the reply is cut at " wrote:";
    ``strip_dangling_header`` then removes the name left on the reply's last line. A header
    followed by the text on its own line ("{{ c.author }} says: {{ c.text }}") gets no stop
    string: " says: " would cut ordinary prose; ``clean_reply`` still cuts such a turn from
    the text. A stop that another one is a prefix of is dropped. Sorted.

    Why not ``default_stop_strings`` (with names): the transformers engine batches only
    requests with the same stop strings, and builds a ``StopStringCriteria`` per distinct set
    (it scans the vocabulary for each string: ~0.03 s a string on a 49k vocabulary). Names
    differ per discussion, so every discussion would be its own batch; one set for the whole
    run (every pool name) costs ~60 s to build and ~0.2 s per decoding step at 1,000 strings.
    ``bench/stop_strings.py`` measures both against these few name-free strings.
    The cost: " wrote:" ending a line of ordinary prose ("as the article wrote:" then a line
    break) ends a reply early too.
    """
    # The template's literal text with each value as NUL (statements vanish): is a header
    # followed by a line break, or by a value on its own line?
    text_only = "".join(
        c if kind == "text" else "\0" if kind == "expr" else ""
        for kind, c in _segments(turn_template)
    )
    stops: set[str] = set()
    for before, after in _comment_headers(turn_template):
        if _LETTER.search(before):
            stops.add("\n" + before)
        elif after.strip() and re.search(re.escape(after) + r"[^\S\n]*\n", text_only):
            stops.add(after + "\n")
    return sorted(s for s in stops if not any(t != s and s.startswith(t) for t in stops))


_HEADER_DECORATION = " \t*_[]#>@`\"'\u201c\u201d"


_HANDLE = re.compile(r"[\w.-]*[\d_.][\w.-]*")


def strip_dangling_header(text: str, names: Sequence[str]) -> str:
    """``text`` without a last line that is only a speaker label: a participant's name
    (possibly decorated: "**birch**", "[birch]") or a handle-like word ("pk_sondre",
    "user42": a digit, "_" or "." in one word). That is what is left when a header stop string
    ("\nbirch wrote:\n") cut the reply after the name; models also invent handles there. Any
    other last line ("Cheers", "birch is right") is kept. Call it on replies that ended on a
    stop string only."""
    head, sep, last = text.rstrip().rpartition("\n")
    if not sep:
        return text
    label = last.strip(_HEADER_DECORATION)
    if label and (
        label.casefold() in {n.casefold() for n in names if n} or _HANDLE.fullmatch(label)
    ):
        return head.rstrip()
    return text


# -- rough benchmark: python -m synth_disco.discussion.quality ----------------------------------


def _benchmark(n: int = 10_000) -> tuple[float, float]:  # pragma: no cover - a manual check
    """CPU seconds spent in (prompt_scaffolding, flag_comment) flagging ``n`` random comments
    in discussions of 20, each against all its predecessors and with the scaffolding of its
    own rendered prompt (rendering is not timed)."""
    import random
    import time

    from synth_disco.discussion.prompts import Shown, Speaker, build_messages, builtin_template

    rng = random.Random(0)
    vocab = [
        *["the", "bus", "route", "council", "park", "tree", "rent", "library", "late", "early"],
        *["people", "think", "agree", "why", "how", "never", "always", "maybe", "street"],
        *["night", "morning", "shop", "school", "money", "vote", "plan", "road"],
    ]

    def sentence() -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(8, 20))).capitalize() + "."

    names = ["alder", "jonah.b", "marguerite_b", "tomas.k", "deltaSteve"]
    values = ["38", "male", "bus driver", "high school", "patient, dry humour", "Leeds"]
    turn, system = builtin_template("turn.j2"), builtin_template("system.j2")
    texts = [" ".join(sentence() for _ in range(rng.randint(1, 4))) for _ in range(n)]
    jobs = []
    for i, text in enumerate(texts):
        earlier = texts[i - i % 20 : i]
        shown = [Shown(rng.choice(names), "user", t) for t in earlier[-6:]]
        messages = build_messages(
            {"system": system, "turn": turn},
            context="A forum.",
            title="Buses",
            op=Shown("alder", "op", "The bus is late."),
            seed_comments=[],
            visible=shown,
            omitted=len(earlier) - len(shown),
            speaker=Speaker("jonah.b", "user", "Age: 38.", "Be brief.\nStay in character."),
            parent=shown[-1] if shown else None,
        )
        jobs.append((text, earlier, "\n".join(m["content"] for m in messages), shown))
    cfg = QualityConfig()
    scaffolding_s = flags_s = 0.0
    for text, earlier, prompt, shown in jobs:
        t0 = time.process_time()
        scaffolding = prompt_scaffolding(
            prompt, [turn, system], ["The bus is late.", *(s.text for s in shown)]
        )
        t1 = time.process_time()
        flag_comment(
            text,
            finish_reason="stop",
            earlier=earlier,
            persona_values=values,
            participant_names=names,
            scaffolding=scaffolding,
            config=cfg,
        )
        scaffolding_s += t1 - t0
        flags_s += time.process_time() - t1
    return scaffolding_s, flags_s


if __name__ == "__main__":  # pragma: no cover
    scaffolding_s, flags_s = _benchmark()
    print(
        f"10,000 comments: prompt_scaffolding {scaffolding_s:.2f} CPU s, flag_comment "
        f"{flags_s:.2f} CPU s ({(scaffolding_s + flags_s) * 100:.0f} us per comment in all)"
    )
