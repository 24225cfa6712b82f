"""Parse a generated annotation answer into one label of a fixed set, or refuse.

Accepted: the label alone ("3", "toxic"), after a key ("Label: 3", "Answer - toxic"), wrapped
in markdown or quotes ("**3**", "`3`", '"3"'), followed by a rationale ("3 - because ...",
"3. It insults ...", "3/5 since ..."), case-insensitive for category names, and as the only
label mentioned in a sentence ("I would rate this a 3."). Refused: nothing recognisable, a
label outside the set ("7" on 1-5, "3.5"), and hedges between labels ("3 or 4", "2-3",
"agree/disagree", or a sentence naming two different labels).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# Keys a model puts before its answer; "final" and the dimension name are handled too.
_KEYS = r"(?:final\s+)?(?:label|answer|rating|score|category|class|classification|verdict|choice)"
_STRIP = str.maketrans({c: " " for c in "*`#>"})
_NUMBER = re.compile(r"[+-]?\d+(?:[.,]\d+)?")
# Words that join two labels into a hedge right after the first one.
_HEDGE = re.compile(r"^\s*(?:or\b|and\b|to\b|/|-|–|—|,|&|\|)\s*", re.IGNORECASE)
_OUT_OF = re.compile(r"^\s*(?:/|out\s+of)\s*\d+\b", re.IGNORECASE)
# "on a scale of 1 to 5", "(1-5)", "out of 5": numbers that describe the scale, not an answer.
_SCALE_PHRASE = re.compile(
    r"(?:\b(?:on\s+)?(?:a\s+)?scale\s+(?:of|from)\s+\d+\s*(?:to|-|–)\s*\d+)"
    r"|(?:\(\s*\d+\s*(?:to|-|–)\s*\d+\s*\))"
    r"|(?:(?:/|\bout\s+of)\s*\d+\b)",
    re.IGNORECASE,
)
_OPENERS = "\"'([{ \n\t"
_CLOSERS = "\"')]} \t"


@dataclass(frozen=True)
class ParsedAnswer:
    """The label found (None when refused), the rest of the answer, and why it was refused."""

    label: str | None
    rationale: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.label is not None


def _clean(text: str) -> str:
    text = text.translate(_STRIP).replace("\u00a0", " ")
    return re.sub(r"[ \t]+", " ", text).strip()


def _boundary_ok(text: str, end: int, numeric: bool) -> bool:
    """A label match must end at a word boundary (and a number must not continue: 3.5, 30)."""
    if end >= len(text):
        return True
    nxt = text[end]
    if numeric:
        if nxt.isdigit():
            return False
        return not (nxt in ".," and end + 1 < len(text) and text[end + 1].isdigit())
    return not (nxt.isalnum() or nxt == "_")


def _fold(text: str) -> str:
    """Case-fold character by character, keeping indices aligned with the original text."""
    return "".join(f if len(f := c.casefold()) == 1 else c for c in text)


def _find_mentions(text: str, labels: Sequence[str]) -> list[tuple[int, int, str]]:
    """Non-overlapping whole-word label mentions, longest label first at each position."""
    low = _fold(text)
    found: list[tuple[int, int, str]] = []
    for label in labels:
        key = _fold(label)
        numeric = bool(_NUMBER.fullmatch(label))
        start = 0
        while (i := low.find(key, start)) >= 0:
            start = i + 1
            before_ok = i == 0 or not (low[i - 1].isalnum() or low[i - 1] == "_")
            if numeric and i > 0 and low[i - 1] in ".,-+" and i > 1 and low[i - 2].isdigit():
                before_ok = False
            if before_ok and _boundary_ok(low, i + len(key), numeric):
                found.append((i, i + len(key), label))
    found.sort(key=lambda m: (m[0], -(m[1] - m[0])))
    kept: list[tuple[int, int, str]] = []
    for m in found:
        if not kept or m[0] >= kept[-1][1]:
            kept.append(m)
    return kept


def _rationale(rest: str) -> str:
    return re.sub(r"^[\s:.,;)\]\-–—=|/]+", "", rest).strip()


def parse_answer(text: str, labels: Sequence[str], dimension: str | None = None) -> ParsedAnswer:
    """The label ``text`` gives, from ``labels``; see the module doc for what is accepted."""
    if not labels:
        raise ValueError("no labels to parse against")
    cleaned = _clean(text or "")
    if not cleaned:
        return ParsedAnswer(None, error="empty answer")
    keys = _KEYS if not dimension else rf"(?:{_KEYS}|{re.escape(dimension)})"
    key_prefix = re.compile(rf"^{keys}\s*(?:is\b|[:=\-–—])\s*", re.IGNORECASE)
    numeric = all(_NUMBER.fullmatch(label) for label in labels)

    head = cleaned.lstrip(_OPENERS)
    while m := key_prefix.match(head):  # "Label: 3", "Final answer - 3", "toxicity = 3"
        head = head[m.end() :].lstrip(_OPENERS)
    found = _label_at_start(head, labels)
    if found is not None:
        label, rest = found
        if numeric and (m := _OUT_OF.match(rest)):
            rest = rest[m.end() :]  # "3/5", "3 out of 5": the scale, not a second label
        if _hedges(rest, labels, label):
            return ParsedAnswer(None, error=f"hedges between labels: {cleaned[:80]!r}")
        return ParsedAnswer(label, _rationale(rest))
    if numeric and (n := _NUMBER.match(head)):
        return ParsedAnswer(None, error=f"{n.group()!r} is not one of {', '.join(labels)}")

    # No label up front: a keyed answer anywhere ("... so my rating is 4"), the last one wins.
    for m in reversed(list(re.finditer(rf"\b{keys}\s*(?:is\b|[:=])\s*", cleaned, re.IGNORECASE))):
        found = _label_at_start(cleaned[m.end() :].lstrip(_OPENERS), labels)
        if found is not None:
            label, rest = found
            if _hedges(rest, labels, label):
                return ParsedAnswer(None, error=f"hedges between labels: {cleaned[:80]!r}")
            return ParsedAnswer(label, cleaned)
    # Else a single distinct label named anywhere ("I would call this toxic.").
    scan = _SCALE_PHRASE.sub(" ", cleaned) if numeric else cleaned
    distinct = {label for _, _, label in _find_mentions(scan, labels)}
    if len(distinct) == 1:
        return ParsedAnswer(distinct.pop(), cleaned)
    if distinct:
        return ParsedAnswer(None, error=f"names several labels: {', '.join(sorted(distinct))}")
    return ParsedAnswer(None, error=f"no label of {', '.join(labels)} found")


def _label_at_start(text: str, labels: Sequence[str]) -> tuple[str, str] | None:
    """The label ``text`` begins with (longest wins) and the text after it."""
    ms = _find_mentions(text, labels)
    if ms and ms[0][0] == 0:
        return ms[0][2], text[ms[0][1] :].lstrip(_CLOSERS)
    return None


def _hedges(rest: str, labels: Sequence[str], label: str) -> bool:
    """Whether ``rest`` (after a label) joins a different label to it: "or 4", "-3", "/no".

    After a bare comma the second label must end the clause ("3, 4"), so that "Yes, no doubt
    about it" stays a yes.
    """
    h = _HEDGE.match(rest)
    if not h:
        return False
    found = _label_at_start(rest[h.end() :].lstrip(_OPENERS), labels)
    if found is None or found[0] == label:
        return False
    if h.group().strip() == ",":
        after = found[1].lstrip()
        return not after or not after[0].isalnum()
    return True
