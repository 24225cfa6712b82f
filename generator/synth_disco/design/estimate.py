"""How much work a plan takes: LLM calls and generated tokens, as upper bounds.

The discussion counts come from the discussion code itself (``discussion.moderation``
decides when the moderator speaks, and says how often that is), so the estimate cannot drift
from what a build does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from synth_disco.discussion.moderation import planned_calls
from synth_disco.discussion.structures import agent_count, has_combiner
from synth_disco.discussion.structures import planned_calls as structure_calls
from synth_disco.recipe.schema import Recipe


@dataclass(frozen=True)
class Work:
    """The work of one discussion of a cell: exact when no reply is retried, else a bound."""

    turns: int  # participant turns (a structure: agent responses, all cycles)
    moderator_calls: int  # on top of the turns (an on_demand moderator: each time it is asked)
    annotation_calls: int  # upper bound (moderator comments an on_demand moderator may skip)
    calls_with_retries: int  # upper bound if every call were retried as often as allowed
    generated_tokens: int  # upper bound


def discussion_work(recipe: Recipe, seeds_per_post: int, pool_size: Callable[[str], int]) -> Work:
    """The work of one discussion run with ``recipe`` (a cell's). ``seeds_per_post``: the most
    comments a post starts with; ``pool_size(pool)``: the size of a persona pool."""
    d = recipe.discussion
    mod_comments = None  # moderator calls that become comments (all of them in a forum)
    if d.structure == "forum":
        calls = planned_calls(d)
        turns, n_mod = calls.turns, calls.moderator
    else:
        # A structure: every agent once per cycle; a combiner's final response, and the call
        # that writes its `auto` instructions (not a comment).
        turns, n_mod = structure_calls(d, agent_count(d))
        mod_comments = 1 if has_combiner(d) else 0
    main = recipe.model_for(d.model)
    m = d.moderator
    mod_model = recipe.model_for(m.model or d.model) if m is not None else main
    n_ann = ann_tokens = 0
    a = recipe.annotation
    if a is not None:
        moderator_comments = n_mod if mod_comments is None else mod_comments
        comments = turns + (moderator_comments if a.include_moderator else 0)
        comments += seeds_per_post if a.include_seed else 0
        per = a.annotators.per_comment
        if per == "all":
            per = pool_size(a.annotators.pool)
        n_ann = comments * per * len(a.dimensions)
        if a.method == "generate":
            ann_tokens = n_ann * recipe.model_for(a.model or d.model).max_new_tokens
    retries = 1 + d.max_empty_retries
    ann_retries = 1 + (a.max_retries if a is not None and a.method == "generate" else 0)
    return Work(
        turns=turns,
        moderator_calls=n_mod,
        annotation_calls=n_ann,
        calls_with_retries=(turns + n_mod) * retries + n_ann * ann_retries,
        generated_tokens=turns * main.max_new_tokens
        + n_mod * mod_model.max_new_tokens
        + ann_tokens,
    )


@dataclass(frozen=True)
class PlanSummary:
    """The design at a glance, with upper bounds on the work it takes."""

    factors: dict[str, list[str]]
    n_cells: int
    n_full_factorial: int
    replicates: int
    n_discussions: int
    participants: tuple[int, int]  # min, max per discussion
    turns: int  # generated discussion turns, all discussions
    discussion_calls: int
    moderator_calls: int  # an on_demand moderator: each time it is asked
    annotation_calls: int  # upper bound
    calls_with_retries: int  # upper bound if every call were retried as often as allowed
    generated_tokens: int  # upper bound
    n_shards: int
    shard_size: int
    fingerprint: str

    @property
    def llm_calls(self) -> int:
        return self.discussion_calls + self.moderator_calls + self.annotation_calls

    def lines(self) -> list[str]:
        """The summary as ``synth-disco plan`` prints it."""
        lo, hi = self.participants
        factor_lines = [f"  {f}: {', '.join(levels)}" for f, levels in self.factors.items()]
        cells = f"{self.n_cells:,}"
        if self.n_cells != self.n_full_factorial:
            cells += f" (random subset of {self.n_full_factorial:,})"
        return [
            "factors:" + ("" if factor_lines else " none"),
            *factor_lines,
            f"cells:                 {cells}",
            f"replicates:            {self.replicates:,}",
            f"discussions:           {self.n_discussions:,}",
            f"participants each:     {lo}" + (f"-{hi}" if hi != lo else ""),
            f"turns (total):         {self.turns:,}",
            f"LLM calls (at most):   {self.llm_calls:,} ({self.discussion_calls:,} turns, "
            f"{self.moderator_calls:,} moderator, {self.annotation_calls:,} annotation; "
            f"{self.calls_with_retries:,} if every retry is used)",
            f"generated tokens (at most): {self.generated_tokens:,}",
            f"shards:                {self.n_shards:,} ({self.shard_size} discussions each)",
            f"fingerprint:           {self.fingerprint[:12]}",
        ]
