"""The statistics an assembled dataset's card shows, folded shard by shard while assembling.

The state is aggregates keyed by cell, factor level and label (never by row), so peak memory
does not grow with the number of discussions; ``StatsCollector.to_dict`` gives the JSON the
manifest stores, from which the card and its figures are re-rendered without the rows.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Roles that are not generated (the original post and seed replies come from the post source).
SOURCE_ROLES = ("op", "seed")
# Words-per-comment histogram bins, lower edges; the last bin is open.
LENGTH_EDGES = (0, 10, 20, 40, 80, 160, 320)
LENGTH_LABELS = ("<10", "10-19", "20-39", "40-79", "80-159", "160-319", "320+")
MAX_FAILURE_EXAMPLES = 20


@dataclass
class _LevelStats:
    discussions: int = 0
    comments: int = 0
    words: int = 0
    lengths: list[int] = field(default_factory=lambda: [0] * len(LENGTH_LABELS))
    labels: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    quality: _QualityCounts = field(default_factory=lambda: _QualityCounts())


# The flag counted for "any flag" in the quality tables.
ANY_FLAG = "any"


@dataclass
class _QualityCounts:
    """Quality flags of generated comments: as published, and at each turn's first judged
    reply (before any regeneration), counted per flag and for "any flag"."""

    comments: int = 0
    published: Counter[str] = field(default_factory=Counter)
    first: Counter[str] = field(default_factory=Counter)

    def add(self, flags: list[str], first: list[str]) -> None:
        self.comments += 1
        self.published.update(flags)
        self.first.update(first)
        self.published[ANY_FLAG] += bool(flags)
        self.first[ANY_FLAG] += bool(first)

    def to_dict(self) -> dict[str, Any]:
        return {
            "comments": self.comments,
            "published": dict(sorted(self.published.items())),
            "first_attempt": dict(sorted(self.first.items())),
        }


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
        self.quality = _QualityCounts()
        self.regenerated = 0  # discarded replies ("regenerated" events)
        self.regenerated_turns = 0  # turns with at least one of them
        # (discussion_id, index) -> flags of the turn's first judged reply, for the shard
        # being folded (its events are read before its comments)
        self._first_flags: dict[tuple[str, int], tuple[int, list[str]]] = {}

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
        self._add_flags(gen, cells)
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

    def _add_flags(self, gen: pa.Table, cells: Mapping[str, tuple[str, tuple[str, ...]]]) -> None:
        """Count the quality flags of generated comments, overall and per factor level."""
        if "flags" not in gen.column_names:
            return
        for d, index, flags in zip(
            gen["discussion_id"].to_pylist(),
            gen["index"].to_pylist(),
            gen["flags"].to_pylist(),
            strict=True,
        ):
            flags = flags or []
            first = self._first_flags.get((d, index), (0, flags))[1]
            self.quality.add(flags, first)
            _, levels = cells.get(d, ("", ()))
            for f, level in zip(self.factors, levels, strict=False):
                self.levels[f].setdefault(level, _LevelStats()).quality.add(flags, first)

    def end_shard(self, discussion_ids: Iterable[str], counts: Counter[str]) -> None:
        """Fold one shard's comments-per-discussion counts (0 for silent discussions)."""
        self.regenerated_turns += len(self._first_flags)
        self._first_flags = {}
        pd = self.per_discussion
        for n in (counts.get(d, 0) for d in set(discussion_ids) | set(counts)):
            pd["n"] += 1
            pd["sum"] += n
            pd["min"] = n if pd["min"] is None else min(pd["min"], n)
            pd["max"] = n if pd["max"] is None else max(pd["max"], n)

    def add_events(self, batch: pa.RecordBatch) -> None:
        """One batch of events; a shard's events are folded before its comments, so that each
        regenerated turn's first reply is known when its comment is counted."""
        kinds = batch.column("kind")
        self.events.update(_value_counts(kinds))
        if "flags" not in batch.schema.names:
            return
        regen = pa.Table.from_batches([batch]).filter(
            pc.fill_null(pc.equal(kinds, "regenerated"), False)
        )
        self.regenerated += regen.num_rows
        for d, index, attempt, flags in zip(
            regen["discussion_id"].to_pylist(),
            regen["index"].to_pylist(),
            regen["attempt"].to_pylist(),
            regen["flags"].to_pylist(),
            strict=True,
        ):
            key = (d, index)
            if key not in self._first_flags or attempt < self._first_flags[key][0]:
                self._first_flags[key] = (attempt, flags or [])

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
                    "quality": s.quality.to_dict(),
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
            "quality": {
                **self.quality.to_dict(),
                "regenerated_turns": self.regenerated_turns,
                "regenerated_replies": self.regenerated,
            },
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


def quality_summary(stats: Mapping[str, Any]) -> str | None:
    """One line with each quality flag's share of the generated comments (flags never raised
    left out), for the build's summary; None when nothing was generated."""
    q = stats.get("quality")
    if not q or not q["comments"]:
        return None
    n = q["comments"]
    regenerated = q.get("regenerated_replies", 0) > 0

    def share(flag: str) -> str:
        now = f"{q['published'].get(flag, 0) / n:.1%}"
        return f"{q['first_attempt'].get(flag, 0) / n:.1%} -> {now}" if regenerated else now

    raised = [f for f in q["first_attempt"] if f != ANY_FLAG and q["first_attempt"][f]]
    parts = [f"{f} {share(f)}" for f in raised] or ["none raised"]
    line = f"quality flags (share of {n:,} generated comments): any {share(ANY_FLAG)}"
    if raised:
        line += "; " + ", ".join(parts)
    if regenerated:
        line += f" ({q['regenerated_replies']:,} replies regenerated; before -> published)"
    return line
