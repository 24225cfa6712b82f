"""A Jinja template source as pieces of literal text, expressions and statements: what
``scaffold`` takes a template's literal fragments from, and ``headers`` its comment headers."""

from __future__ import annotations

import re

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
