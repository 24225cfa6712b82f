"""Per-comment aggregates and per-dimension agreement, written next to the run's shards.

Only labels with status "ok" count. The mean is given for ordinal scales whose labels are all
numbers; the majority label breaks ties by label order (lowest / first listed), and
``majority_share`` says how clear it was. Agreement is Krippendorff's alpha at the
dimension's level of measurement (ordinal for scales, nominal for categories), over the
comments that at least two annotators labelled, with a 95% percentile bootstrap interval over
comments (1,000 resamples, seeded by the run seed and the dimension).

The annotators are personas played by one model: their agreement measures how consistently
that model labels under different persona prompts, not agreement between independent people.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from synth_disco.annotation.agreement import bootstrap_interval, krippendorff_alpha
from synth_disco.annotation.tasks import STAGE
from synth_disco.recipe.schema import AnnotationConfig
from synth_disco.seeds import derive_seed
from synth_disco.store.files import atomic_write_parquet
from synth_disco.store.run_dir import RunStore

AGGREGATE_FILE = "annotations_aggregate.parquet"
AGREEMENT_FILE = "agreement.json"

AGGREGATE = pa.schema(
    [
        ("comment_id", pa.string()),
        ("discussion_id", pa.string()),
        ("dimension", pa.string()),
        ("mean", pa.float64()),
        ("majority", pa.string()),
        ("majority_share", pa.float64()),
        ("n", pa.int32()),
    ]
)


def _rows(annotations: pa.Table | Iterable[Any]) -> Iterable[dict[str, Any]]:
    if isinstance(annotations, pa.Table):
        cols = [
            c
            for c in ("comment_id", "discussion_id", "annotator_id", "dimension", "label", "status")
            if c in annotations.column_names
        ]
        yield from annotations.select(cols).to_pylist()
        return
    for a in annotations:
        yield asdict(a) if is_dataclass(a) else dict(a)


def _numeric_labels(labels: list[str]) -> list[float] | None:
    try:
        return [float(x) for x in labels]
    except ValueError:
        return None


BOOTSTRAP_SAMPLES = 1000


def aggregate(
    annotations: pa.Table | Iterable[Any],
    cfg: AnnotationConfig,
    seed: int = 0,
    *,
    interval: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Per (comment, dimension) rows and ``{dimension: {alpha, alpha_low, alpha_high, level,
    n_items, ...}}``; ``interval=False`` skips the bootstrap (the bounds are None)."""
    by_item: dict[tuple[str, str], dict[str, Any]] = {}
    for r in _rows(annotations):
        if r.get("status", "ok") != "ok" or r.get("label") is None:
            continue
        key = (r["comment_id"], r["dimension"])
        item = by_item.setdefault(key, {"discussion_id": r.get("discussion_id"), "labels": {}})
        # One label per annotator and item (a re-annotation must not count twice).
        item["labels"].setdefault(r.get("annotator_id"), str(r["label"]))

    dims = list(cfg.dimensions)
    dims += sorted({d for _, d in by_item if d not in cfg.dimensions})
    rows: list[dict[str, Any]] = []
    agreement: dict[str, dict[str, Any]] = {}
    for dim in dims:
        spec = cfg.dimensions.get(dim)
        observed = sorted(
            {lab for (_, d), it in by_item.items() if d == dim for lab in it["labels"].values()}
        )
        labels = spec.labels if spec is not None else observed
        labels = labels + [x for x in observed if x not in labels]  # tolerate unknown labels
        level = spec.level if spec is not None else "nominal"
        numbers = _numeric_labels(labels) if level == "ordinal" else None
        rank = {lab: i for i, lab in enumerate(labels)}
        units = []
        annotators: set[Any] = set()
        for (comment_id, d), it in by_item.items():
            if d != dim:
                continue
            values = list(it["labels"].values())
            annotators.update(it["labels"])
            counts = Counter(values)
            top = max(counts.values())
            majority = min((lab for lab, c in counts.items() if c == top), key=rank.__getitem__)
            mean = None
            if numbers is not None:
                mean = sum(numbers[rank[v]] for v in values) / len(values)
            rows.append(
                {
                    "comment_id": comment_id,
                    "discussion_id": it["discussion_id"],
                    "dimension": dim,
                    "mean": mean,
                    "majority": majority,
                    "majority_share": top / len(values),
                    "n": len(values),
                }
            )
            units.append(values)
        alpha = krippendorff_alpha(units, level, labels) if units else None
        ci = None
        if interval and alpha is not None:
            ci = bootstrap_interval(
                units,
                level,
                labels,
                samples=BOOTSTRAP_SAMPLES,
                seed=derive_seed(seed, "agreement", dim),
            )
        agreement[dim] = {
            "alpha": None if alpha is None else round(alpha, 6),
            "alpha_low": None if ci is None else round(ci[0], 6),
            "alpha_high": None if ci is None else round(ci[1], 6),
            "bootstrap_samples": BOOTSTRAP_SAMPLES if ci is not None else 0,
            "level": level,
            "n_items": sum(len(u) >= 2 for u in units),
            "n_comments": len(units),
            "n_labels": sum(len(u) for u in units),
            "n_annotators": len(annotators),
        }
    return rows, agreement


def write_aggregates(
    store: RunStore, cfg: AnnotationConfig, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Aggregate every finished annotate shard into the run's aggregate and agreement files.

    Returns the agreement dict (also written to ``agreement.json``, for the dataset card).
    """
    files = store.shard_files(STAGE, "annotations")
    parts = [pq.read_table(f) for f in files]
    table = pa.concat_tables(parts) if parts else pa.table({})
    rows, agreement = aggregate(table if parts else [], cfg, seed)
    atomic_write_parquet(store.root / AGGREGATE_FILE, pa.Table.from_pylist(rows, schema=AGGREGATE))
    store.write_text(
        store.root / AGREEMENT_FILE, json.dumps(agreement, indent=2, sort_keys=True) + "\n"
    )
    return agreement


def read_agreement(root: Path) -> dict[str, dict[str, Any]] | None:
    """The agreement dict of a run directory, or None when it has not been written."""
    path = Path(root) / AGREEMENT_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
