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
from synth_disco.recipe.schema import DesignConfig, Recipe
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
