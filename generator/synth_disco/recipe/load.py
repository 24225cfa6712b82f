"""Load a recipe: YAML with line numbers, ``--set`` overrides, file references, validation.

``load_recipe`` either returns a ``LoadedRecipe`` whose every part has been checked (schema,
cross references, referenced files, persona and post sources, factor patches, templates) or
raises one ``RecipeError`` listing every problem found, each with file, line, column and
dotted key path. Nothing is half-checked: what ``validate`` accepts, ``plan`` and ``build`` can
use.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from synth_disco.engines.registry import transport_keys
from synth_disco.errors import Problem, RecipeError
from synth_disco.recipe.checker import Checker, display_path
from synth_disco.recipe.checks import (
    check_cells,
    check_design,
    check_levels_alone,
    check_patch_keys,
    check_sources,
    patch_items,
    pin_hub_sources,
    references,
)
from synth_disco.recipe.factorial import cell_patches, cell_recipe, factor_levels
from synth_disco.recipe.overrides import KeyPath, parse_override, set_path
from synth_disco.recipe.schema import Recipe
from synth_disco.recipe.schema_walk import schema_types
from synth_disco.recipe.sources.personas import load_personas
from synth_disco.recipe.sources.posts import load_posts
from synth_disco.recipe.yaml_marks import Mark, parse_yaml
from synth_disco.records import Persona, Post


@dataclass
class LoadedRecipe:
    """A validated recipe with its sources.

    ``recipe``: the base config (Text file references replaced by their text); ``raw``: the
    resolved dict it was validated from (JSON-able; overrides applied, pools normalised);
    ``files``: every referenced file (path relative to the recipe -> sha256);
    ``text_refs``: where in ``raw`` a text was read from a file (key path -> the reference);
    ``fingerprint``: sha256 over ``raw`` and those files.
    """

    recipe: Recipe
    raw: dict[str, Any]
    path: Path
    base_dir: Path
    fingerprint: str
    files: dict[str, str] = field(default_factory=dict)
    text_refs: dict[KeyPath, str] = field(default_factory=dict)
    source: str = field(default="", repr=False)  # the recipe text as read
    overrides: tuple[str, ...] = ()  # the --set overrides it was loaded with
    confine: Path | None = None  # the folder its files must be in (``rebuild``), if any
    _personas: dict[str, list[Persona]] = field(default_factory=dict, repr=False)
    _posts: list[Post] | None = field(default=None, repr=False)
    _cells: dict[tuple[tuple[str, str], ...], Recipe] = field(default_factory=dict, repr=False)

    def reload(self, overrides: Sequence[str] = ()) -> LoadedRecipe:
        """The same recipe text loaded again with other ``--set`` overrides."""
        return load_recipe_text(self.source, self.path, overrides, confine=self.confine)

    @property
    def short_fingerprint(self) -> str:
        return self.fingerprint[:12]

    @property
    def display_path(self) -> str:
        return display_path(self.path)

    def personas(self, pool: str) -> list[Persona]:
        """The persona pool ``pool`` (loaded once, then cached)."""
        if pool not in self._personas:
            spec = self.recipe.personas[pool]
            self._personas[pool] = load_personas(
                spec, self.base_dir, seed=self.recipe.seed, pool=pool
            )
        return self._personas[pool]

    def posts(self) -> list[Post]:
        """The posts discussions start from (loaded once, then cached)."""
        if self._posts is None:
            self._posts = load_posts(self.recipe.posts, self.base_dir, seed=self.recipe.seed)
        return self._posts

    def factor_levels(self) -> dict[str, list[str]]:
        """Factor -> its level names, in recipe order."""
        return factor_levels(self.recipe)

    def cell_recipe(self, levels: dict[str, str]) -> Recipe:
        """The recipe of one cell: the base config with its factor levels' patches applied.

        Raises pydantic's ValidationError if the combination is invalid (``load_recipe`` has
        checked every cell, or every level when there are very many cells).
        """
        key = tuple(sorted(levels.items()))
        if key not in self._cells:
            if not levels:
                self._cells[key] = self.recipe
            else:
                self._cells[key] = cell_recipe(
                    self.raw, cell_patches(self.recipe, levels), self.recipe
                )
        return self._cells[key]


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def fingerprint_of(raw: dict[str, Any], files: dict[str, str]) -> str:
    """sha256 over the resolved recipe and the digests of the files it uses.

    A model's transport keys (how to reach a server: ``base_url``, timeouts, retries; see
    ``engines.registry.transport_keys``) are left out: a build may resume against a server
    that moved.
    """
    transport = transport_keys()
    models = raw.get("models")
    if isinstance(models, dict):
        raw = {
            **raw,
            "models": {
                name: {k: v for k, v in m.items() if k not in transport}
                if isinstance(m, dict)
                else m
                for name, m in models.items()
            },
        }
    h = hashlib.sha256()
    h.update(canonical_json(raw).encode())
    for rel in sorted(files):
        h.update(f"\n{rel}\0{files[rel]}".encode())
    return h.hexdigest()


def load_recipe(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    confine: str | os.PathLike[str] | None = None,
) -> LoadedRecipe:
    """Read, resolve and validate a recipe. Raises ``RecipeError`` listing every problem.

    ``confine`` (a folder): the recipe may read files inside it only, and name models by Hub
    id or built-in name only (``rebuild`` loads a downloaded dataset's recipe this way: it
    is not trusted).
    """
    path = Path(path)
    ck = Checker(path, Path(confine) if confine is not None else None)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "not found"
        raise RecipeError([Problem(ck.file, None, None, "", f"recipe file {what}")])
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError([Problem(ck.file, None, None, "", f"cannot read: {e}")]) from None
    return load_recipe_text(text, path, overrides, confine=confine)


def load_recipe_text(
    text: str,
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    confine: str | os.PathLike[str] | None = None,
) -> LoadedRecipe:
    """``load_recipe`` for recipe text that is not (or not only) a file: ``path`` names it in
    messages, and relative file references resolve against its folder."""
    path = Path(path)
    ck = Checker(path, Path(confine) if confine is not None else None)
    doc = parse_yaml(text, ck.file)
    data, ck.marks, ck.problems, ck.yaml_bad = doc.data, doc.marks, doc.problems, doc.refused
    if data is None:
        data = {}
    if not isinstance(data, dict):
        ck.add((), "the recipe must be a mapping of keys (name, models, personas, ...)")
        raise RecipeError(ck.problems)
    # The recipe itself enters the fingerprint as its resolved data (below), so comments and
    # formatting do not change it.

    # --set overrides, before anything is checked.
    for arg in overrides:
        try:
            opath, value = parse_override(arg)
            set_path(data, opath, value)
        except ValueError as e:
            ck.problems.append(Problem(f"--set {arg}", None, None, arg.partition("=")[0], str(e)))
            continue
        ck.override_paths.append((opath, arg))

    _normalise(ck, data)
    # Text file references, in the base config and in factor patches.
    data = ck.resolve_texts(data, [Recipe], ())
    bad_levels = check_patch_keys(ck, data)
    for fname, lname, key, kp in patch_items(data):
        if (fname, lname) not in bad_levels:
            mp: KeyPath = ("factors", fname, lname, key)
            patch = data["factors"][fname][lname]
            patch[key] = ck.resolve_texts(patch[key], schema_types(kp), mp)

    pin_hub_sources(ck, data)
    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        for kp, msg in ck.pydantic_problems(e, data):
            ck.add(kp, msg)
    personas, posts = check_sources(ck, data)
    sizes = {k: len(v) for k, v in personas.items()}

    if recipe is None:
        # Still report what can be checked without a valid base: levels on their own,
        # references, templates.
        check_levels_alone(ck, data, bad_levels)
        for kp, msg in references(data, sizes.get):
            ck.add(kp, msg)
        raise RecipeError(ck.sorted_problems())

    loaded = LoadedRecipe(
        recipe=recipe,
        raw=data,
        path=path,
        base_dir=ck.base_dir,
        fingerprint="",
        _personas=personas,
        _posts=posts,
    )
    check_design(ck, recipe)
    check_cells(ck, recipe, data, sizes, loaded.cell_recipe, bad_levels)
    if ck.confine is not None:
        for key, model in recipe.models.items():
            if model.model.startswith(("/", "./", "../", "~")) or "\\" in model.model:
                ck.add(
                    ("models", key, "model"),
                    f"{model.model!r} is a local path: a recipe being rebuilt names models by "
                    "Hub id or built-in name only",
                )
    if ck.problems:
        raise RecipeError(ck.sorted_problems())
    loaded.files = dict(sorted(ck.files.items()))
    loaded.text_refs = dict(ck.text_refs)
    loaded.fingerprint = fingerprint_of(data, loaded.files)
    loaded.source = text
    loaded.overrides = tuple(overrides)
    loaded.confine = ck.confine
    return loaded


def _normalise(ck: Checker, data: dict[str, Any]) -> None:
    """Shorthands: pools as bare lists or paths, ``none:`` levels (empty patches), a numeric
    version (so the semantic-version message applies)."""
    if isinstance(data.get("personas"), dict):
        for name, value in list(data["personas"].items()):
            norm = _normalise_source(value, ck.base_dir)
            if isinstance(value, list):
                _remap_marks(ck.marks, ("personas", name), ("personas", name, "inline"))
            data["personas"][name] = norm
    if "posts" in data:
        if isinstance(data["posts"], list):
            _remap_marks(ck.marks, ("posts",), ("posts", "inline"))
        data["posts"] = _normalise_source(data["posts"], ck.base_dir)
    if isinstance(data.get("factors"), dict):
        for levels in data["factors"].values():
            if isinstance(levels, dict):
                for lname, patch in levels.items():
                    if patch is None:
                        levels[lname] = {}
    if isinstance(data.get("version"), (int, float)) and not isinstance(data["version"], bool):
        data["version"] = str(data["version"])


def _normalise_source(value: Any, base_dir: Path) -> Any:
    """A bare list is an inline source; a bare string a file (or directory) path."""
    if isinstance(value, list):
        return {"inline": value}
    if isinstance(value, str):
        return {"dir": value} if (base_dir / value).is_dir() else {"file": value}
    return value


def _remap_marks(marks: dict[KeyPath, Mark], old: KeyPath, new: KeyPath) -> None:
    """Copy the marks below ``old`` to the same keys below ``new`` (a shorthand expanded)."""
    n = len(old)
    for k in [k for k in marks if k[:n] == old and len(k) > n]:
        marks[(*new, *k[n:])] = marks[k]
