"""``persona_leak``: a reply that restates its persona's attributes (several of its values,
or a self-description such as "As a 38-year-old nurse"); see ``flags``'s docstring for the
rule."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from synth_disco.discussion.quality.comment import CommentCheck
from synth_disco.discussion.quality.text import _collapse, _norm_quotes

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
