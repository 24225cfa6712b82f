"""The dataset's tables shaped for analysis: what assembly does to the shard rows on the way.

A researcher's first plot should need no join and no parsing, so the published tables differ
from the shard tables in a few ways, all decided here:

- **Design columns.** ``comments``, ``events``, ``annotations`` and ``aggregates`` carry their
  discussion's ``cell_id``, one column per factor and ``replicate`` (typed as in
  ``discussions``), right after ``discussion_id``: ``annotations.groupby("moderation")``
  works as loaded.
- **Typed labels.** ``label`` is a number: the value of a scale of integers (``toxicity``
  1-5 gives 1-5), else the label's position in its dimension's list (0, 1, ...), so a mean
  over a scale is its mean. ``label_text`` keeps the label as the annotator gave it, and
  ``scores`` the full distribution. Each dimension also gets a column of its own, set on its
  rows: an integer for a scale of integers, a ``ClassLabel`` (names = the labels) otherwise.
  ``aggregates.majority`` is coded like ``label``.
- **Typed persona attributes.** An attribute every persona of a pool has becomes a column of
  ``personas``, typed from its values (an integer when they all are, like ``age``; a float;
  else a string); pools where it is missing for someone get nulls. ``fields``, the key/value
  list, keeps every attribute as the source gave it.
- **One type per column name.** A column name means the same type in every config (a test
  checks it): ``index`` is int64 everywhere, ``replicate`` int32, token counts int64.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import datasets
import pyarrow as pa

from synth_disco.recipe.schema import AnnotationConfig
from synth_disco.store import schemas

# discussion_id -> (cell_id, factor levels in factor order, replicate)
DesignMap = dict[str, tuple[str, tuple[str | None, ...], int]]

PERSONA_BASE = frozenset(schemas.PERSONAS.names)
_INT = re.compile(r"[+-]?\d{1,18}")


# -- labels ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelCoding:
    """How one dimension's labels are published: its scale values, or positions in a
    ``ClassLabel``."""

    labels: tuple[str, ...]
    integer_scale: bool  # a scale whose labels are all integers: the value is the label

    def code(self, label: str | None) -> int | None:
        """``label`` as a number (None for a missing or unknown label)."""
        if label is None or label not in self.labels:
            return None
        return int(label) if self.integer_scale else self.labels.index(label)

    @property
    def feature(self) -> datasets.Value | datasets.ClassLabel:
        if self.integer_scale:
            return datasets.Value("int64")
        return datasets.ClassLabel(names=list(self.labels))


def label_codings(cfg: AnnotationConfig | None) -> dict[str, LabelCoding]:
    """Each annotation dimension's coding, in recipe order."""
    if cfg is None:
        return {}
    return {
        name: LabelCoding(
            tuple(dim.labels),
            dim.scale is not None and all(_INT.fullmatch(x) for x in dim.labels),
        )
        for name, dim in cfg.dimensions.items()
    }


# -- schemas ---------------------------------------------------------------------------------


def config_features(
    factors: list[str],
    codings: Mapping[str, LabelCoding],
    persona_columns: Mapping[str, pa.DataType],
) -> dict[str, datasets.Features]:
    """The ``datasets`` features of every config, in config order (see the module doc)."""
    design = lambda schema: schemas.with_design(schema, factors)  # noqa: E731
    arrow = {
        "discussions": schemas.discussions_schema(factors),
        "comments": design(schemas.COMMENTS),
        "events": design(schemas.EVENTS),
        "annotations": design(schemas.published_annotations({d: pa.int64() for d in codings})),
        "aggregates": design(schemas.AGGREGATES),
        "agreement": schemas.AGREEMENT,
        "prompts": schemas.PROMPTS,
        "personas": pa.schema(
            [*schemas.PERSONAS, *(pa.field(k, t) for k, t in persona_columns.items())]
        ),
    }
    out = {name: datasets.Features.from_arrow_schema(s) for name, s in arrow.items()}
    for dim, coding in codings.items():
        out["annotations"][dim] = coding.feature
    return out


# -- design columns --------------------------------------------------------------------------


def design_map(discussions: pa.Table, factors: list[str]) -> DesignMap:
    """discussion_id -> its design columns, from rows of the discussions table."""
    cols = discussions.select(["discussion_id", "cell_id", "replicate", *factors]).to_pydict()
    levels = list(zip(*(cols[f] for f in factors), strict=True)) if factors else None
    return {
        d: (c, levels[i] if levels else (), r)
        for i, (d, c, r) in enumerate(
            zip(cols["discussion_id"], cols["cell_id"], cols["replicate"], strict=True)
        )
    }


def _design_columns(
    ids: list[str],
    design: Mapping[str, tuple[str, tuple[str | None, ...], int]],
    factors: list[str],
) -> dict[str, pa.Array]:
    found = [design.get(d) for d in ids]
    out = {"cell_id": pa.array([x[0] if x else None for x in found], pa.string())}
    for i, f in enumerate(factors):
        out[f] = pa.array([x[1][i] if x else None for x in found], pa.string())
    out["replicate"] = pa.array([x[2] if x else None for x in found], pa.int32())
    return out


def _assemble(batch: pa.RecordBatch, columns: Mapping[str, pa.Array], schema: pa.Schema):
    """A batch of ``schema``: ``columns`` where given, the batch's own columns otherwise."""
    arrays = [
        columns[f.name] if f.name in columns else batch.column(f.name).cast(f.type) for f in schema
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def with_design(
    batch: pa.RecordBatch, design: Mapping[str, Any], factors: list[str], schema: pa.Schema
) -> pa.RecordBatch:
    """``batch`` as a batch of ``schema``: its columns, plus its discussions' design columns
    (null for a discussion not in ``design``)."""
    ids = batch.column("discussion_id").to_pylist()
    return _assemble(batch, _design_columns(ids, design, factors), schema)


def coded_annotations(
    batch: pa.RecordBatch,
    design: Mapping[str, Any],
    factors: list[str],
    codings: Mapping[str, LabelCoding],
    schema: pa.Schema,
) -> pa.RecordBatch:
    """Shard annotations as published: design columns, ``label`` coded, ``label_text`` as
    given, and one typed column per dimension."""
    dims = batch.column("dimension").to_pylist()
    labels = batch.column("label").to_pylist()
    codes = [
        codings[d].code(lab) if d in codings and lab is not None else None
        for d, lab in zip(dims, labels, strict=True)
    ]
    columns = _design_columns(batch.column("discussion_id").to_pylist(), design, factors)
    columns["label"] = pa.array(codes, pa.int64())
    columns["label_text"] = batch.column("label").cast(pa.string())
    for dim in codings:
        columns[dim] = pa.array(
            [c if d == dim else None for c, d in zip(codes, dims, strict=True)], pa.int64()
        )
    return _assemble(batch, columns, schema)


def coded_aggregates(
    batch: pa.RecordBatch,
    design: Mapping[str, Any],
    factors: list[str],
    codings: Mapping[str, LabelCoding],
    schema: pa.Schema,
) -> pa.RecordBatch:
    """Shard aggregates as published: design columns and ``majority`` coded like labels."""
    dims = batch.column("dimension").to_pylist()
    majority = batch.column("majority").to_pylist()
    columns = _design_columns(batch.column("discussion_id").to_pylist(), design, factors)
    columns["majority"] = pa.array(
        [codings[d].code(m) if d in codings else None for d, m in zip(dims, majority, strict=True)],
        pa.int64(),
    )
    columns["majority_text"] = batch.column("majority").cast(pa.string())
    return _assemble(batch, columns, schema)


def agreement_rows(agreement: Mapping[str, Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The ``agreement`` config: one row per dimension, from the run's agreement figures."""
    return [
        {"dimension": dim, **{k: v for k, v in figures.items() if k != "dimension"}}
        for dim, figures in (agreement or {}).items()
    ]


# -- personas --------------------------------------------------------------------------------


def _type_of(values: list[str]) -> pa.DataType:
    if all(_INT.fullmatch(v.strip()) for v in values):
        return pa.int64()
    try:
        for v in values:
            float(v)
    except ValueError:
        return pa.string()
    return pa.float64()


def _typed(value: str, type_: pa.DataType) -> Any:
    if pa.types.is_int64(type_):
        return int(value)
    if pa.types.is_float64(type_):
        return float(value)
    return value


def typed_personas(
    rows: Iterable[dict[str, Any]],
) -> tuple[dict[str, pa.DataType], list[dict[str, Any]]]:
    """(attribute column -> type, the rows with those columns set) for the ``personas``
    config: an attribute every persona of a pool has (non-empty) is a column, typed from its
    values; pools where some persona lacks it get nulls. ``fields`` stays as it was."""
    rows = list(rows)
    pools: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        attrs = {
            f["key"]: f["value"] for f in r.get("fields") or [] if f.get("value") not in (None, "")
        }
        pools.setdefault(r["pool"], []).append(attrs)
    consistent: dict[str, set[str]] = {}
    order: dict[str, None] = {}
    for pool, members in pools.items():
        keys = set(members[0]).intersection(*members[1:]) if members else set()
        consistent[pool] = {k for k in keys if k not in PERSONA_BASE}
        for m in members:
            order.update(dict.fromkeys(k for k in m if k in consistent[pool]))
    columns: dict[str, pa.DataType] = {}
    for key in order:
        values = [m[key] for pool, ms in pools.items() if key in consistent[pool] for m in ms]
        columns[key] = _type_of(values)
    typed = []
    for r in rows:
        attrs = {f["key"]: f["value"] for f in r.get("fields") or []}
        extra = {
            k: _typed(attrs[k], t) if k in consistent[r["pool"]] else None
            for k, t in columns.items()
        }
        typed.append({**r, **extra})
    return columns, typed
