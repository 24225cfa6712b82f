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

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int) -> None:
        super().__init__()
        self.device = keys.device
        self.is_initialized = True
        n = keys.shape[-2]
        self._keys = keys.new_empty((*keys.shape[:-2], n + room, keys.shape[-1]))
        self._values = values.new_empty((*values.shape[:-2], n + room, values.shape[-1]))
        self._keys[..., :n, :] = keys
        self._values[..., :n, :] = values
        self.keys = self._keys[..., :n, :]
        self.values = self._values[..., :n, :]

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


def with_room(cache: DynamicCache, room: int) -> DynamicCache:
    """``cache`` (plain full-attention layers) with room for ``room`` more tokens per row."""
    cache.layers = [RoomyLayer(layer.keys, layer.values, room) for layer in cache.layers]
    return cache
