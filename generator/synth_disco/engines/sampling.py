"""Decoding settings: a model config's :class:`SamplingParams`, and the check every engine makes.

Decoding settings travel with each request, never with the engine: the same loaded weights
serve model configs that differ only in how they decode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from synth_disco.engines.base import SamplingParams

# A model config's decoding settings: every engine reads them (they travel with each request).
DECODING_FIELDS = frozenset(f.name for f in fields(SamplingParams))


def sampling_params_from(config: Mapping[str, Any] | object) -> SamplingParams:
    """The decoding settings of a model config, given as a mapping or as an object with
    attributes; unset (missing or None) settings keep the :class:`SamplingParams` defaults."""
    defaults = SamplingParams()

    def pick(name: str) -> Any:
        if isinstance(config, Mapping):
            value = config.get(name)
        else:
            value = getattr(config, name, None)
        return getattr(defaults, name) if value is None else value

    return SamplingParams(
        max_new_tokens=int(pick("max_new_tokens")),
        temperature=float(pick("temperature")),
        top_p=float(pick("top_p")),
        top_k=int(pick("top_k")),
        repetition_penalty=float(pick("repetition_penalty")),
        stop=tuple(pick("stop")),
    )


def check_params(p: SamplingParams) -> str | None:
    """Why ``p`` cannot be decoded with, or None when it can (the request then fails alone)."""
    if p.max_new_tokens < 1:
        return f"max_new_tokens must be >= 1, got {p.max_new_tokens}"
    if p.temperature < 0:
        return f"temperature must be >= 0, got {p.temperature}"
    if not 0 < p.top_p <= 1:
        return f"top_p must be in (0, 1], got {p.top_p}"
    if p.top_k < 0:
        return f"top_k must be >= 0, got {p.top_k}"
    if p.repetition_penalty <= 0:
        return f"repetition_penalty must be > 0, got {p.repetition_penalty}"
    return None
