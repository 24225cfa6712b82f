"""Recipes: what a valid recipe is, and loading one with every problem reported at its line.

``schema`` (the pydantic models), ``yaml_marks`` (YAML with line numbers), ``overrides`` (key
paths: ``--set`` and factor patch keys), ``schema_walk`` (types by key path), ``templates``
(the prompt template sandbox and its check), ``checker`` and ``checks`` (problems and where they
come from), ``factorial`` (factors -> cells), ``sources`` (persona and post sources; a package),
``filters`` (the source filter language), ``graph`` (deliberation graphs: edges, Kahn order)
and ``load`` (``load_recipe``). Code inside the package imports from those modules; this surface is
for users.
"""

from synth_disco.recipe.load import LoadedRecipe, load_recipe
from synth_disco.recipe.schema import Recipe

__all__ = ["LoadedRecipe", "Recipe", "load_recipe"]
