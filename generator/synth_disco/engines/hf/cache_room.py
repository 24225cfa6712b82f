"""A KV cache with room for the tokens still to be generated, written in place.

transformers' ``DynamicLayer`` grows by ``torch.cat`` at every decoding step, which copies the
whole cache of the batch each time: for a batch of long prompts that copy costs more than the
step's attention (a tenth of a batched structure run on the tiny model). The prefill knows how
long the batch's prompts are and ``generate`` how many tokens it may add, so the states can
live in one buffer sized for both; each step then writes its new slot and the layer's
``keys``/``values`` become longer views of that buffer. ``StaticCache`` preallocates too, but
attends over its whole length at every step and wants its own prefill.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class RoomyLayer(DynamicLayer):
    """A ``DynamicLayer`` whose states are views of a buffer with room for more tokens;
    once the room is used up (or the batch changes shape) it grows by concatenation again."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, n: int) -> None:
        """``keys``/``values``: the buffers, whose first ``n`` slots (dimension -2) hold
        states."""
        super().__init__()
        self.device = keys.device
        self.is_initialized = True
        self._keys, self._values = keys, values
        self.keys = keys[..., :n, :]
        self.values = values[..., :n, :]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, add = self.keys.shape[-2], key_states.shape[-2]
        fits = n + add <= self._keys.shape[-2] and key_states.shape[:-2] == self._keys.shape[:-2]
        if not fits or self.keys.data_ptr() != self._keys.data_ptr():
            return super().update(key_states, value_states, *args, **kwargs)
        self._keys[..., n : n + add, :] = key_states
        self._values[..., n : n + add, :] = value_states
        self.keys = self._keys[..., : n + add, :]
        self.values = self._values[..., : n + add, :]
        return self.keys, self.values


def stacked_with_room(parts: list[DynamicCache], room: int) -> DynamicCache:
    """The caches ``parts`` (consecutive rows of one batch, all as long) as one cache with room
    for ``room`` more tokens per row: each state is copied once, straight into its place."""
    first = parts[0].layers
    rows = sum(p.layers[0].keys.shape[0] for p in parts)
    n = first[0].keys.shape[-2]
    cache = DynamicCache()
    layers = []
    for i, layer in enumerate(first):
        k, v = layer.keys, layer.values
        keys = k.new_empty((rows, *k.shape[1:-2], n + room, k.shape[-1]))
        values = v.new_empty((rows, *v.shape[1:-2], n + room, v.shape[-1]))
        start = 0
        for part in parts:
            src = part.layers[i]
            stop = start + src.keys.shape[0]
            keys[start:stop, ..., :n, :] = src.keys
            values[start:stop, ..., :n, :] = src.values
            start = stop
        layers.append(RoomyLayer(keys, values, n))
    cache.layers = layers
    return cache


def with_room(cache: DynamicCache, room: int) -> DynamicCache:
    """``cache`` (plain full-attention layers) with room for ``room`` more tokens per row."""
    return stacked_with_room([cache], room)
