"""Cleaning a model's reply into the comment a forum would show; the raw text is kept apart.

Removed: an echoed speaker prefix ("Alice:", "**Alice**:", "Alice wrote:", "User Alice
posted:"), quotation marks wrapping the whole comment, and everything from the point where the
model starts writing another participant's turn.
"""

from __future__ import annotations

import functools
import re

_QUOTES = [('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("`", "`")]


@functools.lru_cache(maxsize=1024)
def _patterns(names: tuple[str, ...]) -> tuple[re.Pattern[str], re.Pattern[str] | None]:
    """The echoed-prefix pattern and the turn-start pattern for one set of participants.

    Both are built over every name of the discussion (sorted, longest first), so each
    discussion compiles them once and all its speakers share them; which names count as
    "someone else" is checked on the match. Compiling these alternations costs about a
    millisecond, more than cleaning a reply, hence the cache.
    """
    alt = "|".join(re.escape(n) for n in names if n)
    prefix = re.compile(
        rf"^\s*(?:\[|\*\*|__)?\s*(?:user\s+)?(?:{alt})\s*(?:\]|\*\*|__)?"
        rf"\s*(?:\((?:moderator|you)\))?\s*(?:wrote|says|said|posted|replied)?\s*:\s*",
        re.IGNORECASE,
    )
    turn = re.compile(
        rf"\n\s*(?:\*\*)?(?P<name>{alt})(?:\*\*)?"
        rf"\s*(?:\([^)]*\))?\s*(?:wrote|says|said|posted|replied)?\s*:",
        re.IGNORECASE,
    )
    return prefix, turn


def _strip_names(text: str, names: tuple[str, ...], others: set[str]) -> str:
    # Both patterns need a name in the text: most replies have none, and a substring test
    # is far cheaper than compiling the discussion's patterns (casefold covers what
    # re.IGNORECASE matches).
    folded = text.casefold()
    if not any(n.casefold() in folded for n in names):
        return text
    prefix, turn_start = _patterns(names)
    # A reply may echo its own name; strip repeatedly ("Alice: Alice: hi").
    for _ in range(3):
        stripped = prefix.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped.strip()
    # Cut where the model starts someone else's turn on a new line.
    for m in turn_start.finditer(text):
        if m.group("name").casefold() in others:
            return text[: m.start()].strip()
    return text


def clean_reply(raw: str, speaker: str, others: list[str]) -> str:
    text = raw.strip()
    names = tuple(sorted({n for n in (speaker, *others) if n}, key=lambda n: (-len(n), n)))
    if names:
        text = _strip_names(text, names, {n.casefold() for n in others if n})
    for left, right in _QUOTES:
        if len(text) >= 2 and text.startswith(left) and text.endswith(right):
            inner = text[1:-1].strip()
            if left not in inner:  # only when the quotes wrap the whole comment
                text = inner
                break
    return text.strip()


def is_no_intervention(text: str, marker: str) -> bool:
    norm = re.sub(r"[^a-z]", "", text.lower())
    return norm.startswith(re.sub(r"[^a-z]", "", marker.lower()))
