"""Turn-taking policies: who speaks next and which comment they answer.

Each choice uses an RNG keyed by (discussion seed, turn index), so the choice depends only on
the discussion's own history; a discussion rebuilt from its journal continues identically.

- ``round_robin``: participants in their planned order; with ``random_first`` the first speaker
  is drawn uniformly. Each reply answers the previous comment.
- ``random``: uniform over the participants other than the last speaker.
- ``random_weighted``: with probability ``p_respond`` the author of the comment that the last
  comment answered replies back (a two-person exchange); otherwise uniform over the participants
  other than the last speaker. When there is nobody to reply back (the last comment answered the
  OP, a seed author or the speaker themself) the uniform draw is used.
- ``reply_tree``: the new comment picks its parent among all earlier comments: the OP with
  probability ``reply_to_op``, else uniformly one of the other comments; the speaker is uniform
  over participants other than the parent's author. The thread branches like a forum.
"""

from __future__ import annotations

from dataclasses import dataclass

from synth_disco.recipe.schema import TurnTaking
from synth_disco.seeds import rng


@dataclass(frozen=True)
class Node:
    """What a policy needs to know of an earlier comment."""

    comment_id: str
    author: str
    parent_id: str | None


@dataclass(frozen=True)
class Turn:
    speaker: str
    parent_id: str


def next_turn(
    policy: TurnTaking,
    speakers: list[str],
    history: list[Node],
    turn: int,
    seed: int,
) -> Turn:
    """Pick the speaker of ``turn`` (0-based) and the comment they answer.

    ``history`` holds every comment so far in order, the OP first; ``speakers`` are the names
    that may be chosen (participants, plus the moderator when it takes part as a participant).
    """
    r = rng(seed, "turn", turn)
    last = history[-1]
    others = [s for s in speakers if s != last.author] or list(speakers)

    if policy.policy == "round_robin":
        first = rng(seed, "first").randrange(len(speakers)) if policy.random_first else 0
        return Turn(speakers[(first + turn) % len(speakers)], last.comment_id)

    if policy.policy == "random":
        return Turn(r.choice(others), last.comment_id)

    if policy.policy == "random_weighted":
        by_id = {n.comment_id: n for n in history}
        answered = by_id.get(last.parent_id) if last.parent_id else None
        draw = r.random()  # drawn unconditionally so the stream does not depend on the branch
        pick = r.choice(others)
        if (
            answered is not None
            and answered.author in speakers
            and answered.author != last.author
            and draw < policy.p_respond
        ):
            return Turn(answered.author, last.comment_id)
        return Turn(pick, last.comment_id)

    if policy.policy == "reply_tree":
        op = history[0]
        rest = history[1:]
        if not rest or r.random() < policy.reply_to_op:
            parent = op
        else:
            parent = r.choice(rest)
        candidates = [s for s in speakers if s != parent.author] or list(speakers)
        return Turn(r.choice(candidates), parent.comment_id)

    raise ValueError(f"unknown turn-taking policy {policy.policy!r}")
