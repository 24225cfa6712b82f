"""Factors -> cells: which combinations of factor levels a design runs, and each one's recipe.

A cell is a dict ``{factor: level}``; its recipe is the base recipe with the patches of its
levels applied. Both the checker (every cell must validate) and the design (which turns cells
into discussions) use what is here, so they agree on which cells exist.
"""

from __future__ import annotations

import math
import random
from typing import Any

from synth_disco.recipe.overrides import apply_patches
from synth_disco.recipe.schema import DesignConfig, DiscussionConfig, Recipe
from synth_disco.seeds import derive_seed


def factor_levels(recipe: Recipe) -> dict[str, list[str]]:
    """Factor -> its level names, in recipe order."""
    return {f: list(levels) for f, levels in recipe.factors.items()}


def n_full_factorial(factors: dict[str, list[str]]) -> int:
    """How many cells every combination of levels makes (1 without factors)."""
    return math.prod(len(levels) for levels in factors.values()) if factors else 1


def select_cells(
    factors: dict[str, list[str]], design: DesignConfig, seed: int
) -> list[dict[str, str]]:
    """The cells to run, in factorial order (last factor varies fastest).

    ``full``: every combination. ``random``: a seeded subset of ``design.cells`` of them,
    drawn without enumerating the full product (so very large factorials are fine).
    """
    names = list(factors)
    sizes = [len(factors[f]) for f in names]
    total = n_full_factorial(factors)
    if design.mode == "random" and design.cells is not None and design.cells < total:
        rng = random.Random(derive_seed(seed, "design"))
        picked = sorted(rng.sample(range(total), design.cells))
    else:
        picked = range(total)
    out = []
    for flat in picked:
        levels: dict[str, str] = {}
        rest = flat
        for name, size in zip(reversed(names), reversed(sizes), strict=True):
            rest, i = divmod(rest, size)
            levels[name] = factors[name][i]
        out.append({name: levels[name] for name in names})
    return out


def cell_patches(recipe: Recipe, levels: dict[str, str]) -> list[tuple[str, Any]]:
    """The (key, value) patches of a cell's levels, in factor order."""
    return [
        (key, value)
        for f, level in levels.items()
        for key, value in recipe.factors[f][level].items()
    ]


def cell_base(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` without its pools (cells share them), with empty placeholders for validation."""
    base = {k: v for k, v in raw.items() if k not in ("personas", "posts")}
    pools = raw.get("personas")
    base["personas"] = {name: {"inline": []} for name in pools} if isinstance(pools, dict) else {}
    base["posts"] = {"inline": []}
    return base


def cell_recipe(raw: dict[str, Any], patches: list[tuple[str, Any]], base: Recipe) -> Recipe:
    """The validated recipe of one cell: ``raw`` with ``patches`` applied, sharing ``base``'s
    pools. Raises pydantic's ValidationError (or ValueError for a patch that cannot apply)."""
    cell = Recipe.model_validate(apply_patches(cell_base(raw), patches))
    return cell.model_copy(update={"personas": base.personas, "posts": base.posts})


# Listing every cell's configuration validates each one (~1 ms); above this many cells the
# factor levels are applied one at a time instead (what the checker does too).
MAX_CELLS_LISTED = 2000


def cell_discussions(recipe: Recipe) -> list[DiscussionConfig]:
    """The distinct discussion configs of a design's cells, in cell order (with more than
    ``MAX_CELLS_LISTED`` cells: the base with each factor level applied alone). What the card
    describes and which prompt templates a run renders come from these."""
    factors = factor_levels(recipe)
    cells = select_cells(factors, recipe.design, recipe.seed)
    if len(cells) > MAX_CELLS_LISTED:
        cells = [{f: level} for f, levels in factors.items() for level in levels]
    # Only what was set: validators that refuse a key set together with another (e.g.
    # context_window with layout: thread) must not see the defaults as set.
    raw = recipe.model_dump(mode="json", exclude_unset=True)
    out: dict[str, DiscussionConfig] = {}
    for levels in cells:
        patches = cell_patches(recipe, levels)
        d = cell_recipe(raw, patches, recipe).discussion if patches else recipe.discussion
        out.setdefault(d.model_dump_json(), d)
    return list(out.values())
