"""When the moderator speaks: the moderator policies, stated once.

The discussion state machine asks these functions when to give the moderator a turn, and the
plan's estimate asks ``planned_calls`` how many calls a discussion makes, so the two cannot
disagree.

- ``discussion.turns`` counts participant comments; moderator comments come on top, except
  with ``as_participant``, where the moderator is one of the speakers chosen by the turn-taking
  policy and its comments count as turns.
- ``every_k``: the moderator speaks after every k-th participant comment; ``after_each``: after
  each; ``on_demand``: after each, the moderator is asked and may answer ``NO INTERVENTION``
  (recorded as a ``no_intervention`` event, never as a comment).
- The discussion ends with the last participant turn: the moderator never speaks after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from synth_disco.recipe.schema import DiscussionConfig, ModeratorConfig


def takes_turns(moderator: ModeratorConfig | None) -> bool:
    """Whether the moderator is one of the speakers the turn-taking policy picks from."""
    return moderator is not None and moderator.policy == "as_participant"


def may_decline(moderator: ModeratorConfig | None) -> bool:
    """Whether the moderator is asked, and may answer that no intervention is needed."""
    return moderator is not None and moderator.policy == "on_demand"


def speaks_after(cfg: DiscussionConfig, user_turns: int) -> bool:
    """Whether the moderator speaks (or, ``on_demand``, is asked) once ``user_turns``
    participant comments have been written."""
    mod = cfg.moderator
    if mod is None or takes_turns(mod) or user_turns >= cfg.turns:
        return False
    if mod.policy == "every_k":
        return user_turns % mod.k == 0
    return True  # after_each, on_demand


@dataclass(frozen=True)
class PlannedCalls:
    """The engine calls one discussion makes when no reply has to be retried."""

    turns: int  # participant turns (a moderator taking part as a participant included)
    moderator: int  # moderator calls on top of them (for on_demand: each time it is asked)


def planned_calls(cfg: DiscussionConfig) -> PlannedCalls:
    """The calls a discussion with ``cfg`` makes, by the rules the discussion runs by."""
    moderator = sum(speaks_after(cfg, t) for t in range(1, cfg.turns + 1))
    return PlannedCalls(turns=cfg.turns, moderator=moderator)
