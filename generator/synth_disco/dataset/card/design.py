"""The experimental design as the card shows it: factor levels in recipe order
(``_level_rank``, the order of every per-level table) and each deliberation structure the
cells use, in words and as a graph (``_structures``)."""

from __future__ import annotations

from synth_disco.discussion.structures import describe as describe_structure
from synth_disco.discussion.structures import diagram as structure_diagram
from synth_disco.recipe.factorial import cell_discussions
from synth_disco.recipe.schema import Recipe


def _level_rank(recipe: Recipe, factor: str, level: str) -> tuple[int, str]:
    """Sort key: the level's position in the recipe (unknown levels last, by name)."""
    levels = list(recipe.factors.get(factor, {}))
    return (levels.index(level), "") if level in levels else (len(levels), level)


def _structures(recipe: Recipe) -> list[dict[str, str]]:
    """Each deliberation structure the design's cells use: its name, what it does in words,
    and its graph as a Mermaid flowchart (forum threads are described by the rest of the
    card)."""
    out = []
    for cfg in cell_discussions(recipe):
        if cfg.structure == "forum":
            continue
        out.append(
            {
                "name": cfg.structure,
                "description": describe_structure(cfg),
                "diagram": structure_diagram(cfg),
            }
        )
    return out
