"""``assemble``: a run's finished shards, and the card, into a Hub-layout dataset folder.

The shards are checked, every config is written into a temp folder next to the destination,
the empty optional configs are dropped, the manifest, the recipe copy (or the rebuild bundle)
and the card are added, and the folder is scanned for leaks before it is swapped in, so a
refused folder never replaces a good one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from synth_disco.dataset.assembly.configs import config_schemas
from synth_disco.dataset.assembly.shards import _shard_paths
from synth_disco.dataset.assembly.swap import _cleanup_stale, _fsync_tree, _swap_in
from synth_disco.dataset.assembly.writers import (
    _persona_rows,
    _prompt_rows,
    _write_annotations,
    _write_discuss,
    _write_rows,
)
from synth_disco.dataset.bundle import Bundle, write_bundle
from synth_disco.dataset.card.render import render_card
from synth_disco.dataset.manifest import (
    MANIFEST,
    META_DIR,
    RECIPE_COPY,
    AssembleError,
    build_manifest,
    dump_yaml,
)
from synth_disco.dataset.portable import LeakScan, portable_recipe, scrub_pairs
from synth_disco.dataset.stats import StatsCollector
from synth_disco.dataset.tables import agreement_rows, label_codings, typed_personas
from synth_disco.recipe.schema import Recipe
from synth_disco.store.run_dir import RunStore

# Configs published only when they have rows.
OPTIONAL = frozenset({"events", "aggregates", "agreement", "prompts"})


def assemble(
    store: RunStore,
    recipe: Recipe,
    raw_recipe: dict[str, Any],
    fingerprint: str,
    *,
    agreement: Mapping[str, Mapping[str, Any]] | None = None,
    personas: Mapping[str, Iterable[Any]] | None = None,
    source_files: Mapping[str, str] | None = None,
    out: Path | None = None,
    repo: str | None = None,
    bundle: Bundle | None = None,
    recipe_dir: Path | None = None,
) -> Path:
    """Assemble the run's finished shards, and its card, into ``out`` (default
    ``run_dir/dataset``).

    ``personas`` maps each pool the run used (see ``manifest.used_pools``) to its personas
    (``Persona`` records or dicts); without it, the discussion participants stand in.
    ``agreement`` is the annotation step's ``{dimension: {"alpha", "level", "n_items"}}``;
    ``source_files`` the recipe's referenced files (relative path -> sha256), recorded in the
    manifest; ``repo`` the Hub repo the card's examples load from; ``bundle`` what the folder
    ships so it can be rebuilt (``bundle.py``), its files read from ``recipe_dir`` (without
    it, only the recipe as resolved is copied). Returns the dataset folder.
    """
    dest = Path(out) if out is not None else store.dataset_dir
    if dest.exists() and any(dest.iterdir()) and not (dest / MANIFEST).exists():
        raise AssembleError(
            f"{dest.name}/ exists and is not a synth-disco dataset folder: refusing to replace it"
        )
    discuss = _shard_paths(store, "discuss")
    if not discuss:
        raise AssembleError("no finished shards to assemble: run `synth-disco build` first")
    annotate = _shard_paths(store, "annotate")
    factors = list(recipe.factors)
    codings = label_codings(recipe.annotation)
    disc_paths = [p["discussions"] for _, p in sorted(discuss.items()) if "discussions" in p]
    persona_columns, persona_rows = typed_personas(
        _persona_rows(personas, recipe.discussion.persona_pool, disc_paths)
    )
    schemas = config_schemas(factors, codings, persona_columns)
    max_rows = recipe.output.max_rows_per_file
    scrub = scrub_pairs(store.root)
    dims = {
        d: dim.labels
        for d, dim in (recipe.annotation.dimensions.items() if recipe.annotation else [])
    }

    dest.parent.mkdir(parents=True, exist_ok=True)
    _cleanup_stale(dest.parent, dest.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        stats = StatsCollector(factors, dims)
        written = _write_discuss(tmp, discuss, schemas, stats, max_rows, scrub)
        written += _write_annotations(
            tmp, annotate, discuss, schemas, codings, stats, max_rows, scrub
        )
        if agreement:
            rows = agreement_rows(agreement)
            written.append(_write_rows(tmp, "agreement", rows, schemas["agreement"], max_rows))
        rows = _prompt_rows(discuss, annotate)
        written.append(_write_rows(tmp, "prompts", rows, schemas["prompts"], max_rows))
        written.append(_write_rows(tmp, "personas", persona_rows, schemas["personas"], max_rows))

        # A config without rows (no events, no aggregates) is left out: `datasets` cannot
        # load an empty split, and the card lists only what loads.
        for empty in [c for c in written if not c.num_examples and c.name in OPTIONAL]:
            for rel in empty.files:
                (tmp / rel).unlink()
                (tmp / rel).parent.rmdir()
            written.remove(empty)
        stats_dict = stats.to_dict()
        manifest = build_manifest(
            recipe,
            fingerprint,
            store,
            {c.name: c for c in written},
            stats_dict,
            agreement,
            tmp,
            repo=repo,
            source_files=source_files,
        )
        (tmp / META_DIR).mkdir(parents=True, exist_ok=True)
        if bundle is not None:
            manifest["rebuild"] = bundle.to_manifest()
            write_bundle(bundle, recipe_dir or Path("."), tmp / META_DIR)
            copy = bundle.recipe
        else:
            copy = portable_recipe(raw_recipe)
        (tmp / RECIPE_COPY).write_text(dump_yaml(copy), encoding="utf-8")
        (tmp / MANIFEST).write_text(
            json.dumps(manifest, indent=1, sort_keys=False, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        existing = dest / "README.md"
        render_card(
            tmp,
            recipe,
            fingerprint,
            stats_dict,
            manifest=manifest,
            agreement=agreement,
            existing_readme=existing.read_text(encoding="utf-8") if existing.exists() else None,
            repo=repo,
        )
        scan = LeakScan.around(store.root)
        leak = scan.find_in_folder(tmp)
        for shipped in sorted(bundle.files) if bundle is not None and leak is None else ():
            what = scan.find((tmp / META_DIR / shipped).read_bytes())
            if what is not None:
                leak = (f"{META_DIR}/{shipped}", what)
                break
        if leak is not None:
            raise AssembleError(f"{leak[0]}: contains {leak[1]}; refusing to publish it")
        _fsync_tree(tmp)
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
