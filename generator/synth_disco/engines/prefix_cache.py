"""Reuse of prompt key/value states across ``generate`` calls (automatic prefix caching).

Discussion prompts grow turn by turn and each one repeats most of an earlier prompt (system
text, thread, transcript so far). On a small model the prefill of those long prompts is most of
the cost of a batched turn, and it is the same work whether requests are batched or not. The
store keeps the KV states of recent prompts under a byte budget; a new prompt reuses the longest
stored prefix it shares and only its new tokens are run through the model.

Entries are per prompt (not per request id), so nothing about discussions is assumed; lookups
compare token ids, so a reused state is always the state of exactly those tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# One (keys, values) pair per layer, each shaped (kv_heads, tokens, head_dim).
LayerKV = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _Entry:
    tokens: np.ndarray
    kv: LayerKV
    nbytes: int


class PrefixStore:
    """LRU store of prompt KV states, bounded by ``budget_bytes``.

    ``min_tokens`` is the shortest shared prefix worth reusing (shorter ones cost more to
    assemble than they save).
    """

    def __init__(self, budget_bytes: int, min_tokens: int = 32) -> None:
        self.budget_bytes = budget_bytes
        self.min_tokens = min_tokens
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next_key = 0
        self.nbytes = 0
        self.hit_tokens = 0  # counters for logs and benchmarks
        self.miss_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: Sequence[int]) -> tuple[int, LayerKV | None]:
        """The longest stored prefix of ``ids``: (its length, its KV) or (0, None)."""
        query = np.asarray(ids, dtype=np.int64)
        best_key, best_len = None, 0
        for key, entry in self._entries.items():
            n = min(len(entry.tokens), len(query))
            if n <= best_len or entry.tokens[0] != query[0]:
                continue
            diff = np.flatnonzero(entry.tokens[:n] != query[:n])
            common = int(diff[0]) if diff.size else n
            if common > best_len:
                best_key, best_len = key, common
        if best_key is None or best_len < self.min_tokens:
            self.miss_tokens += len(query)
            return 0, None
        self._entries.move_to_end(best_key)
        self.hit_tokens += best_len
        self.miss_tokens += len(query) - best_len
        kv = self._entries[best_key].kv
        return best_len, [(k[:, :best_len], v[:, :best_len]) for k, v in kv]

    def add(self, ids: Sequence[int], kv: LayerKV) -> None:
        """Keep the KV of ``ids`` (tensors the store may own); evict least recently used."""
        if self.budget_bytes <= 0 or len(ids) < self.min_tokens:
            return
        tokens = np.asarray(ids, dtype=np.int64)
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if nbytes > self.budget_bytes:
            return
        for key, entry in list(self._entries.items()):
            n = min(len(entry.tokens), len(tokens))
            if np.array_equal(entry.tokens[:n], tokens[:n]):
                if len(entry.tokens) >= len(tokens):
                    self._entries.move_to_end(key)  # already covered by a longer entry
                    return
                self._drop(key)  # the new prompt extends this one
        self._entries[self._next_key] = _Entry(tokens, kv, nbytes)
        self._next_key += 1
        self.nbytes += nbytes
        while self.nbytes > self.budget_bytes:
            self._drop(next(iter(self._entries)))

    def clear(self) -> None:
        """Forget everything (frees the memory, e.g. after running out of it)."""
        self._entries.clear()
        self.nbytes = 0

    def _drop(self, key: int) -> None:
        self.nbytes -= self._entries.pop(key).nbytes
