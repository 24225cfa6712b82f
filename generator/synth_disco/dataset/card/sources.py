"""The card's table of data sources: each persona pool and the original posts, where they
were read from, their license, sample and the rows the run used."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from synth_disco.dataset.manifest import used_pools
from synth_disco.dataset.portable import portable_model_id
from synth_disco.recipe.schema import Recipe, SourceSpec


def _source_where(spec: SourceSpec) -> str:
    if spec.inline is not None:
        n = len(spec.inline)
        where = f"inline in the recipe ({n} record{'s' if n != 1 else ''})"
    elif spec.hub is not None:
        extra = [f"split {spec.split}"]
        if spec.config:
            extra.insert(0, f"config {spec.config}")
        if spec.revision:
            extra.append(f"revision {spec.revision}")
        where = f"Hub dataset `{spec.hub}` ({', '.join(extra)})"
    else:
        kind = "file" if spec.file is not None else "folder"
        where = f"{kind} `{portable_model_id(spec.file or spec.dir or '')}`"
    if spec.filter:
        where += f", filtered by `{spec.filter}`"
    return where


def _pool_counts(dataset_dir: Path, manifest: Mapping[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rel in manifest["configs"].get("personas", {}).get("files", []):
        column = pq.read_table(dataset_dir / rel, columns=["pool"])["pool"]
        for item in pc.value_counts(column).to_pylist():
            counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    return counts


def _sources(recipe: Recipe, dataset_dir: Path, manifest: Mapping[str, Any], stats: Any) -> list:
    pools = _pool_counts(dataset_dir, manifest)
    used = used_pools(recipe)
    rows = []
    for pool, spec in recipe.personas.items():
        role = used.get(pool, "not used")
        rows.append(
            {
                "role": f"personas `{pool}` ({role})",
                "where": _source_where(spec),
                "license": spec.license or "not stated",
                "sample": spec.sample or "all",
                "rows": pools.get(pool, 0),
            }
        )
    rows.append(
        {
            "role": "original posts",
            "where": _source_where(recipe.posts),
            "license": recipe.posts.license or "not stated",
            "sample": recipe.posts.sample or "all",
            "rows": stats["posts_used"],
        }
    )
    return rows
