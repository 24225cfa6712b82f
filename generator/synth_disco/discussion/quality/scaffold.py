"""``echoed_scaffolding``: a reply that repeats text of its own prompt's template.

``scaffold_fragments`` gives a template's literal text, ``prompt_scaffolding`` the scaffolding
of one rendered prompt (the template's fragments and the rendered lines built from them), and
``_echoed`` the flag's rule over it (see ``flags``'s docstring).
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Sequence

from synth_disco.discussion.quality.comment import CommentCheck
from synth_disco.discussion.quality.template_text import _segments
from synth_disco.discussion.quality.text import _LETTER, _collapse


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
