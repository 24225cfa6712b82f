"""Cleaning a model's reply into the comment a forum would show; the raw text is kept apart.

Removed: an echoed speaker prefix ("Alice:", "**Alice**:", "Alice wrote:", "User Alice
posted:"), quotation marks wrapping the whole comment, and everything from the point where the
model starts writing another participant's turn.
"""

from __future__ import annotations

import re

_QUOTES = [('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("`", "`")]


def _prefix_pattern(names: list[str]) -> re.Pattern[str]:
    alt = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True) if n)
    return re.compile(
        rf"^\s*(?:\[|\*\*|__)?\s*(?:user\s+)?(?:{alt})\s*(?:\]|\*\*|__)?"
        rf"\s*(?:\((?:moderator|you)\))?\s*(?:wrote|says|said|posted|replied)?\s*:\s*",
        re.IGNORECASE,
    )


def clean_reply(raw: str, speaker: str, others: list[str]) -> str:
    text = raw.strip()
    names = [speaker, *others]
    # A reply may echo its own name; strip repeatedly ("Alice: Alice: hi").
    prefix = _prefix_pattern(names)
    for _ in range(3):
        stripped = prefix.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped.strip()
    # Cut where the model starts someone else's turn on a new line.
    if others:
        turn_start = re.compile(
            rf"\n\s*(?:\*\*)?(?:{'|'.join(re.escape(n) for n in others if n)})(?:\*\*)?"
            rf"\s*(?:\([^)]*\))?\s*(?:wrote|says|said|posted|replied)?\s*:",
            re.IGNORECASE,
        )
        m = turn_start.search(text)
        if m:
            text = text[: m.start()].strip()
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
