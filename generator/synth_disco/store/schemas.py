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


# The discussions columns of a deliberation structure: how it ran and what it concluded.
STRUCTURE_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("structure", pa.string()),  # forum | ensemble | chain | debate | graph
    ("task", pa.string()),  # the task the agents answered (rendered)
    ("orders", pa.list_(pa.list_(pa.int32()))),  # per cycle: the agents' slots in answer order
    ("final_response", pa.string()),  # the combiner's response
    ("moderator_instructions", pa.string()),  # the combiner's instructions (`auto`: written)
]


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
            # Deliberation structures (issue 14); a forum thread has structure "forum" only.
            *STRUCTURE_COLUMNS,
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
        ("index", pa.int64()),
        ("parent_id", pa.string()),
        ("author", pa.string()),
        ("role", pa.string()),
        ("persona_id", pa.string()),
        ("variant", pa.string()),
        ("text", pa.string()),
        ("raw_text", pa.string()),
        ("model", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("finish_reason", pa.string()),
        ("attempts", pa.int32()),
        # Deliberation structures (issue 14): a forum comment has no cycle or position, and
        # its parent_ids is [parent_id].
        ("cycle", pa.int32()),
        ("position", pa.int32()),
        ("parent_ids", pa.list_(pa.string())),
        ("flags", pa.list_(pa.string())),  # quality flags, sorted (discussion/quality/)
        ("prompt_id", pa.string()),  # -> PROMPTS
    ]
)

EVENTS = pa.schema(
    [
        ("discussion_id", pa.string()),
        ("index", pa.int64()),
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
        ("prompt_id", pa.string()),  # -> PROMPTS
    ]
)

# One row per distinct prompt (records.Prompt): comments and labels point at it by prompt_id.
PROMPTS = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("role", pa.string()),
        ("system", pa.string()),
        ("templates", pa.list_(pa.struct([("name", pa.string()), ("text", pa.string())]))),
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


# -- published tables (the dataset's configs) beyond the shard tables above -------------------

# Per (comment, dimension): the labels it got, aggregated (annotation/aggregate.py). ``majority``
# is coded like the annotations' ``label`` (the scale value, or the label's position).
AGGREGATES = pa.schema(
    [
        ("comment_id", pa.string()),
        ("discussion_id", pa.string()),
        ("dimension", pa.string()),
        ("mean", pa.float64()),
        ("majority", pa.int64()),
        ("majority_text", pa.string()),
        ("majority_share", pa.float64()),
        ("n", pa.int64()),
    ]
)

# Per dimension: Krippendorff's alpha with its bootstrap 95% interval (annotation/agreement.py).
AGREEMENT = pa.schema(
    [
        ("dimension", pa.string()),
        ("level", pa.string()),
        ("alpha", pa.float64()),
        ("alpha_low", pa.float64()),
        ("alpha_high", pa.float64()),
        ("n_items", pa.int32()),  # int32 like the discussions table's n_comments
        ("n_comments", pa.int32()),
        ("n_labels", pa.int32()),
        ("n_annotators", pa.int32()),
    ]
)

# The columns that place a row in the design, added to every per-discussion table of the
# dataset (comments, events, annotations, aggregates) after its discussion_id.
DESIGN_COLUMNS = ("cell_id", "replicate")


def with_design(schema: pa.Schema, factors: list[str]) -> pa.Schema:
    """``schema`` with ``cell_id``, one string column per factor and ``replicate`` right after
    its ``discussion_id``, typed as in the discussions table: analysis needs no join."""
    design = [f for f in _cell_columns(factors) if f[0] in ("cell_id", "replicate", *factors)]
    fields = []
    for f in schema:
        fields.append(f)
        if f.name == "discussion_id":
            fields.extend(pa.field(name, type_) for name, type_ in design)
    return pa.schema(fields)


def published_annotations(dimension_types: dict[str, pa.DataType]) -> pa.Schema:
    """The annotations table as published: ``label`` as a number (a scale's value, or the
    label's position in its dimension) and ``label_text`` as given, and one column per
    dimension holding its label typed (set on that dimension's rows only)."""
    fields = []
    for f in ANNOTATIONS:
        if f.name == "label":
            fields += [pa.field("label", pa.int64()), pa.field("label_text", pa.string())]
            fields += [pa.field(d, t) for d, t in dimension_types.items()]
        else:
            fields.append(f)
    return pa.schema(fields)


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
