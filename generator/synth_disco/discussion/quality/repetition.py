"""``repetition``: a reply that loops, measured within its own text (the share of repeated
word n-grams, ``repeated_ngram_ratio``, and the DEFLATE ratio, ``compression_ratio``); see
``flags``'s docstring for the rule."""

from __future__ import annotations

import zlib

from synth_disco.discussion.quality.comment import CommentCheck
from synth_disco.discussion.quality.text import _tokens


def repeated_ngram_ratio(text: str, n: int = 3) -> float:
    """The share of the word n-grams of ``text`` that repeat an earlier one (0 when none)."""
    words = _tokens(text)
    total = len(words) - n + 1
    if total <= 0:
        return 0.0
    distinct = len(set(zip(*(words[i:] for i in range(n)), strict=False)))
    return (total - distinct) / total


def compression_ratio(text: str) -> float:
    """Compressed size / UTF-8 size: ~0.6 for prose, low for loops.

    Raw DEFLATE (no zlib header) with a 4 KiB window and a small hash table: for a comment of a
    few hundred bytes this is the same ratio as ``zlib.compress`` within a few hundredths, at
    a seventh of the cost (most of which is setting up the default 32 KiB window).
    """
    data = text.encode("utf-8")
    if not data:
        return 1.0
    z = zlib.compressobj(6, zlib.DEFLATED, -12, 4)
    return (len(z.compress(data)) + len(z.flush())) / len(data)


def _repetition(c: CommentCheck) -> bool:
    cfg = c.config
    text = c.text.strip()
    if (
        len(_tokens(text)) >= cfg.repetition_min_words
        and repeated_ngram_ratio(text, cfg.repetition_ngram) >= cfg.repetition_max_ratio
    ):
        return True
    if len(text) >= cfg.compression_min_chars:
        return compression_ratio(text) <= cfg.compression_min_ratio
    return False
