"""The Python API: what the command line does, for notebooks and scripts.

A notebook user loads a model once and runs several builds with it::

    import synth_disco as sd

    recipe = sd.Recipe.from_yaml("recipes/smoke.yaml", overrides=["replicates=1"])
    engine = sd.load_engine({"engine": "tiny", "model": "tiny"})
    data = sd.build(recipe, out="runs/try-1", engine=engine)   # a datasets.DatasetDict
    data["comments"].to_pandas().head()
    engine.close()

Everything here is a thin layer over the same code the CLI runs: the same validation (a bad
recipe raises :class:`~synth_disco.errors.RecipeError` listing every problem), the same run
directory, resumability and dataset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from synth_disco.engines.base import Engine, EngineConfig
from synth_disco.engines.registry import load_engine as _load_engine
from synth_disco.pipeline.build import build as _build
from synth_disco.pipeline.build import default_run_dir
from synth_disco.recipe.load import LoadedRecipe, load_recipe, load_recipe_text
from synth_disco.recipe.schema import Recipe as RecipeSchema

if TYPE_CHECKING:
    import datasets

__all__ = ["Engine", "Recipe", "build", "load", "load_engine"]

PathLike = str | os.PathLike[str]


class Recipe:
    """A validated recipe with the files it uses (personas, posts, instructions, templates).

    Build one with :meth:`from_yaml` or :meth:`from_dict`; ``schema`` is the typed config
    (``recipe.schema.discussion.turns``, ...), ``fingerprint`` what identifies the run.
    """

    def __init__(self, loaded: LoadedRecipe):
        self._loaded = loaded

    @classmethod
    def from_yaml(cls, path: PathLike, overrides: Sequence[str] = ()) -> Recipe:
        """Load ``path`` (a recipe file, or a folder holding ``recipe.yaml``), applying
        ``--set``-style ``overrides`` such as ``"replicates=5"``."""
        path = Path(path)
        if path.is_dir():
            path = path / "recipe.yaml"
        return cls(load_recipe(path, overrides))

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        base_dir: PathLike = ".",
        overrides: Sequence[str] = (),
    ) -> Recipe:
        """A recipe from a mapping, as its YAML would hold it; relative file references
        resolve against ``base_dir``. Problems name the keys as ``<dict>:LINE`` of the
        mapping dumped as YAML."""
        text = yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True)
        return cls(load_recipe_text(text, Path(base_dir) / "<dict>", overrides))

    def to_dict(self) -> dict[str, Any]:
        """The recipe as resolved: overrides applied, file references replaced by their text
        (``from_dict`` of it gives the same recipe)."""
        import copy

        return copy.deepcopy(self._loaded.raw)

    @property
    def schema(self) -> RecipeSchema:
        return self._loaded.recipe

    @property
    def name(self) -> str:
        return self._loaded.recipe.name

    @property
    def version(self) -> str:
        return self._loaded.recipe.version

    @property
    def fingerprint(self) -> str:
        return self._loaded.fingerprint

    def __repr__(self) -> str:
        return f"Recipe({self.name!r}, version={self.version!r}, fingerprint={self.fingerprint[:12]!r})"


def load_engine(model: Mapping[str, Any] | EngineConfig) -> Engine:
    """Load an engine once to pass to several :func:`build` calls, e.g.
    ``load_engine({"engine": "transformers", "model": "smollm2"})``. Decoding settings
    (temperature, max_new_tokens, ...) still come from each recipe, request by request."""
    config = model if isinstance(model, EngineConfig) else EngineConfig.from_mapping(dict(model))
    return _load_engine(config)


def build(
    recipe: PathLike | Mapping[str, Any] | Recipe,
    *,
    out: PathLike | None = None,
    overrides: Sequence[str] | None = None,
    engine: Engine | None = None,
) -> datasets.DatasetDict:
    """Run (or resume) ``recipe`` into the run directory ``out`` and return its dataset, one
    split-``train`` dataset per config (``discussions``, ``comments``, ``annotations``,
    ``personas``) in a ``DatasetDict``.

    ``recipe`` is a path, a mapping or a :class:`Recipe`; ``overrides`` apply to a path or a
    mapping. ``engine`` (from :func:`load_engine`) serves every model the recipe names and
    stays open; without it the recipe's engines are loaded and closed again.
    """
    if not isinstance(recipe, Recipe):
        if isinstance(recipe, Mapping):
            recipe = Recipe.from_dict(recipe, overrides=overrides or ())
        else:
            recipe = Recipe.from_yaml(recipe, overrides=overrides or ())
    elif overrides:
        recipe = Recipe(recipe._loaded.reload([*recipe._loaded.overrides, *overrides]))
    loaded = recipe._loaded
    run_dir = Path(out) if out is not None else default_run_dir(loaded)
    _build(loaded, out=run_dir, engine=engine)
    return load(run_dir)


def load(run_dir: PathLike) -> datasets.DatasetDict:
    """The assembled dataset of a run directory (or of a dataset folder), every config."""
    import datasets

    from synth_disco.dataset.manifest import CONFIGS
    from synth_disco.errors import SynthDiscoError

    folder = Path(run_dir)
    if (folder / "dataset" / "README.md").exists():
        folder = folder / "dataset"
    if not (folder / "README.md").exists() or not (folder / "data").is_dir():
        raise SynthDiscoError(f"{folder.as_posix()} holds no assembled dataset: build it first")
    configs = [c for c in CONFIGS if any((folder / "data" / c).glob("*.parquet"))]
    return datasets.DatasetDict(
        {c: datasets.load_dataset(str(folder), c, split="train") for c in configs}
    )
