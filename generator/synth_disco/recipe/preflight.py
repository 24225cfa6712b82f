"""What ``validate`` checks beyond the recipe's own validity: the machine and the design.

Errors: a model that cannot be loaded here (a missing path, a Hub model not cached while
offline, a bad tiny model name). Warnings: models nothing uses, sampling settings that make
replicates pointless, designs with very many shards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from synth_disco.engines.base import EngineConfig
from synth_disco.engines.preflight import model_problem
from synth_disco.errors import Problem
from synth_disco.recipe.checker import Checker
from synth_disco.recipe.load import LoadedRecipe
from synth_disco.recipe.overrides import parse_override, patch_leaves
from synth_disco.recipe.schema_walk import suggest
from synth_disco.recipe.yaml_marks import parse_yaml

MANY_SHARDS = 10_000


@dataclass
class Preflight:
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)


def used_models(loaded: LoadedRecipe) -> set[str]:
    """Model names the discussion, its moderator, the annotation or a factor level uses."""
    r = loaded.recipe
    first = next(iter(r.models), None)
    used = {r.discussion.model or first}
    if r.discussion.moderator is not None and r.discussion.moderator.model:
        used.add(r.discussion.moderator.model)
    if r.annotation is not None:
        used.add(r.annotation.model or r.discussion.model or first)
    for levels in r.factors.values():
        for patch in levels.values():
            for path, value in patch_leaves(patch):
                if path[-1] == "model" and isinstance(value, str):
                    used.add(value)
                elif isinstance(value, dict) and isinstance(value.get("model"), str):
                    used.add(value["model"])  # e.g. a whole moderator block
    return {u for u in used if u}


def preflight(loaded: LoadedRecipe, n_shards: int | None = None) -> Preflight:
    """Errors and warnings for ``loaded`` on this machine, each at its line in the recipe."""
    ck = Checker(loaded.path)
    ck.marks = parse_yaml(loaded.source, ck.file).marks if loaded.source else {}
    for arg in loaded.overrides:  # a value set on the command line is reported as such
        try:
            ck.override_paths.append((parse_override(arg)[0], arg))
        except ValueError:
            continue
    out = Preflight()

    def at(path: tuple, message: str) -> Problem:
        file, line, col = ck.where(path)
        return Problem(file, line, col, ".".join(str(p) for p in path), message)

    recipe = loaded.recipe
    used = used_models(loaded)
    for name, model in recipe.models.items():
        why = model_problem(EngineConfig.from_mapping(model.model_dump()))
        if why is not None:
            out.errors.append(at(("models", name, "model"), why))
        if name not in used:
            others = sorted(set(recipe.models) - {name})
            hint = suggest(name, others) if others else ""
            out.warnings.append(
                at(
                    ("models", name),
                    "no discussion, moderator, annotation or factor level uses this model" + hint,
                )
            )
        if model.temperature == 0 and recipe.replicates > 1 and name in used:
            out.warnings.append(
                at(
                    ("models", name, "temperature"),
                    f"temperature 0 (greedy) with {recipe.replicates} replicates: replicates "
                    "differ only by their draws of posts and personas, not by the model's text",
                )
            )
    if n_shards is not None and n_shards > MANY_SHARDS:
        out.warnings.append(
            at(
                ("output", "shard_size"),
                f"{n_shards:,} shards: every shard is a few files and a lock; raise "
                "output.shard_size to keep the run directory manageable",
            )
        )
    return out
