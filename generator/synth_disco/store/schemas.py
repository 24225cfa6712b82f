"""Column types of every table synth-disco writes, in one place.

The run store writes shards with these schemas and the dataset step turns them into
``datasets.Features``; keeping them here means a shard written today assembles tomorrow.
Factor columns are per recipe, so the discussions and plan schemas are built from the factor
names (and the recipe checker refuses factors named like one of their other columns).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json

PERSONA = pa.struct(
    [
        ("id", pa.string()),
        ("name", pa.string()),
        ("description", pa.string()),
        ("fields", pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))),
    ]
)

PARTICIPANT = pa.struct(
    [
        ("name", pa.string()),
        ("persona", PERSONA),
        ("variant", pa.string()),
        ("instructions", pa.string()),
    ]
)

SEED_COMMENT = pa.struct([("author", pa.string()), ("text", pa.string())])

MODERATOR = pa.struct(
    [
        ("name", pa.string()),
        ("policy", pa.string()),
        ("k", pa.int32()),
        ("instructions", pa.string()),
        ("model", pa.string()),
    ]
)


def _cell_columns(factors: list[str]) -> list[tuple[str, pa.DataType]]:
    """The columns that place a discussion in the design: the plan and the discussions table
    start with them, so a plan row and its discussion join on every one."""
    return [
        ("discussion_id", pa.string()),
        ("index", pa.int64()),
        ("cell_id", pa.string()),
        *[(f, pa.string()) for f in factors],
        ("replicate", pa.int32()),
        ("seed", pa.int64()),
    ]


def discussions_schema(factors: list[str]) -> pa.Schema:
    """One row per discussion; one string column per factor, named after it."""
    return pa.schema(
        [
            *_cell_columns(factors),
            ("post_id", pa.string()),
            ("title", pa.string()),
            ("op", pa.string()),
            ("op_author", pa.string()),
            ("seed_comments", pa.list_(SEED_COMMENT)),
            ("participants", pa.list_(PARTICIPANT)),
            ("moderator", MODERATOR),
            ("turn_policy", pa.string()),
            ("turns", pa.int32()),
            ("context_window", pa.int32()),
            ("model", pa.string()),
            ("model_revision", pa.string()),
            ("generation", pa.string()),  # decoding parameters, as compact JSON for the card
            ("status", pa.string()),  # "ok" | "failed"
            ("error", pa.string()),
            ("n_comments", pa.int32()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
        ]
    )


def plan_schema(factors: list[str]) -> pa.Schema:
    """plan.parquet: one row per planned discussion; one string column per factor."""
    return pa.schema(
        [
            *_cell_columns(factors),
            ("shard", pa.int32()),
            ("post_id", pa.string()),
            ("participants", pa.list_(pa.string())),
            ("variants", pa.list_(pa.string())),
            ("n_participants", pa.int32()),
            ("config_json", pa.string()),
        ]
    )


COMMENTS = pa.schema(
    [
        ("discussion_id", pa.string()),
        ("comment_id", pa.string()),
        ("index", pa.int32()),
        ("parent_id", pa.string()),
        ("author", pa.string()),
        ("role", pa.string()),
        ("persona_id", pa.string()),
        ("variant", pa.string()),
        ("text", pa.string()),
        ("raw_text", pa.string()),
        ("model", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("finish_reason", pa.string()),
        ("attempts", pa.int32()),
        ("flags", pa.list_(pa.string())),  # quality flags, sorted (discussion/quality.py)
    ]
)

EVENTS = pa.schema(
    [
        ("discussion_id", pa.string()),
        ("index", pa.int32()),
        ("kind", pa.string()),
        ("author", pa.string()),
        ("detail", pa.string()),
        ("raw_text", pa.string()),
        ("attempt", pa.int32()),
        ("flags", pa.list_(pa.string())),
    ]
)

ANNOTATIONS = pa.schema(
    [
        ("comment_id", pa.string()),
        ("discussion_id", pa.string()),
        ("annotator_id", pa.string()),
        ("annotator_persona", pa.string()),
        ("dimension", pa.string()),
        ("label", pa.string()),
        ("scores", pa.list_(pa.struct([("label", pa.string()), ("prob", pa.float64())]))),
        ("method", pa.string()),
        ("raw_text", pa.string()),
        ("model", pa.string()),
        ("status", pa.string()),
        ("attempts", pa.int32()),
    ]
)

PERSONAS = pa.schema(
    [
        ("pool", pa.string()),
        ("id", pa.string()),
        ("name", pa.string()),
        ("description", pa.string()),
        ("fields", PERSONA.field("fields").type),
    ]
)


def from_rows(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """A table of ``schema`` from row dicts, as ``pa.Table.from_pylist`` gives it.

    Built through Arrow's JSON reader: converting Python objects with ``pa.array`` (which
    ``from_pylist`` does) imports pandas when it is installed, ~50 MiB of a run worker's
    memory for nothing. Keys outside the schema are ignored, missing ones are null.
    """
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if not data:
        return pa.Table.from_batches([], schema=schema)  # (empty_table imports pandas)
    table = pa_json.read_json(
        io.BytesIO(data),
        read_options=pa_json.ReadOptions(use_threads=False, block_size=len(data) + 1),
        parse_options=pa_json.ParseOptions(
            explicit_schema=schema, unexpected_field_behavior="ignore"
        ),
    )
    return table.select(schema.names)
