"""Reuse of prompt key/value states across ``generate`` calls (automatic prefix caching).

Discussion prompts grow turn by turn and each one repeats most of an earlier prompt (system
text, thread, transcript so far). On a small model the prefill of those long prompts is most of
the cost of a batched turn, and it is the same work whether requests are batched or not. The
store keeps the KV states of recent prompts under a byte budget; a new prompt reuses the longest
stored prefix it shares and only its new tokens are run through the model.

Entries are per prompt (nothing about discussions is assumed) and are found through chained
hashes of fixed-size token blocks, as in vLLM's prefix caching, so a lookup costs one dict probe
per block; the match is then extended token by token and checked against the stored tokens, so
a reused state is always the state of exactly those tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# One (keys, values) pair per layer, each shaped (kv_heads, tokens, head_dim).
LayerKV = list[tuple[torch.Tensor, torch.Tensor]]

BLOCK = 16  # tokens per hashed block


@dataclass
class _Entry:
    tokens: np.ndarray
    kv: LayerKV
    nbytes: int
    hashes: list[int]


def _block_hashes(tokens: Sequence[int]) -> list[int]:
    """Chained hashes of the complete blocks of ``tokens`` (hash i covers blocks 0..i)."""
    out: list[int] = []
    h = 0
    for start in range(0, len(tokens) - BLOCK + 1, BLOCK):
        h = hash((h, tuple(tokens[start : start + BLOCK])))
        out.append(h)
    return out


class PrefixStore:
    """LRU store of prompt KV states, bounded by ``budget_bytes``.

    ``min_tokens`` is the shortest shared prefix worth reusing (shorter ones cost more to
    assemble than they save).
    """

    def __init__(self, budget_bytes: int, min_tokens: int = 32) -> None:
        self.budget_bytes = budget_bytes
        self.min_tokens = max(min_tokens, BLOCK)
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        # block-chain hash -> keys of the entries holding that prefix (insertion ordered)
        self._index: dict[int, dict[int, None]] = {}
        self._next_key = 0
        self.nbytes = 0
        self.hit_tokens = 0  # counters for logs and benchmarks
        self.miss_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _longest(self, tokens: np.ndarray, hashes: list[int]) -> tuple[int | None, int]:
        """The entry sharing the longest prefix with ``tokens``, and that prefix's length."""
        key = None
        for h in hashes:
            holders = self._index.get(h)
            if not holders:
                break
            key = next(reversed(holders))
        if key is None:
            return None, 0
        stored = self._entries[key].tokens
        n = min(len(stored), len(tokens))
        diff = np.flatnonzero(stored[:n] != tokens[:n])
        return key, int(diff[0]) if diff.size else n

    def lookup(self, ids: Sequence[int], count: bool = True) -> tuple[int, LayerKV | None]:
        """The longest stored prefix of ``ids``: (its length, its KV) or (0, None).

        The KV returned are views that stay valid after the entry is evicted. ``count=False``
        leaves the hit/miss counters alone (for a caller that counts what it uses, ``tally``).
        """
        tokens = np.asarray(ids, dtype=np.int64)
        key, common = self._longest(tokens, _block_hashes(ids))
        if key is None or common < self.min_tokens:
            if count:
                self.tally(0, len(tokens))
            return 0, None
        self._entries.move_to_end(key)
        if count:
            self.tally(common, len(tokens))
        return common, [(k[:, :common], v[:, :common]) for k, v in self._entries[key].kv]

    def tally(self, hit: int, total: int) -> None:
        """Count a prompt of ``total`` tokens of which ``hit`` came from the store."""
        self.hit_tokens += hit
        self.miss_tokens += total - hit

    def add(self, ids: Sequence[int], kv: LayerKV) -> None:
        """Keep the KV of ``ids`` (tensors the store may own); evict least recently used."""
        if self.budget_bytes <= 0 or len(ids) < self.min_tokens:
            return
        tokens = np.asarray(ids, dtype=np.int64)
        hashes = _block_hashes(ids)
        key, common = self._longest(tokens, hashes)
        if key is not None:
            if common == len(tokens):  # already covered by an equal or longer entry
                self._entries.move_to_end(key)
                return
            if common == len(self._entries[key].tokens):  # the new prompt extends that one
                self._drop(key)
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if nbytes > self.budget_bytes:
            return
        key = self._next_key
        self._next_key += 1
        self._entries[key] = _Entry(tokens, kv, nbytes, hashes)
        for h in hashes:
            self._index.setdefault(h, {})[key] = None
        self.nbytes += nbytes
        while self.nbytes > self.budget_bytes:
            self._drop(next(iter(self._entries)))

    def clear(self) -> None:
        """Forget everything (frees the memory, e.g. after running out of it)."""
        self._entries.clear()
        self._index.clear()
        self.nbytes = 0

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self.nbytes -= entry.nbytes
        for h in entry.hashes:
            holders = self._index.get(h)
            if holders is not None:
                holders.pop(key, None)
                if not holders:
                    del self._index[h]
