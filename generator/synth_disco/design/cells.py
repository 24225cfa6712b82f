"""The cells of a design: each experimental condition with its id and validated recipe.

Which cells a design runs is ``recipe.factorial.select_cells`` (the checker validates the same
cells); here each becomes a ``Cell`` with a stable id and the JSON config its discussions run
with.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from synth_disco.errors import Problem, RecipeError
from synth_disco.recipe.factorial import select_cells
from synth_disco.recipe.load import LoadedRecipe
from synth_disco.recipe.schema import Recipe

# Keys that shape the plan, not one discussion: left out of each spec's config so that a spec
# does not change when, say, `replicates` is raised (the pools are in the spec itself).
PLAN_ONLY_KEYS = frozenset({"personas", "posts", "factors", "design", "replicates"})


@dataclass(frozen=True)
class Cell:
    """One experimental condition: its factor levels and its validated recipe."""

    index: int
    id: str
    levels: dict[str, str]
    recipe: Recipe
    config: dict[str, Any]  # the recipe as JSON (defaults filled), without PLAN_ONLY_KEYS
    config_json: str


def cell_id(levels: dict[str, str]) -> str:
    """A short id that depends only on the factor levels (not on their order or position)."""
    if not levels:
        return "base"
    key = json.dumps(sorted(levels.items()), ensure_ascii=False, separators=(",", ":"))
    return "c" + hashlib.sha256(key.encode()).hexdigest()[:10]


def discussion_id(cell: str, replicate: int) -> str:
    return f"{cell}-r{replicate:05d}"


def make_cells(loaded: LoadedRecipe) -> list[Cell]:
    """The design's cells in factorial order. Raises ``RecipeError`` for a cell that does not
    validate (possible only past the checker's ``MAX_CELLS_CHECKED``) or an id clash."""
    recipe = loaded.recipe
    cells: list[Cell] = []
    for i, levels in enumerate(select_cells(loaded.factor_levels(), recipe.design, recipe.seed)):
        try:
            cell_recipe = loaded.cell_recipe(levels)
        except ValueError as e:  # (ValidationError too) only past MAX_CELLS_CHECKED cells
            where = ", ".join(f"{f}={v}" for f, v in levels.items())
            raise RecipeError(
                [Problem(loaded.display_path, None, None, "factors", f"cell {where}: {e}")]
            ) from None
        config = cell_recipe.model_dump(mode="json", exclude=PLAN_ONLY_KEYS)
        cells.append(
            Cell(
                index=i,
                id=cell_id(levels),
                levels=levels,
                recipe=cell_recipe,
                config=config,
                config_json=json.dumps(
                    config, sort_keys=True, ensure_ascii=False, separators=(",", ":")
                ),
            )
        )
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):  # 40-bit ids: only conceivable with ~1M cells
        raise RecipeError(
            [Problem(loaded.display_path, None, None, "factors", "two cells share an id")]
        )
    return cells
