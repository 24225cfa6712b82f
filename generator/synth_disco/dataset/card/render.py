"""Writing the card: the Jinja environment and its filters, ``render_card`` (README.md and
its figures from a folder's manifest and statistics) and ``rerender_card`` (the same for an
assembled run, from its manifest alone)."""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import jinja2
import pyarrow.parquet as pq
import pydantic

from synth_disco.dataset.card.context import card_context
from synth_disco.dataset.card.header import card_header
from synth_disco.dataset.figures import draw_figures
from synth_disco.dataset.manifest import CONFIGS, MANIFEST, AssembleError, read_manifest
from synth_disco.dataset.readme import card_text, merge_readme
from synth_disco.recipe.schema import Recipe
from synth_disco.store.files import atomic_write_text

TEMPLATE = "dataset_card.md.j2"


def template_dir() -> Path:
    """The folder holding the packaged card template (``templates/`` of ``synth_disco.dataset``)."""
    return Path(str(importlib.resources.files("synth_disco.dataset") / "templates"))


# -- Jinja filters ---------------------------------------------------------------------------


def _cell(value: Any) -> str:
    """A value safe inside a markdown table cell."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _fenced(text: Any, lang: str = "") -> str:
    """``text`` in a code fence longer than any backtick run inside it."""
    text = "" if text is None else str(text).rstrip("\n")
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def _environment(folder: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # markdown, not HTML; table cells go through the `cell` filter
    )
    env.filters["cell"] = _cell
    env.filters["fenced"] = _fenced
    return env


def _features_of(dataset_dir: Path, files: list[str]) -> datasets.Features:
    return datasets.Features.from_arrow_schema(pq.read_schema(dataset_dir / files[0]))


def render_card(
    dataset_dir: Path,
    recipe: Recipe,
    fingerprint: str,
    stats: Mapping[str, Any],
    *,
    manifest: Mapping[str, Any] | None = None,
    agreement: Mapping[str, Any] | None = None,
    existing_readme: str | None = None,
    repo: str | None = None,
    templates: Path | None = None,
) -> Path:
    """Write ``dataset_dir/README.md`` and its figures; returns the README's path.

    ``manifest`` defaults to the folder's ``synth_disco/manifest.json``; ``existing_readme`` to
    the folder's current README (merged with the new card as ``readme.merge_readme`` says);
    ``templates`` to the packaged template folder (a folder holding an edited copy of
    ``dataset_card.md.j2`` renders the card from that copy).
    """
    dataset_dir = Path(dataset_dir)
    manifest = manifest if manifest is not None else read_manifest(dataset_dir)
    readme = dataset_dir / "README.md"
    if existing_readme is None and readme.exists():
        existing_readme = readme.read_text(encoding="utf-8")
    repo = repo or recipe.output.hub.repo or f"your-org/{recipe.name}"
    features = {
        c: _features_of(dataset_dir, manifest["configs"][c]["files"])
        for c in CONFIGS
        if c in manifest["configs"]
    }
    ordinal = (
        {k: d.level == "ordinal" for k, d in recipe.annotation.dimensions.items()}
        if recipe.annotation
        else {}
    )
    order = {f: list(levels) for f, levels in recipe.factors.items()}
    figures = draw_figures(
        dataset_dir,
        stats,
        list(recipe.factors),
        ordinal,
        order,
        list(recipe.quality.config().enabled),
    )
    context = card_context(
        dataset_dir, recipe, fingerprint, stats, manifest, features, figures, agreement, repo
    )
    body = _environment(templates or template_dir()).get_template(TEMPLATE).render(**context)
    header = card_header(recipe, manifest, features)
    atomic_write_text(readme, merge_readme(existing_readme, card_text(header, body)))
    return readme


def rerender_card(run_dir: Path, *, repo: str | None = None) -> Path:
    """Re-render README.md and the figures of an assembled run (``run_dir`` or its
    ``dataset/`` folder) from its manifest, without re-reading the rows."""
    run_dir = Path(run_dir)
    dataset_dir = run_dir if (run_dir / MANIFEST).exists() else run_dir / "dataset"
    manifest = read_manifest(dataset_dir)
    if "recipe" not in manifest or "stats" not in manifest:
        raise AssembleError(f"{MANIFEST} is from an older synth-disco: re-assemble the run")
    try:
        recipe = Recipe.model_validate(manifest["recipe"])
    except pydantic.ValidationError as exc:
        raise AssembleError(
            f"the recipe in {MANIFEST} does not validate with this synth-disco "
            f"({exc.error_count()} problem(s)): re-assemble the run"
        ) from exc
    return render_card(
        dataset_dir,
        recipe,
        manifest["fingerprint"],
        manifest["stats"],
        manifest=manifest,
        agreement=manifest.get("agreement"),
        repo=repo or manifest.get("repo"),
    )
