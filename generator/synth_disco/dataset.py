"""Assembly of a run's finished shards into a Hub-layout dataset folder.

::

    dataset/
      README.md                                   the card (see ``card.py``)
      data/<config>/train-00000-of-00002.parquet  configs discussions, comments, annotations, personas
      figures/*.png                               drawn from the statistics below
      synth_disco/recipe.yaml                     the resolved recipe
      synth_disco/manifest.json                   fingerprint, versions, models, checksums, counts, stats

Assembly streams: shard files are read record batch by record batch and written through
``pyarrow.parquet.ParquetWriter`` with a bounded buffer, and the statistics the card needs are
folded into aggregates keyed by factor level, label or cell (never by row), so peak memory does
not grow with the number of discussions. The folder is built next to its destination and swapped
in at the end, so an interruption never leaves half a dataset. The same shards give
byte-identical files (no timestamps, deterministic row groups).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from synth_disco.recipe.schema import Recipe
from synth_disco.store import schemas
from synth_disco.store.files import fsync_dir, sha256_file
from synth_disco.store.run_dir import RunStore

from .recipe.overrides import patch_leaves

SPLIT = "train"
CONFIGS = ("discussions", "comments", "annotations", "personas")
# config -> (stage, shard table) it is assembled from; personas come from the recipe's pools.
SOURCES = {
    "discussions": ("discuss", "discussions"),
    "comments": ("discuss", "comments"),
    "annotations": ("annotate", "annotations"),
}
META_DIR = "synth_disco"
MANIFEST = f"{META_DIR}/manifest.json"
RECIPE_COPY = f"{META_DIR}/recipe.yaml"
MANIFEST_FORMAT = 1

# Roles that are not generated (the original post and seed replies come from the post source).
SOURCE_ROLES = ("op", "seed")
# Words-per-comment histogram bins, lower edges; the last bin is open.
LENGTH_EDGES = (0, 10, 20, 40, 80, 160, 320)
LENGTH_LABELS = ("<10", "10-19", "20-39", "40-79", "80-159", "160-319", "320+")

READ_BATCH_ROWS = 4096
ROW_GROUP_ROWS = 10_000  # small enough for the Hub's viewer, large enough to compress well
ROW_GROUP_BYTES = 32 << 20  # the write buffer's bound, whatever the row size
# The same content-defined chunking `datasets` uses, so a new version that adds rows shares
# most of its bytes with the previous one on the Hub's deduplicating storage.
CDC_OPTIONS = {"min_chunk_size": 256 * 1024, "max_chunk_size": 1024 * 1024, "norm_level": 0}
MAX_FAILURE_EXAMPLES = 20
VERSIONED_PACKAGES = (
    "synth-disco",
    "torch",
    "transformers",
    "datasets",
    "huggingface_hub",
    "pyarrow",
)


class AssembleError(RuntimeError):
    """The run cannot be assembled (no finished shards, a changed shard file, a leaked path)."""


# -- schemas ---------------------------------------------------------------------------------


def config_schemas(factors: list[str]) -> dict[str, pa.Schema]:
    """The arrow schema of every config, from ``schemas.py``."""
    discussions = schemas.discussions_schema(factors)
    clashes = sorted({n for n in discussions.names if discussions.names.count(n) > 1})
    if clashes:
        raise AssembleError(
            f"factor name(s) {', '.join(clashes)} clash with columns of the discussions table: "
            "rename the factor(s) in the recipe"
        )
    return {
        "discussions": discussions,
        "comments": schemas.COMMENTS,
        "annotations": schemas.ANNOTATIONS,
        "personas": schemas.PERSONAS,
    }


def config_features(factors: list[str]) -> dict[str, datasets.Features]:
    """Explicit ``datasets.Features`` of every config (typed structs and lists)."""
    return {k: datasets.Features.from_arrow_schema(s) for k, s in config_schemas(factors).items()}


def data_file(config: str, index: int, count: int) -> str:
    """Relative path of one parquet file, in the Hub's ``<split>-XXXXX-of-YYYYY`` naming."""
    return f"data/{config}/{SPLIT}-{index:05d}-of-{count:05d}.parquet"


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape the output (read without importing them)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in VERSIONED_PACKAGES:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def portable_model_id(model: str) -> str:
    """A model id without local paths: a local directory becomes its folder name."""
    if os.path.isabs(model) or model.startswith(("~", "./", "../")):
        return Path(model.rstrip("/\\")).name or model
    return model


def portable_recipe(raw: Any, key: str = "") -> Any:
    """``raw`` with local paths in ``file`` / ``dir`` / ``model`` values made non-absolute."""
    if isinstance(raw, dict):
        return {k: portable_recipe(v, str(k)) for k, v in raw.items()}
    if isinstance(raw, list):
        return [portable_recipe(v, key) for v in raw]
    if isinstance(raw, str) and key in ("file", "dir", "model"):
        return portable_model_id(raw)
    return raw


def used_pools(recipe: Recipe) -> dict[str, str]:
    """Persona pools the run draws from -> what for ("participants" / "annotators"), including
    pools that only some factor levels switch to."""
    pools = {recipe.discussion.persona_pool: "participants"}
    if recipe.annotation is not None:
        pools.setdefault(recipe.annotation.annotators.pool, "annotators")
    for levels in recipe.factors.values():
        for patch in levels.values():
            for path, value in patch_leaves(patch):
                if path == ("discussion", "persona_pool") and isinstance(value, str):
                    pools.setdefault(value, "participants")
                elif path == ("annotation", "annotators", "pool") and isinstance(value, str):
                    pools.setdefault(value, "annotators")
    return pools


class _BlockDumper(yaml.SafeDumper):
    """Safe YAML with multi-line strings as ``|`` blocks, so prompts read as written."""


def _str_block(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_block)


def dump_yaml(data: Any) -> str:
    """YAML for people: keys in their order, unicode kept, multi-line strings as blocks."""
    return yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=100)


# -- writing ---------------------------------------------------------------------------------


@dataclass
class ConfigFiles:
    """What was written for one config."""

    name: str
    files: list[str]  # relative paths, in order
    num_examples: int
    num_bytes: int  # arrow (uncompressed) size
    download_size: int  # parquet size on disk

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "num_examples": self.num_examples,
            "num_bytes": self.num_bytes,
            "download_size": self.download_size,
        }


class _ConfigWriter:
    """Writes one config's rows, in order, into ``ceil(total / max_rows)`` parquet files.

    The total is known before the first row (from the shard files' footers), so every file gets
    its final ``-of-YYYYY`` name at once. Rows are buffered up to one row group.
    """

    def __init__(self, root: Path, config: str, schema: pa.Schema, total: int, max_rows: int):
        self.root = root
        self.config = config
        self.schema = schema
        self.total = total
        self.max_rows = max_rows
        self.n_files = max(1, math.ceil(total / max_rows))
        self.files: list[str] = []
        self.rows = 0
        self.num_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._file_rows = 0
        self._buffer: list[pa.RecordBatch] = []
        self._buffer_rows = 0
        self._buffer_bytes = 0

    def write(self, batch: pa.RecordBatch) -> None:
        while batch.num_rows:
            room = self.max_rows - self._file_rows - self._buffer_rows
            if room <= 0:
                self._flush()
                self._close_file()
                continue
            head, batch = batch.slice(0, room), batch.slice(room)
            self._buffer.append(head)
            self._buffer_rows += head.num_rows
            self._buffer_bytes += head.nbytes
            if self._buffer_rows >= ROW_GROUP_ROWS or self._buffer_bytes >= ROW_GROUP_BYTES:
                self._flush()

    def _open_file(self) -> pq.ParquetWriter:
        rel = data_file(self.config, len(self.files), self.n_files)
        if len(self.files) >= self.n_files:
            raise AssembleError(f"{self.config}: more rows than the shard files declared")
        self.files.append(rel)
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return pq.ParquetWriter(
            path,
            self.schema,
            compression="zstd",
            use_content_defined_chunking=CDC_OPTIONS,
            write_page_index=True,
        )

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._writer = self._open_file()
        table = pa.Table.from_batches(self._buffer, schema=self.schema)
        self._writer.write_table(table, row_group_size=table.num_rows)
        self._file_rows += table.num_rows
        self.rows += table.num_rows
        self.num_bytes += table.nbytes
        self._buffer, self._buffer_rows, self._buffer_bytes = [], 0, 0

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        self._file_rows = 0

    def close(self) -> ConfigFiles:
        self._flush()
        if self._writer is None and not self.files:
            self._writer = self._open_file()  # an empty config still gets one (empty) file
        self._close_file()
        if self.rows != self.total or len(self.files) != self.n_files:
            raise AssembleError(
                f"{self.config}: wrote {self.rows} rows in {len(self.files)} files, expected "
                f"{self.total} rows in {self.n_files}: a shard changed while assembling"
            )
        size = sum((self.root / f).stat().st_size for f in self.files)
        return ConfigFiles(self.config, list(self.files), self.rows, self.num_bytes, size)


def _portable_strings(arr: pa.Array) -> pa.Array:
    """Replace local-path model ids in a string column (few distinct values: map the uniques)."""
    uniques = pc.unique(arr).to_pylist()
    fixed = [portable_model_id(u) if u is not None else None for u in uniques]
    if fixed == uniques:
        return arr
    index = pc.index_in(arr, value_set=pa.array(uniques, pa.string()))
    return pc.take(pa.array(fixed, pa.string()), index)


def _portable_batch(batch: pa.RecordBatch, scrub: Sequence[tuple[str, str]] = ()) -> pa.RecordBatch:
    """The batch with its ``model`` columns (and the moderator's) free of local paths, and the
    local paths in ``scrub`` (needle, replacement) replaced in error messages."""
    names = batch.schema.names
    columns = list(batch.columns)
    for i, name in enumerate(names):
        if name in ("error", "detail") and scrub and columns[i].null_count < len(columns[i]):
            for needle, replacement in scrub:
                columns[i] = pc.replace_substring(columns[i], needle, replacement)
        elif name == "model":
            columns[i] = _portable_strings(columns[i])
        elif name == "moderator" and pa.types.is_struct(columns[i].type):
            struct = columns[i]
            original = [struct.field(j) for j in range(struct.type.num_fields)]
            children = [
                _portable_strings(c) if t.name == "model" else c
                for c, t in zip(original, struct.type, strict=True)
            ]
            if all(a is b for a, b in zip(children, original, strict=True)):
                continue
            columns[i] = pa.StructArray.from_arrays(
                children, fields=list(struct.type), mask=struct.is_null()
            )
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)


def _read_batches(
    path: Path, schema: pa.Schema, scrub: Sequence[tuple[str, str]] = ()
) -> Iterator[pa.RecordBatch]:
    """The rows of one shard file, batch by batch, conformed to ``schema``."""
    pf = pq.ParquetFile(path)
    missing = [n for n in schema.names if n not in pf.schema_arrow.names]
    if missing:
        raise AssembleError(f"{path.name}: missing column(s) {', '.join(missing)}")
    for batch in pf.iter_batches(batch_size=READ_BATCH_ROWS, columns=schema.names):
        try:
            batch = batch.select(schema.names).cast(schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise AssembleError(f"{path.name}: columns do not match the schema: {exc}") from exc
        yield _portable_batch(batch, scrub)


def _rows_in(paths: Iterable[Path]) -> int:
    return sum(pq.read_metadata(p).num_rows for p in paths)


# -- statistics ------------------------------------------------------------------------------


@dataclass
class _LevelStats:
    discussions: int = 0
    comments: int = 0
    words: int = 0
    lengths: list[int] = field(default_factory=lambda: [0] * len(LENGTH_LABELS))
    labels: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))


class StatsCollector:
    """Folds shards into the statistics the card shows; its state is bounded by the number of
    cells, factor levels and labels (plus one shard's discussion ids at a time)."""

    def __init__(self, factors: list[str], dimensions: Mapping[str, list[str]]):
        self.factors = factors
        self.dimensions = {d: list(labels) for d, labels in dimensions.items()}
        self.status: Counter[str] = Counter()
        self.cells: dict[str, dict[str, Any]] = {}
        self.levels: dict[str, dict[str, _LevelStats]] = {f: {} for f in factors}
        self.roles: Counter[str] = Counter()
        self.finish_reasons: Counter[str] = Counter()
        self.words = 0
        self.generated = 0
        self.lengths = np.zeros(len(LENGTH_LABELS), dtype=np.int64)
        self.per_discussion = {"n": 0, "sum": 0, "min": None, "max": None}
        self.events: Counter[str] = Counter()
        self.annotation_status: Counter[str] = Counter()
        self.labels: dict[str, Counter[str]] = defaultdict(Counter)
        self.models: set[tuple[str, str, str]] = set()
        self.posts: set[str] = set()
        self.failures: list[dict[str, str]] = []
        self.tokens = {"prompt": 0, "completion": 0}

    # discussions of one shard: returns discussion_id -> (cell_id, levels) for that shard
    def add_discussions(self, table: pa.Table) -> dict[str, tuple[str, tuple[str, ...]]]:
        cols = ["discussion_id", "cell_id", "status", "error", "post_id", *self.factors]
        cols += ["model", "model_revision", "generation", "prompt_tokens", "completion_tokens"]
        rows = table.select(cols).to_pylist()
        cells: dict[str, tuple[str, tuple[str, ...]]] = {}
        for row in rows:
            levels = tuple(row[f] or "" for f in self.factors)
            cells[row["discussion_id"]] = (row["cell_id"], levels)
            status = row["status"] or "unknown"
            self.status[status] += 1
            cell = self.cells.setdefault(
                row["cell_id"],
                {
                    "levels": dict(zip(self.factors, levels, strict=True)),
                    "discussions": 0,
                    "failed": 0,
                    "comments": 0,
                },
            )
            cell["discussions"] += 1
            cell["failed"] += status == "failed"
            for f, level in zip(self.factors, levels, strict=True):
                self.levels[f].setdefault(level, _LevelStats()).discussions += 1
            self.models.add(
                (row["model"] or "", row["model_revision"] or "", row["generation"] or "")
            )
            if row["post_id"] is not None:
                self.posts.add(row["post_id"])
            if status == "failed" and len(self.failures) < MAX_FAILURE_EXAMPLES:
                self.failures.append(
                    {"discussion_id": row["discussion_id"], "error": row["error"] or ""}
                )
            self.tokens["prompt"] += row["prompt_tokens"] or 0
            self.tokens["completion"] += row["completion_tokens"] or 0
        return cells

    def add_comments(
        self,
        batch: pa.RecordBatch,
        cells: Mapping[str, tuple[str, tuple[str, ...]]],
        counts: Counter[str],
    ) -> None:
        """One batch of comments; ``counts`` gathers generated comments per discussion."""
        roles = batch.column("role")
        self.roles.update(_value_counts(roles))
        generated = pc.invert(pc.fill_null(pc.is_in(roles, pa.array(SOURCE_ROLES)), False))
        gen = pa.Table.from_batches([batch]).filter(generated)
        if not gen.num_rows:
            return
        self.finish_reasons.update(_value_counts(gen.column("finish_reason")))
        words_np = _word_counts(gen["text"])
        bins = np.digitize(words_np, LENGTH_EDGES[1:])
        self.words += int(words_np.sum())
        self.lengths += np.bincount(bins, minlength=len(LENGTH_LABELS))
        self.generated += gen.num_rows
        grouped = (
            pa.table({"d": gen["discussion_id"], "b": bins, "w": words_np})
            .group_by(["d", "b"])
            .aggregate([("w", "sum"), ("w", "count")])
        )
        for d, b, w, n in zip(
            grouped["d"].to_pylist(),
            grouped["b"].to_pylist(),
            grouped["w_sum"].to_pylist(),
            grouped["w_count"].to_pylist(),
            strict=True,
        ):
            counts[d] += n
            cell_id, levels = cells.get(d, ("", ()))
            if cell_id in self.cells:
                self.cells[cell_id]["comments"] += n
            for f, level in zip(self.factors, levels, strict=False):
                stats = self.levels[f].setdefault(level, _LevelStats())
                stats.comments += n
                stats.words += w
                stats.lengths[b] += n

    def end_shard(self, discussion_ids: Iterable[str], counts: Counter[str]) -> None:
        """Fold one shard's comments-per-discussion counts (0 for silent discussions)."""
        pd = self.per_discussion
        for n in (counts.get(d, 0) for d in set(discussion_ids) | set(counts)):
            pd["n"] += 1
            pd["sum"] += n
            pd["min"] = n if pd["min"] is None else min(pd["min"], n)
            pd["max"] = n if pd["max"] is None else max(pd["max"], n)

    def add_events(self, batch: pa.RecordBatch) -> None:
        self.events.update(_value_counts(batch.column("kind")))

    def add_annotations(
        self, batch: pa.RecordBatch, cells: Mapping[str, tuple[str, tuple[str, ...]]]
    ) -> None:
        self.annotation_status.update(_value_counts(batch.column("status")))
        ok = pa.Table.from_batches([batch]).filter(
            pc.fill_null(pc.equal(batch.column("status"), "ok"), False)
        )
        grouped = ok.group_by(["discussion_id", "dimension", "label"]).aggregate(
            [("comment_id", "count")]
        )
        for d, dim, label, n in zip(
            grouped["discussion_id"].to_pylist(),
            grouped["dimension"].to_pylist(),
            grouped["label"].to_pylist(),
            grouped["comment_id_count"].to_pylist(),
            strict=True,
        ):
            label = "" if label is None else label
            self.labels[dim][label] += n
            _, levels = cells.get(d, ("", ()))
            for f, level in zip(self.factors, levels, strict=False):
                self.levels[f].setdefault(level, _LevelStats()).labels[dim][label] += n

    def _label_order(self, dim: str, seen: Iterable[str]) -> list[str]:
        known = self.dimensions.get(dim, [])
        return known + sorted(set(seen) - set(known))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready statistics (sorted, so the manifest is deterministic)."""
        pd = self.per_discussion
        dims = list(self.dimensions) + sorted(set(self.labels) - set(self.dimensions))
        labels = {
            d: {lab: self.labels[d].get(lab, 0) for lab in self._label_order(d, self.labels[d])}
            for d in dims
        }
        by_level: dict[str, dict[str, Any]] = {}
        for f in self.factors:
            by_level[f] = {}
            for level in sorted(self.levels[f]):
                s = self.levels[f][level]
                by_level[f][level] = {
                    "discussions": s.discussions,
                    "comments": s.comments,
                    "words_per_comment": round(s.words / s.comments, 3) if s.comments else None,
                    "length_hist": dict(zip(LENGTH_LABELS, s.lengths, strict=True)),
                    "labels": {
                        d: {
                            lab: s.labels[d].get(lab, 0)
                            for lab in self._label_order(d, s.labels[d])
                        }
                        for d in dims
                        if d in s.labels
                    },
                }
        return {
            "discussions": {
                "total": sum(self.status.values()),
                "ok": self.status.get("ok", 0),
                "failed": self.status.get("failed", 0),
                "by_status": dict(sorted(self.status.items())),
            },
            "comments": {
                "total": sum(self.roles.values()),
                "generated": self.generated,
                "by_role": dict(sorted(self.roles.items())),
                "finish_reasons": dict(sorted(self.finish_reasons.items())),
                "per_discussion": {
                    "mean": round(pd["sum"] / pd["n"], 3) if pd["n"] else None,
                    "min": pd["min"],
                    "max": pd["max"],
                },
                "words_per_comment": (
                    round(self.words / self.generated, 3) if self.generated else None
                ),
                "length_bins": list(LENGTH_LABELS),
                "length_hist": dict(zip(LENGTH_LABELS, self.lengths.tolist(), strict=True)),
            },
            "events": dict(sorted(self.events.items())),
            "annotations": {
                "total": sum(self.annotation_status.values()),
                "by_status": dict(sorted(self.annotation_status.items())),
                "labels": labels,
            },
            "tokens": dict(self.tokens),
            "posts_used": len(self.posts),
            "cells": [
                {"cell_id": k, **v} for k, v in sorted(self.cells.items(), key=lambda kv: kv[0])
            ],
            "by_level": by_level,
            "models_seen": [
                {"model": m, "revision": r, "generation": json.loads(g) if g else {}}
                for m, r, g in sorted(self.models)
            ],
            "failures": {
                "discussions": self.status.get("failed", 0),
                "failed_turns": self.events.get("failed_turn", 0),
                "annotations": self.annotation_status.get("failed", 0),
                "examples": self.failures,
            },
        }


def _word_counts(text: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Whitespace-separated words per string (0 for empty or null)."""
    trimmed = pc.utf8_trim_whitespace(pc.fill_null(text, ""))
    counts = pc.list_value_length(pc.utf8_split_whitespace(trimmed))
    counts = pc.if_else(pc.equal(trimmed, ""), 0, counts)
    return counts.to_numpy(zero_copy_only=False).astype(np.int64)


def _value_counts(arr: pa.Array) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in pc.value_counts(arr).to_pylist():
        key = item["values"]
        out["" if key is None else key] = item["counts"]
    return out


# -- assembly --------------------------------------------------------------------------------


def _checked(store: RunStore, stage: str, shard: int, table: str, expected: str) -> Path:
    """The shard file, after checking it still has the checksum its done marker recorded."""
    path = store.shard_path(stage, shard, table)
    if not path.exists():
        raise AssembleError(f"shards/{stage}/{path.name} is missing but its shard is marked done")
    if sha256_file(path) != expected:
        raise AssembleError(
            f"shards/{stage}/{path.name} changed after its shard was finished (checksum differs)"
        )
    return path


def _shard_paths(store: RunStore, stage: str) -> dict[int, dict[str, Path]]:
    """shard -> table -> verified path, for every finished shard of a stage."""
    return {
        info.shard: {
            t: _checked(store, stage, info.shard, t, h) for t, h in sorted(info.files.items())
        }
        for info in store.done_shards(stage)
    }


def _cell_map(path: Path | None, factors: list[str]) -> dict[str, tuple[str, tuple[str, ...]]]:
    if path is None:
        return {}
    t = pq.read_table(path, columns=["discussion_id", "cell_id", *factors])
    ids, cells = t["discussion_id"].to_pylist(), t["cell_id"].to_pylist()
    levels = (
        list(zip(*(t[f].to_pylist() for f in factors), strict=True)) if factors else [()] * len(ids)
    )
    return {d: (c, tuple(x or "" for x in lv)) for d, c, lv in zip(ids, cells, levels, strict=True)}


def _persona_rows(
    personas: Mapping[str, Iterable[Any]] | None,
    discussion_pool: str,
    discussion_paths: list[Path],
) -> list[dict[str, Any]]:
    """One row per (pool, persona), deduplicated by id, in pool then source order.

    Without explicit pools, the participants found in the discussions stand in for the
    discussion pool (bounded by the pool's size, not by the number of discussions).
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    if personas is not None:
        for pool, members in personas.items():
            for p in members:
                d = p.to_dict() if hasattr(p, "to_dict") else dict(p)
                key = (pool, str(d["id"]))
                if key not in rows:
                    rows[key] = {
                        "pool": pool,
                        "id": str(d["id"]),
                        "name": d.get("name", ""),
                        "description": d.get("description", ""),
                        "fields": list(d.get("fields", [])),
                    }
        return list(rows.values())
    for path in discussion_paths:
        for batch in pq.ParquetFile(path).iter_batches(
            batch_size=READ_BATCH_ROWS, columns=["participants"]
        ):
            for participants in batch.column("participants").to_pylist():
                for part in participants or []:
                    persona = part["persona"] or {}
                    key = (discussion_pool, persona.get("id") or "")
                    if key[1] and key not in rows:
                        rows[key] = {"pool": discussion_pool, **persona}
    return list(rows.values())


def _models_manifest(recipe: Recipe, seen: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each recipe model: id, revision (the resolved one from the rows when known), engine and
    generation parameters."""
    out = {}
    for key, m in recipe.models.items():
        model_id = portable_model_id(m.model)
        resolved = sorted({s["revision"] for s in seen if s["model"] in (m.model, model_id, key)})
        resolved = [r for r in resolved if r]
        out[key] = {
            "id": model_id,
            "revision": resolved[0] if len(resolved) == 1 else (resolved or m.revision),
            "requested_revision": m.revision,
            "engine": m.engine,
            "dtype": m.dtype,
            "generation": {
                "max_new_tokens": m.max_new_tokens,
                "temperature": m.temperature,
                "top_p": m.top_p,
                "top_k": m.top_k,
                "repetition_penalty": m.repetition_penalty,
                "stop": list(m.stop),
            },
        }
    return out


def _cleanup_stale(parent: Path, name: str) -> None:
    """Remove temp folders an interrupted assembly left behind."""
    for stale in parent.glob(f".{name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    """Make every file of ``folder`` durable before it is renamed into place."""
    for path in sorted(folder.rglob("*"), reverse=True):  # files before their folders
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(folder)


def _swap_in(tmp: Path, dest: Path) -> None:
    """Replace ``dest`` by ``tmp``: two renames, the old folder deleted only afterwards."""
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    fsync_dir(dest.parent)


HF_TOKEN_RE = re.compile(rb"hf_[A-Za-z0-9]{30,}")


def scrub_pairs(run_root: Path) -> list[tuple[str, str]]:
    """(local path, stand-in) pairs that must not be published, longest path first: the run's
    absolute path, its parent (both skipped when as short as ``/tmp``) and the home directory."""
    root = run_root.resolve()
    pairs = {}
    for path, stand_in in ((root, "<run>"), (root.parent, "<runs>")):
        if len(path.parts) > 2:
            pairs.setdefault(str(path), stand_in)
    home = Path.home()
    if len(home.parts) > 1:
        pairs.setdefault(str(home), "~")
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def private_strings(run_root: Path) -> list[str]:
    """The local paths ``scrub_pairs`` names: none may appear in the dataset folder."""
    return [path for path, _ in scrub_pairs(run_root)]


def check_folder_clean(folder: Path, forbidden: Iterable[str]) -> None:
    """Refuse a folder whose text files (card, recipe, manifest) hold a local path or token."""
    needles = [s.encode() for s in forbidden]
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix not in (".md", ".json", ".yaml", ".yml", ".txt"):
            continue
        data = path.read_bytes()
        rel = path.relative_to(folder).as_posix()
        for needle in needles:
            if needle in data:
                raise AssembleError(f"{rel} contains the local path {needle.decode()}")
        if HF_TOKEN_RE.search(data):
            raise AssembleError(f"{rel} contains what looks like a Hugging Face token")


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
) -> Path:
    """Assemble the run's finished shards into ``out`` (default ``run_dir/dataset``).

    ``personas`` maps each pool the run used (see ``used_pools``) to its personas (``Persona``
    records or dicts); without it, the discussion participants stand in. ``agreement`` is the
    annotation step's ``{dimension: {"alpha", "level", "n_items"}}``; ``source_files`` the
    recipe's referenced files (relative path -> sha256), recorded in the manifest; ``repo`` the
    Hub repo the card's examples load from. Returns the dataset folder.
    """
    from .card import render_card  # the card is the last step of assembly

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
    by_config = {
        k: datasets.Features.from_arrow_schema(s).arrow_schema
        for k, s in config_schemas(factors).items()
    }
    max_rows = recipe.output.max_rows_per_file
    scrub = scrub_pairs(store.root)

    dest.parent.mkdir(parents=True, exist_ok=True)
    _cleanup_stale(dest.parent, dest.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        disc_paths = [p["discussions"] for _, p in sorted(discuss.items()) if "discussions" in p]
        comm_paths = [p["comments"] for _, p in sorted(discuss.items()) if "comments" in p]
        ann_paths = [p["annotations"] for _, p in sorted(annotate.items()) if "annotations" in p]
        dims = {
            d: dim.labels
            for d, dim in (recipe.annotation.dimensions.items() if recipe.annotation else [])
        }
        stats = StatsCollector(factors, dims)
        written: dict[str, ConfigFiles] = {}

        w_disc = _ConfigWriter(
            tmp, "discussions", by_config["discussions"], _rows_in(disc_paths), max_rows
        )
        w_comm = _ConfigWriter(
            tmp, "comments", by_config["comments"], _rows_in(comm_paths), max_rows
        )
        for shard in sorted(discuss):
            paths = discuss[shard]
            cells: dict[str, tuple[str, tuple[str, ...]]] = {}
            ids: list[str] = []
            if "discussions" in paths:
                for batch in _read_batches(paths["discussions"], by_config["discussions"], scrub):
                    cells.update(stats.add_discussions(pa.Table.from_batches([batch])))
                    ids.extend(batch.column("discussion_id").to_pylist())
                    w_disc.write(batch)
            counts: Counter[str] = Counter()
            if "comments" in paths:
                for batch in _read_batches(paths["comments"], by_config["comments"], scrub):
                    stats.add_comments(batch, cells, counts)
                    w_comm.write(batch)
            if "events" in paths:
                for batch in _read_batches(paths["events"], schemas.EVENTS, scrub):
                    stats.add_events(batch)
            stats.end_shard(ids, counts)
        written["discussions"] = w_disc.close()
        written["comments"] = w_comm.close()

        if ann_paths:
            w_ann = _ConfigWriter(
                tmp, "annotations", by_config["annotations"], _rows_in(ann_paths), max_rows
            )
            global_cells: dict[str, tuple[str, tuple[str, ...]]] | None = None
            for shard in sorted(annotate):
                if "annotations" not in annotate[shard]:
                    continue
                # Annotation shards cover the discussions of the discuss shard with their number;
                # a global map is built only if that ever fails to hold.
                cells = _cell_map(discuss.get(shard, {}).get("discussions"), factors)
                for batch in _read_batches(
                    annotate[shard]["annotations"], by_config["annotations"], scrub
                ):
                    ids_here = set(batch.column("discussion_id").to_pylist())
                    if not ids_here <= cells.keys():
                        if global_cells is None:
                            global_cells = {}
                            for p in disc_paths:
                                global_cells.update(_cell_map(p, factors))
                        cells = global_cells
                    stats.add_annotations(batch, cells)
                    w_ann.write(batch)
            written["annotations"] = w_ann.close()

        pool = recipe.discussion.persona_pool
        rows = _persona_rows(personas, pool, disc_paths)
        w_per = _ConfigWriter(tmp, "personas", by_config["personas"], len(rows), max_rows)
        for start in range(0, len(rows), READ_BATCH_ROWS):
            w_per.write(
                pa.RecordBatch.from_pylist(
                    rows[start : start + READ_BATCH_ROWS], schema=by_config["personas"]
                )
            )
        written["personas"] = w_per.close()

        stats_dict = stats.to_dict()
        manifest = build_manifest(
            recipe,
            fingerprint,
            store,
            written,
            stats_dict,
            agreement,
            tmp,
            repo=repo,
            source_files=source_files,
        )
        (tmp / META_DIR).mkdir(parents=True, exist_ok=True)
        (tmp / RECIPE_COPY).write_text(
            dump_yaml(portable_recipe(raw_recipe)),
            encoding="utf-8",
        )
        (tmp / MANIFEST).write_text(
            json.dumps(manifest, indent=1, sort_keys=False, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        existing = dest / "README.md"
        render_card(
            tmp,
            recipe,
            raw_recipe,
            fingerprint,
            stats_dict,
            manifest=manifest,
            agreement=agreement,
            existing_readme=existing.read_text(encoding="utf-8") if existing.exists() else None,
            repo=repo,
        )
        check_folder_clean(tmp, private_strings(store.root))
        _fsync_tree(tmp)
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def build_manifest(
    recipe: Recipe,
    fingerprint: str,
    store: RunStore,
    written: Mapping[str, ConfigFiles],
    stats: dict[str, Any],
    agreement: Mapping[str, Mapping[str, Any]] | None,
    folder: Path,
    *,
    repo: str | None = None,
    source_files: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The manifest: everything needed to check and re-render the dataset without the run."""
    configs = {name: written[name].to_dict() for name in CONFIGS if name in written}
    files = {rel: sha256_file(folder / rel) for name in configs for rel in written[name].files}
    shards = {
        stage: [
            {
                "shard": i.shard,
                "files": dict(sorted(i.files.items())),
                "counts": dict(sorted(i.counts.items())),
                "members": len(i.members),
            }
            for i in store.done_shards(stage)
        ]
        for stage in ("discuss", "annotate")
    }
    return {
        "format": MANIFEST_FORMAT,
        "name": recipe.name,
        "version": recipe.version,
        "fingerprint": fingerprint,
        "versions": package_versions(),
        "models": _models_manifest(recipe, stats["models_seen"]),
        "counts": {name: c["num_examples"] for name, c in configs.items()},
        "configs": configs,
        "files": files,
        "shards": shards,
        "source_files": {portable_model_id(k): v for k, v in sorted((source_files or {}).items())},
        "failures": stats["failures"],
        "agreement": {k: dict(v) for k, v in sorted((agreement or {}).items())} or None,
        "repo": repo,
        "recipe": portable_recipe(recipe.model_dump(mode="json")),
        "stats": stats,
    }


def read_manifest(dataset_dir: Path) -> dict[str, Any]:
    """The manifest of an assembled folder (``AssembleError`` when it has none)."""
    path = Path(dataset_dir) / MANIFEST
    if not path.exists():
        raise AssembleError(f"{MANIFEST} not found in the dataset folder: assemble the run first")
    return json.loads(path.read_text(encoding="utf-8"))
