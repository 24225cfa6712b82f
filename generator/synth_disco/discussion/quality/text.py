"""The text primitives the flag rules share: whitespace collapsing, quote normalising, the
letter test, and a text's words (``_tokens``: casefolded ``\\w+`` runs, long runs character by
character; see ``flags``'s docstring for why words and how they are cached)."""

from __future__ import annotations

import functools
import re


def _collapse(s: str) -> str:
    """Whitespace runs as one space, none at the ends."""
    return " ".join(s.split())


def _norm_quotes(s: str) -> str:
    return s.replace("\u2019", "'").replace("\u2018", "'")


_LETTER = re.compile(r"[^\W\d_]")


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
