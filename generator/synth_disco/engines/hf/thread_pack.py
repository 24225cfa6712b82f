"""Pack a conversation and the questions asked about its prefixes into two forward passes.

A thread of ``n`` segments annotated comment by comment asks one question after each prefix.
Scored one prompt at a time, segment ``j`` is recomputed by every later question. Packed, each
token runs once:

1. the trunk (template head and segments) runs as an ordinary causal sequence, unmasked
   (rows are right-padded: causal attention never lets a real token see the padding after
   it), and its key/value states are kept, each row's from slot 0;
2. every question is a branch on top of those states: it sees the trunk up to the end of its
   prefix and its own earlier tokens, and no other token sees it. An explicit attention mask
   and position ids make each branch compute exactly what it would as the tail of its own
   prompt (tree attention, as in speculative decoding).

Layout of the second pass (``width`` slots per row): every question's tokens but its last,
padding, then the questions' last tokens in the final ``keep`` slots, so a model's
``logits_to_keep=keep`` returns the logits of every question and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PackedThread:
    """One conversation's token pieces: ``trunk`` is head + segments, ``ends[j]`` the trunk
    length up to and including segment ``j``; question ``q`` reads ``trunk[:ends[after[q]]]``
    followed by ``questions[q]`` (at least one token)."""

    trunk: list[int]
    ends: list[int]
    questions: list[list[int]]
    after: list[int]

    def view_length(self, q: int) -> int:
        return self.ends[self.after[q]] + len(self.questions[q])

    def view(self, q: int) -> list[int]:
        """The token sequence question ``q`` is scored on (for checks and fallbacks)."""
        return self.trunk[: self.ends[self.after[q]]] + self.questions[q]

    @property
    def branch_length(self) -> int:
        """Slots of this thread's questions in the second pass."""
        return sum(len(q) for q in self.questions)

    @property
    def cost(self) -> int:
        """Tokens both passes run for this thread."""
        return len(self.trunk) + self.branch_length


@dataclass(frozen=True)
class Packed:
    """The tensors of both passes for a batch of threads (see the module doc)."""

    ids: torch.Tensor  # (rows, width): question tokens
    positions: torch.Tensor  # (rows, width)
    mask: torch.Tensor  # (rows, 1, width, trunk width + width), additive
    keep: int  # the last ``keep`` slots hold each question's last token, in order


def pack(threads: list[PackedThread], pad_id: int, dtype: torch.dtype) -> Packed:
    """The second pass's inputs for ``threads``, whose trunks fill a first-pass cache from
    slot 0, right-padded. Padding slots see only themselves (a row with nothing visible
    would make softmax produce NaN); their outputs are never read."""
    keep = max(len(t.questions) for t in threads)
    trunk_width = max(len(t.trunk) for t in threads)
    width = max(t.branch_length - len(t.questions) for t in threads) + keep
    rows = len(threads)
    # Built in numpy (many small index operations), converted once.
    ids = np.full((rows, width), pad_id, dtype=np.int64)
    positions = np.zeros((rows, width), dtype=np.int64)
    # Per slot: how much of the trunk it sees, and the question it belongs to.
    see_to = np.zeros((rows, width), dtype=np.int64)
    group = np.full((rows, width), -1, dtype=np.int64)
    order = np.zeros((rows, width), dtype=np.int64)  # token index within its question
    for r, t in enumerate(threads):
        body = 0
        for q, tokens in enumerate(t.questions):
            end, k = t.ends[t.after[q]], len(tokens)
            slots = np.append(np.arange(body, body + k - 1), width - keep + q)
            ids[r, slots] = tokens
            positions[r, slots] = np.arange(end, end + k)
            see_to[r, slots] = end
            group[r, slots] = q
            order[r, slots] = np.arange(k)
            body += k - 1
    col = np.arange(trunk_width)
    sees_trunk = col < see_to[:, :, None]
    # A question token sees its question's tokens up to itself; a padding slot only itself.
    same = (group[:, :, None] == group[:, None, :]) & (group[:, :, None] >= 0)
    sees_branch = same & (order[:, None, :] <= order[:, :, None])
    sees_branch |= np.eye(width, dtype=bool)[None]
    allowed = torch.from_numpy(np.concatenate([sees_trunk, sees_branch], axis=2))
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return Packed(
        torch.from_numpy(ids),
        torch.from_numpy(positions),
        mask[:, None],
        keep,
    )
