"""Which of a source's records a pool gets: ``filter`` keeps some, ``sample`` draws n of them
(seeded by the recipe seed and the pool name, optionally weighted by ``weight_column``), and
``read_records`` reads a source (inline, a file, a directory or the Hub) and applies both. The
records keep their position in the source, never their position after filtering or sampling.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synth_disco.errors import SourceError
from synth_disco.recipe.filters import ColumnGetter, FilterError, evaluate, parse_filter
from synth_disco.recipe.schema import SourceSpec
from synth_disco.recipe.sources.read import (
    RawRecord,
    _fmt,
    _load_hub,
    _parse_text,
    _read_dir,
    _read_file,
)
from synth_disco.seeds import derive_seed


def select_indices(
    n_rows: int, column: ColumnGetter, spec: SourceSpec, *, seed: int, pool: str
) -> list[int]:
    """Row positions kept by ``filter`` then drawn by ``sample``, in source order."""
    keep = list(range(n_rows))
    if spec.filter:
        try:
            expr = parse_filter(spec.filter)
        except FilterError as e:
            raise SourceError(f"cannot parse filter {spec.filter!r}: {e}", "filter") from None
        holds = evaluate(expr, column, n_rows)
        keep = [i for i in keep if holds[i]]
    if spec.sample is not None and spec.sample < len(keep):
        rng = random.Random(derive_seed(seed, "sample", pool))
        if spec.weight_column:
            weights = column(spec.weight_column)
            keys = []
            for i in keep:
                w = _weight(weights[i], spec.weight_column)
                u = 1.0 - rng.random()  # in (0, 1], so log(u) is finite
                if w > 0:
                    # Efraimidis-Spirakis: the n largest log(u)/w are a weighted draw
                    # without replacement.
                    keys.append((math.log(u) / w, -i))
            if len(keys) < spec.sample:
                raise SourceError(
                    f"only {len(keys)} records have a positive {spec.weight_column!r}; "
                    f"cannot draw {spec.sample}",
                    "weight_column",
                )
            keep = sorted(-i for _, i in heapq.nlargest(spec.sample, keys))
        else:
            keep = sorted(rng.sample(keep, spec.sample))
    elif spec.weight_column and spec.sample is None:
        raise SourceError("weight_column only applies together with `sample`", "weight_column")
    return keep


def _weight(x: Any, col: str) -> float:
    try:
        w = float(x)
    except (TypeError, ValueError) as e:
        raise SourceError(f"weight {x!r} in column {col!r} is not a number", "weight_column") from e
    if w < 0 or math.isnan(w):
        raise SourceError(f"weight {x!r} in column {col!r} is negative", "weight_column")
    return w


def _records_getter(records: Sequence[RawRecord], spec: SourceSpec) -> ColumnGetter:
    def column(name: str) -> list[Any]:
        src = name
        if not any(isinstance(r.value, dict) and name in r.value for r in records):
            src = spec.columns.get(name, name)
        if not any(isinstance(r.value, dict) and src in r.value for r in records):
            have = _column_names(records)
            raise SourceError(
                f"no column {name!r} in the source"
                + (f"; columns: {', '.join(have)}" if have else " (its records are plain text)"),
                "filter" if spec.filter and name in spec.filter else "weight_column",
            )
        return [r.value.get(src) if isinstance(r.value, dict) else None for r in records]

    return column


def _column_names(records: Sequence[RawRecord]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records[:1000]:
        if isinstance(r.value, dict):
            seen.update(dict.fromkeys(str(k) for k in r.value))
    return list(seen)


def read_records(spec: SourceSpec, base_dir: Path, *, seed: int, pool: str) -> list[RawRecord]:
    """Read a source, apply ``filter`` and ``sample``; the records keep their source index."""
    if spec.hub is not None:
        ds = _load_hub(spec, base_dir)

        def column(name: str) -> Sequence[Any]:
            src = name if name in ds.column_names else spec.columns.get(name, name)
            if src not in ds.column_names:
                raise SourceError(
                    f"no column {name!r} in {spec.hub!r}; columns: {', '.join(ds.column_names)}",
                    "filter" if spec.filter and name in spec.filter else "weight_column",
                )
            return ds[src]

        idx = select_indices(len(ds), column, spec, seed=seed, pool=pool)
        rows = ds.select(idx).to_list() if len(idx) < len(ds) else ds.to_list()
        return [RawRecord(i, None, row) for i, row in zip(idx, rows, strict=True)]

    if spec.inline is not None:
        records = [RawRecord(i, None, v) for i, v in enumerate(spec.inline)]
    elif spec.file is not None:
        path = base_dir / spec.file
        items = _parse_text(
            _read_file(path, spec.file, "file"), _fmt(spec, path), spec.file, "file"
        )
        records = [RawRecord(i, None, v) for i, v in enumerate(items)]
    else:
        records = _read_dir(spec, base_dir)
    idx = select_indices(len(records), _records_getter(records, spec), spec, seed=seed, pool=pool)
    return [records[i] for i in idx]
