"""``near_duplicate``: a reply that nearly copies an earlier comment of its discussion (word
n-gram Jaccard similarity, ``shingle_jaccard``); see ``flags``'s docstring for the rule."""

from __future__ import annotations

import functools

from synth_disco.discussion.quality.comment import CommentCheck
from synth_disco.discussion.quality.text import _collapse, _tokens


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
