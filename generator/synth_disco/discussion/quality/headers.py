"""The turn template's comment headers ("alder wrote:", "Original post by alder:") and the stop
strings made from them, which end a reply where the model starts another speaker's turn.

``header_stop_strings`` gives the ones runs send by default (``quality.stop_strings``): the
turn template's comment headers without names, the same for every discussion, so the
transformers engine keeps batching (it batches only requests with equal stop strings and builds
one stopping criterion per distinct set); ``strip_dangling_header`` removes the name such a
stop leaves on a reply's last line. ``default_stop_strings`` gives stops with every speaker's
name, exact but one set per discussion: ``bench/stop_strings.py`` measures the difference (4x
slower on 8 discussions). See the two docstrings.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from synth_disco.discussion.quality.template_text import _segments
from synth_disco.discussion.quality.text import _LETTER

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
