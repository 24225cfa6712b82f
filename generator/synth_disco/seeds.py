"""Seeds derived from names, never from a global RNG.

Every random choice in synth-disco is keyed by what it is for (the recipe seed, a discussion
id, a turn index, an attempt number), so the same choice comes out the same on any machine, in
any batch, and after a crash and resume.
"""

from __future__ import annotations

import hashlib
import random


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' text (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def rng(*parts: object) -> random.Random:
    """A private ``random.Random`` for one purpose."""
    return random.Random(derive_seed(*parts))
