"""README.md of a dataset: the one merge of a freshly generated card into an existing README.

A README is YAML front matter (what the Hub and ``datasets`` read) and a markdown body; the part
of the body synth-disco generates sits between ``CARD_BEGIN`` and ``CARD_END``. The same merge
runs when the card is rendered (over the folder's README: ``card.render_card``) and when it is
published (over the README on the Hub: ``hub.push``), with one rule:

- Line endings: CRLF is read as LF, and the result has LF line endings (the generated card is
  LF, and a README saved by a Windows editor must not come back with both).
- Header: the generated keys win; keys only the existing README has are kept; lists of scalars
  (tags, languages) are unioned, generated entries first. A merge that adds nothing keeps the
  generated header byte for byte. An existing header that is not a YAML mapping is dropped.
- Body, existing README with markers: its text before and after the markers is kept, and the
  block between them is replaced by the generated one.
- Body, existing README without markers: a README synth-disco generated (equal, line endings
  and surrounding blank space aside, to the new card or to one of ``known_generated``) is
  replaced; the body of any other is kept in full after the generated body, so a person's text
  is never dropped and the Hub shows the generated summary first. The next merge finds the
  markers.
- A generated README without markers (a hand-made folder being pushed) counts as one block.

This module is below both ``dataset.card`` and ``hub.push``; ``dataset`` may not import ``hub``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from itertools import chain
from typing import Any

import yaml

CARD_BEGIN = "<!-- synth-disco:begin -->"
CARD_END = "<!-- synth-disco:end -->"
# Front matter: a first line "---", the YAML, a line "---" (end of text allowed after it).
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)?---[ \t]*(?:\n|\Z)", re.DOTALL)


def dump_header(meta: Mapping[str, Any]) -> str:
    """The YAML of a README header (keys in their order, unicode kept)."""
    return yaml.safe_dump(dict(meta), sort_keys=False, allow_unicode=True, width=100)


def card_text(header: Mapping[str, Any], block: str) -> str:
    """A README holding only the generated header and ``block`` between the markers."""
    return f"---\n{dump_header(header)}---\n{CARD_BEGIN}\n{block.strip()}\n{CARD_END}\n"


def merge_readme(
    existing: str | None, generated: str, *, known_generated: Iterable[str] = ()
) -> str:
    """``generated`` (a whole README, e.g. ``card_text``) merged into ``existing`` by the rule
    in the module docstring. ``known_generated`` are cards synth-disco published before; it is
    iterated only when ``existing`` has no markers, and only until one matches."""
    generated = _lf(generated)
    if existing is None or not existing.strip():
        return generated
    existing = _lf(existing)
    old_yaml, old_body = _split(existing)
    new_yaml, new_body = _split(generated)

    new_span = _block_span(new_body)
    if new_span is None:  # a README without markers: all of its body is generated
        new_body = f"{CARD_BEGIN}\n{new_body.strip()}\n{CARD_END}\n"
        new_span = (0, len(new_body) - 1)
    old_span = _block_span(old_body)
    if old_span is not None:
        before, after = old_body[: old_span[0]], old_body[old_span[1] :]
        body = before + new_body[new_span[0] : new_span[1]] + (after or "\n")
    elif any(existing.strip() == _lf(t).strip() for t in chain([generated], known_generated)):
        return generated
    elif old_body.strip():
        body = new_body.rstrip("\n") + "\n\n" + old_body.strip() + "\n"
    else:
        body = new_body

    header = _merged_header(new_yaml, old_yaml)
    return body if header is None else f"---\n{header}---\n{body}"


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n")


def _split(text: str) -> tuple[str | None, str]:
    """(YAML header text, or None without front matter; body)."""
    match = _FRONT_MATTER.match(text)
    if match is None:
        return None, text
    return match.group(1) or "", text[match.end() :]


def _block_span(body: str) -> tuple[int, int] | None:
    """Where the generated block (markers included) is in ``body``; None without one."""
    start = body.find(CARD_BEGIN)
    end = body.find(CARD_END, start) if start >= 0 else -1
    return None if end < 0 else (start, end + len(CARD_END))


def _load(yaml_text: str | None) -> dict[str, Any] | None:
    """A header's mapping; None when it is missing, not YAML or not a mapping."""
    if yaml_text is None:
        return None
    try:
        data = yaml.safe_load(yaml_text)
    except yaml.YAMLError:
        return None
    if data is None:
        return {}
    return data if isinstance(data, dict) else None


def _is_scalar(value: object) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _merged_header(new_yaml: str | None, old_yaml: str | None) -> str | None:
    """The header text: the generated one plus what only the existing one has; None for no
    header at all (neither README has one)."""
    new = _load(new_yaml)
    if new is None and new_yaml is not None:
        return new_yaml  # not YAML we can merge into: kept as generated (the Hub will say why)
    new = new or {}
    merged = dict(new)
    for key, value in (_load(old_yaml) or {}).items():
        if key not in merged:
            merged[key] = value
        elif (
            isinstance(merged[key], list)
            and isinstance(value, list)
            and all(_is_scalar(v) for v in [*merged[key], *value])
        ):
            merged[key] = merged[key] + [v for v in value if v not in merged[key]]
    if merged == new:
        return new_yaml
    return dump_header(merged)
