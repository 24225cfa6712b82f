"""Which prompt templates a recipe's discussions render, with their exact sources, for the card.

Its own module because it spans forum threads (``prompts``) and deliberation structures
(``structure_prompts``, which builds on ``prompts``).
"""

from __future__ import annotations

from synth_disco.discussion.prompts import recipe_text, templates_for
from synth_disco.discussion.structure_prompts import card_names, templates_for_structure
from synth_disco.recipe.factorial import cell_discussions
from synth_disco.recipe.overrides import sets_under
from synth_disco.recipe.schema import Recipe


def templates_used(recipe: Recipe) -> dict[str, str]:
    """Template name -> source, for the discussions of ``recipe``: for forum threads, its base
    config's templates, with ``moderator_system`` as well when only some factor levels add a
    moderator; for deliberation structures, those ``structure_prompts.templates_for_structure``
    names for each structure the design uses (combinations by preset). (Factor levels that set
    ``discussion.templates`` themselves are shown by their patches.)"""
    configs = cell_discussions(recipe)
    structured = [c for c in configs if c.structure != "forum"]
    out: dict[str, str] = {}
    if len(structured) < len(configs):  # some cells are forum threads
        out = _forum_templates_used(recipe)
    if structured:
        for cfg in structured:
            names = card_names(cfg)
            for name, source in templates_for_structure(cfg).items():
                out.setdefault(names[name], source)
    return out


def _forum_templates_used(recipe: Recipe) -> dict[str, str]:
    d = recipe.discussion
    out = templates_for(d)
    if d.structure != "forum" and d.moderator is not None:
        # The base's moderator is a structure's combiner: forum cells have theirs from levels.
        out.pop("moderator_system", None)
    if "moderator_system" not in out and any(
        sets_under(patch, ("discussion", "moderator"))
        for levels in recipe.factors.values()
        for patch in levels.values()
    ):
        out["moderator_system"] = recipe_text(d.templates.moderator_system) or out["system"]
    return out
