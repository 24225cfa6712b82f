"""Prompt forward passes: prefix-cached prefill, and the logits of prompts' last tokens.

Prompt prefixes already seen are taken from a prefix store of KV states
(:mod:`~synth_disco.engines.hf.prefix_cache`), so a turn's prompt only runs its new tokens;
fresh prompts run right-padded without an attention mask (causal SDPA kernels, about 2x faster
than a masked left-padded prefill of long prompts). The states are then gathered into the
left-padded layout ``generate`` expects.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from synth_disco.engines.common import is_oom, short
from synth_disco.engines.hf.cache_room import stacked_with_room
from synth_disco.engines.hf.load import LoadedModel, device_memory
from synth_disco.engines.hf.prefix_cache import LayerKV, PrefixStore

# A stored prefix found for a prompt: its length and its KV states (0, None: nothing found).
Hit = tuple[int, LayerKV | None]

log = logging.getLogger(__name__)

# An automatic prefix store starts with room for 64 prompts of 1,024 tokens and grows to hold
# every prompt of a call, up to an eighth of the device's memory (at least 512 MiB): a real
# model's prompts are large (SmolLM2-135M in float32: 46 KB per token, 17 MB per forum prompt),
# and a store that cannot hold one per discussion in flight reuses nothing.
AUTO_FLOOR_TOKENS = 64 * 1024
AUTO_CAP_SHARE = 1 / 8
AUTO_CAP_MIN_BYTES = 512 * 2**20


def row_kv(cache: Any, row: int, start: int, stop: int) -> LayerKV:
    """Copies of one row's key/value states in slots ``[start, stop)``, every layer (for the
    prefix store, which must not hold views into a batch's cache)."""
    return [
        (layer.keys[row, :, start:stop].clone(), layer.values[row, :, start:stop].clone())
        for layer in cache.layers
    ]


class Prefiller:
    """Runs prompts through the model, reusing stored prefixes; owns the prefix store.

    ``prefix_cache_mb`` bounds the memory (on the model's device) that keeps prompt KV states
    for reuse by later prompts sharing their prefix; 0 turns prefix reuse off. None starts it
    at 64 prompts of 1,024 tokens and grows it to hold every prompt of a call
    (:meth:`expect`: what the next turn of every discussion in flight needs to find its
    previous prompt), up to an eighth of the device's memory (at least 512 MiB): a few MiB for
    the tiny model instead of a fixed budget that would dominate a small model's memory.
    """

    def __init__(self, lm: LoadedModel, prefix_cache_mb: float | None):
        self.lm = lm
        # None: sized to the work (see ``expect``), from a floor up to ``auto_cap``.
        self.auto = prefix_cache_mb is None
        self.auto_cap = max(AUTO_CAP_MIN_BYTES, int(device_memory(lm.device) * AUTO_CAP_SHARE))
        if self.auto:
            budget = min(self.auto_cap, AUTO_FLOOR_TOKENS * lm.kv_bytes_per_token)
        else:
            budget = int(prefix_cache_mb * 2**20)
        self.store = PrefixStore(budget) if budget > 0 else None
        # Right-padded prefill (see prefill); switched off for good if the model rejects it.
        # A model that asks for its own cache type (static, hybrid...) cannot take ours.
        self.fast = not lm.own_cache

    def stats(self) -> dict[str, int]:
        """Prompt tokens served from the prefix store vs computed, and its size."""
        p = self.store
        if p is None:
            return {"hit_tokens": 0, "miss_tokens": 0, "entries": 0, "bytes": 0}
        return {
            "hit_tokens": p.hit_tokens,
            "miss_tokens": p.miss_tokens,
            "entries": len(p),
            "bytes": p.nbytes,
        }

    def expect(self, seqs: list[list[int]], keep: Sequence[bool] | None = None) -> list[Hit]:
        """Get ready for the prompts of one ``generate`` call: make room for them, and find
        each one's stored prefix now, before the call's own batches start adding theirs.

        A call hands over every pending turn at once (one per discussion, or every agent of
        every structure in flight), and the next call's prompts extend these: the store must
        hold all of them, or least-recently-used eviction throws away exactly the prefixes
        the next call needs. An automatic budget grows to fit, up to ``auto_cap``; a
        configured ``prefix_cache_mb`` is kept as it is. ``keep``: per prompt, whether it
        will be stored (``ChatRequest.keep_prefix``); those that will not be stored need no
        room.

        The prefixes are looked up here, for the whole call, because the call's first batches
        add their prompts to the store and so evict older entries: the very ones its last
        batches were going to reuse (a fifth of the prefixes of a 1,280-prompt call was lost
        that way). The hits returned hold their states even if the entries are evicted; pass
        each to :meth:`prefill` with its prompt (``pinned``)."""
        store = self.store
        if store is None or not self.fast:
            return [(0, None)] * len(seqs)
        if self.auto:
            kept = seqs if keep is None else [s for s, k in zip(seqs, keep, strict=True) if k]
            need = sum(len(s) for s in kept) * self.lm.kv_bytes_per_token
            store.budget_bytes = min(self.auto_cap, max(store.budget_bytes, need))
        return [store.lookup(s[:-1], count=False) if len(s) > 1 else (0, None) for s in seqs]

    def forget(self) -> None:
        """Empty the prefix store (frees its memory, e.g. after running out of it)."""
        if self.store is not None:
            self.store.clear()

    def prefill(
        self,
        seqs: list[list[int]],
        width: int,
        keep: bool | Sequence[bool] = True,
        pinned: list[Hit] | None = None,
        room: int = 0,
    ) -> DynamicCache | None:
        """KV cache of every prompt but its last token, laid out as left padding would.

        Two savings over letting ``generate`` prefill a left-padded batch:

        * Prefixes already in the prefix store are not recomputed: only each row's new tokens
          run through the model, on top of the stored states.
        * Without stored prefixes the prompts run right-padded with no attention mask. Causal
          attention never lets a real token see the padding after it, and without a mask SDPA
          uses its causal kernels (about 2x faster than a masked prefill of long prompts).

        The resulting states are then gathered into the left-padded layout ``generate``
        expects (real entries flush right); ``generate`` masks the padding and runs the last
        prompt token itself. Only for models with a plain full-attention cache; otherwise (or
        for a batch with neither padding nor a store) None, and ``generate`` prefills as usual.
        On a CPU the rows run in groups (:meth:`_groups`) to bound peak memory.
        ``keep=False`` leaves these prompts out of the prefix store (or one bool per prompt:
        those that are False). ``pinned``: each prompt's prefix as :meth:`expect` found it;
        one that found none is looked up again (an earlier batch of the same call may have
        stored it since). ``room``: slots to leave after each row for the tokens ``generate``
        will add (decoding then writes in place, :mod:`~synth_disco.engines.hf.cache_room`).
        """
        need = [len(s) - 1 for s in seqs]
        store = self.store
        if not self.fast or min(need) < 1:
            return None
        if store is None and min(need) == max(need):
            return None
        hits: list[Hit] = [(0, None)] * len(seqs)
        if store is not None:
            if pinned is None:
                hits = [store.lookup(s[:-1], count=False) for s in seqs]
            else:  # a prompt found nothing before the call: an earlier batch may have added it
                hits = [
                    p if p[0] else store.lookup(s[:-1], count=False)
                    for s, p in zip(seqs, pinned, strict=True)
                ]
            for (c, _), n in zip(hits, need, strict=True):
                store.tally(c, n)
        try:
            cache = self._groups(seqs, need, hits, width - 1, room)
        except Exception as exc:
            if is_oom(exc):
                raise
            self.fast = False
            if store is not None:
                store.clear()
            log.info("own prefill unavailable for this model (%s)", short(exc))
            return None
        if store is not None:
            keeps = [keep] * len(seqs) if isinstance(keep, bool) else keep
            for row, (s, n, k) in enumerate(zip(seqs, need, keeps, strict=True)):
                if k:
                    store.add(s[:-1], row_kv(cache, row, width - 1 - n, width - 1))
        return cache

    def _groups(
        self,
        seqs: list[list[int]],
        need: list[int],
        hits: list[Hit],
        width: int,
        room: int,
    ) -> DynamicCache:
        """:meth:`_rows` on groups of rows small enough for ``prefill_limits``: the tokens of
        one forward pass (activations take a few KiB per token) and the attention mask of a
        masked prefill (rows x new tokens x all tokens, which SDPA expands to float32). The
        groups' caches are then copied into one, with ``room`` free slots after each row.
        Bounding these is what keeps the peak memory of a batched turn on a CPU near that of
        one request."""
        groups: list[list[int]] = [[]]
        limits = self.lm.prefill_limits
        for row in range(len(seqs)):
            group = groups[-1] + [row]
            if limits is not None and len(group) > 1:
                c = max(hits[r][0] for r in group)
                u = max(need[r] - hits[r][0] for r in group)
                mask_bytes = len(group) * u * (c + u) * 4 if c else 0
                if len(group) * u > limits[0] or mask_bytes > limits[1]:
                    groups.append([row])
                    continue
            groups[-1] = group
        if len(groups) == 1 and not room:
            return self._rows(seqs, need, hits, width)
        parts = [
            self._rows([seqs[r] for r in g], [need[r] for r in g], [hits[r] for r in g], width)
            for g in groups
        ]
        return stacked_with_room(parts, room)

    def _rows(
        self,
        seqs: list[list[int]],
        need: list[int],
        hits: list[Hit],
        width: int,
    ) -> DynamicCache:
        """Compute the uncached part of each row and assemble the left-padded cache."""
        lm = self.lm
        dev = lm.device
        cached = [c for c, _ in hits]
        fresh = [n - c for n, c in zip(need, cached, strict=True)]
        c_max, u_max = max(cached), max(fresh)
        prefix: list[tuple[torch.Tensor, torch.Tensor]] = []
        if c_max:
            layers = next(kv for c, kv in hits if c)
            for layer, (k0, v0) in enumerate(layers):
                keys = k0.new_zeros((len(seqs), k0.shape[0], c_max, k0.shape[2]))
                values = v0.new_zeros((len(seqs), v0.shape[0], c_max, v0.shape[2]))
                for row, (c, kv) in enumerate(hits):
                    if c:
                        keys[row, :, :c] = kv[layer][0]
                        values[row, :, :c] = kv[layer][1]
                prefix.append((keys, values))
        cache = DynamicCache()
        for layer, (keys, values) in enumerate(prefix):
            cache.update(keys, values, layer)
        if u_max:
            rows = np.full((len(seqs), u_max), lm.pad_id, dtype=np.int64)
            for row, (s, c, n) in enumerate(zip(seqs, cached, need, strict=True)):
                rows[row, : n - c] = s[c:n]
            ids = torch.from_numpy(rows)
            kwargs: dict[str, Any] = {}
            if c_max:
                # Stored prefixes end at different lengths: mask the gap after each, and
                # number the new tokens from where the row's prefix ends.
                mask = torch.zeros((len(seqs), c_max + u_max), dtype=torch.long)
                for row, (c, u) in enumerate(zip(cached, fresh, strict=True)):
                    mask[row, :c] = 1
                    mask[row, c_max : c_max + u] = 1
                positions = torch.tensor(cached)[:, None] + torch.arange(u_max)[None, :]
                # Padding slots past a row's end must still be valid positions for the model.
                positions = positions.clamp_max(lm.max_context - 1)
                kwargs = {
                    "cache": cache,
                    "attention_mask": mask.to(dev),
                    "position_ids": positions.to(dev),
                }
            out = lm.model(input_ids=ids.to(dev), use_cache=True, **kwargs, **lm.keep_one)
            cache = out.cache
        if type(cache) is not DynamicCache or any(
            type(layer) is not DynamicLayer for layer in cache.layers
        ):
            raise TypeError(f"{type(cache).__name__} is not a plain full-attention cache")
        # Target slot j of row r holds token k = j - (width - need[r]): a stored token when
        # k < cached[r], else new token k - cached[r], found after the c_max stored slots.
        slot = torch.arange(width, device=dev)[None, :]
        k = slot - (width - torch.tensor(need, device=dev))[:, None]
        c = torch.tensor(cached, device=dev)[:, None]
        source = torch.where(k < c, k, c_max + k - c).clamp_min(0)
        for layer in cache.layers:
            # ``width`` may exceed this cache's length (a group of shorter rows): gather
            # accepts a longer index along its dimension; slots before a row's start are
            # padding, masked later, and read slot 0.
            rows, heads, _, dim = layer.keys.shape
            index = source[:, None, :, None].expand(rows, heads, width, dim)
            layer.keys = layer.keys.gather(2, index)
            layer.values = layer.values.gather(
                2, source[:, None, :, None].expand(rows, heads, width, layer.values.shape[-1])
            )
        return cache

    def forward_tail(self, seqs: list[list[int]], keep: int) -> torch.Tensor:
        """Float32 logits of the last ``keep`` positions of left-padded ``seqs`` (one plain
        forward pass, no cache)."""
        lm = self.lm
        ids, mask = lm.left_pad(seqs)
        # Positions count real tokens only, so padding never shifts a row's positions.
        positions = (mask.cumsum(dim=-1) - 1).clamp_min(0)
        kwargs: dict[str, Any] = {"logits_to_keep": keep} if lm.keeps_logits else {}
        with torch.inference_mode():
            out = lm.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=False,
                **kwargs,
            )
        return out.logits[:, -keep:, :].float()

    def last_logits(self, seqs: list[list[int]], keep: bool = True) -> torch.Tensor:
        """Float32 logits of the last token of each of ``seqs`` (rows in order).

        All but the last token of each prompt go through :meth:`prefill` (prefix store,
        right-padded causal prefill), so prompts that repeat stored prefixes only run their new
        tokens; then one step runs every row's last token. ``keep=False`` leaves the prompts
        out of the store (prompts no later prompt is expected to repeat). Falls back to a
        plain left-padded forward pass where the own prefill is unavailable.
        """
        lm = self.lm
        width = max(len(s) for s in seqs)
        with torch.inference_mode():
            cache = self.prefill(seqs, width, keep) if min(len(s) for s in seqs) > 1 else None
            if cache is None:
                return self.forward_tail(seqs, 1)[:, -1, :]
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for row, seq in enumerate(seqs):
                mask[row, width - len(seq) :] = 1
            last = torch.tensor([[s[-1]] for s in seqs], dtype=torch.long)
            positions = torch.tensor([[len(s) - 1] for s in seqs], dtype=torch.long)
            out = lm.model(
                input_ids=last.to(lm.device),
                attention_mask=mask.to(lm.device),
                position_ids=positions.to(lm.device),
                cache=cache,
                use_cache=True,
                **lm.keep_one,
            )
        return out.logits[:, -1, :].float()
