"""Per-request seeded sampling inside a batched greedy ``generate``.

:class:`SeededSampler` is a logits processor. Per row it applies temperature, top-k and top-p,
then adds Gumbel noise from a counter-based hash of (request seed, decoding step, token id); the
argmax of the result is an exact sample from the filtered softmax. The noise of a row depends on
nothing but that row's seed and step, so a request samples the same text whatever batch it is
in, and no generator state has to be carried between steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

_MASK32 = 0xFFFFFFFF


# A 32-bit integer hash evaluated with int64 torch ops (or Python ints): exact, identical on
# every device in its integer part, and free of generator state.


def _mul32(x: Any, c: int) -> Any:
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32`` without overflowing int64."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: Any) -> Any:
    """A well-mixing bijection on 32-bit values (Wellons' "lowbias32")."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32  # constant < 2**31: the product fits in int64
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def seed_key(seed: int) -> int:
    """Fold an arbitrary Python int seed into a 32-bit hash key."""
    s = seed & 0xFFFFFFFFFFFFFFFF
    return _mix32((s & _MASK32) ^ _mix32(((s >> 32) ^ 0x5BD1E995) & _MASK32))


class SeededSampler(LogitsProcessor):
    """Per-row temperature / top-k / top-p, then Gumbel noise keyed by (seed, step, token).

    Rows with temperature 0 are left untouched (greedy). ``prompt_len`` is the padded prompt
    length of the batch, so ``step`` counts generated tokens and is the same for a request
    whatever batch it is in.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        temperature: Sequence[float],
        top_k: Sequence[int],
        top_p: Sequence[float],
        prompt_len: int,
        vocab_size: int,
        device: torch.device,
    ) -> None:
        self.prompt_len = prompt_len
        self.keys = torch.tensor([seed_key(s) for s in seeds], dtype=torch.int64, device=device)
        temp = torch.tensor(temperature, dtype=torch.float32, device=device)
        self.sampled = temp > 0
        self.all_sampled = bool(self.sampled.all())
        self.inv_temp = torch.where(self.sampled, 1.0 / temp.clamp_min(1e-6), 1.0)[:, None]
        v = vocab_size
        ks = [min(k, v) if k > 0 else v for k in top_k]
        self.uniform_k = ks[0] if len(set(ks)) == 1 and ks[0] < v else None
        self.has_top_k = any(k < v for k in ks)
        self.top_k = torch.tensor(ks, dtype=torch.int64, device=device)[:, None]
        self.has_top_p = any(p < 1.0 for p in top_p)
        # p >= 1 keeps everything; 2.0 stays above any rounding of a cumulative sum.
        ps = [p if p < 1.0 else 2.0 for p in top_p]
        self.top_p = torch.tensor(ps, dtype=torch.float32, device=device)[:, None]
        self.vocab_hash = _mix32(torch.arange(v, dtype=torch.int64, device=device))[None, :]

    def gumbel(self, step: int, width: int) -> torch.Tensor:
        """Standard Gumbel noise of shape (rows, width) for decoding step ``step``."""
        base = _mix32(self.keys ^ _mul32(step + 1, 0x9E3779B9))[:, None]
        h = _mix32(base ^ self.vocab_hash[:, :width])
        # 24 random bits -> uniform in (0, 1), exact in float32.
        u = ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
        return -torch.log(-torch.log(u))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len
        x = scores.float() * self.inv_temp
        if self.has_top_p or (self.has_top_k and self.uniform_k is None):
            x = self._filter_sorted(x)
        elif self.has_top_k:
            kth = torch.topk(x, self.uniform_k, dim=-1).values[:, -1:]
            x = x.masked_fill(x < kth, -math.inf)
        width = x.shape[-1]
        if width > self.vocab_hash.shape[-1]:  # padded logits wider than the tokenizer vocab
            self.vocab_hash = _mix32(torch.arange(width, dtype=torch.int64, device=x.device))[None]
        x = x + self.gumbel(step, width)
        if self.all_sampled:
            return x
        return torch.where(self.sampled[:, None], x, scores.float())

    def _filter_sorted(self, x: torch.Tensor) -> torch.Tensor:
        """Top-k then top-p (nucleus) masking with per-row k and p, via one sort."""
        vals, idx = torch.sort(x, dim=-1, descending=True, stable=True)
        positions = torch.arange(x.shape[-1], device=x.device)[None, :]
        remove = positions >= self.top_k
        if self.has_top_p:
            probs = vals.masked_fill(remove, -math.inf).softmax(dim=-1)
            higher = probs.cumsum(dim=-1) - probs  # mass of strictly better tokens
            remove = remove | (higher >= self.top_p)
        remove = torch.zeros_like(remove).scatter_(1, idx, remove)
        return x.masked_fill(remove, -math.inf)
