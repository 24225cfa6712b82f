"""Building shard tables from row dicts: the same table pyarrow's from_pylist gives."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pytest

from synth_disco.store import schemas


def sample(t: pa.DataType, i: int):
    """A value of type ``t`` (None for some rows), with characters JSON must escape."""
    if i % 4 == 3:
        return None
    if pa.types.is_string(t):
        return ["plain", 'caf\u00e9 "quoted"\nnew line \\ back', "\u4e2d\u6587 \U0001f600", ""][
            i % 4
        ]
    if pa.types.is_integer(t):
        return [0, -7, 2**31 - 1 if t.bit_width == 32 else 2**62][i % 3]
    if pa.types.is_floating(t):
        return [0.1, 1.0, 1e-300][i % 3]
    if pa.types.is_boolean(t):
        return bool(i % 2)
    if pa.types.is_list(t):
        return [sample(t.value_type, i + k) for k in range(i % 3)]
    if pa.types.is_struct(t):
        return {t.field(k).name: sample(t.field(k).type, i + k) for k in range(t.num_fields)}
    raise AssertionError(f"no sample for {t}")


SCHEMAS = {
    "discussions": schemas.discussions_schema(["moderation", "turn_order"]),
    "comments": schemas.COMMENTS,
    "events": schemas.EVENTS,
    "annotations": schemas.ANNOTATIONS,
    "personas": schemas.PERSONAS,
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_from_rows_equals_from_pylist(name: str) -> None:
    schema = SCHEMAS[name]
    rows = [{f.name: sample(f.type, i) for f in schema} | {"not_a_column": i} for i in range(9)]
    got = schemas.from_rows(rows, schema)
    assert got.schema == schema
    assert got.equals(pa.Table.from_pylist(rows, schema=schema))
    assert got.to_pylist() == pa.Table.from_pylist(rows, schema=schema).to_pylist()
    empty = schemas.from_rows([], schema)
    assert empty.num_rows == 0 and empty.schema == schema


def test_shard_tables_are_built_and_read_without_pandas(tmp_path) -> None:
    # A run worker never needs pandas; importing it costs ~50 MiB of resident memory.
    code = f"""
import sys
from synth_disco.store import schemas
from synth_disco.store.run_dir import RunStore
store = RunStore({str(tmp_path)!r})
t = schemas.from_rows([{{"discussion_id": "d", "comment_id": "c", "index": 0}}], schemas.COMMENTS)
store.finish_shard("discuss", 0, {{"comments": t, "events": schemas.from_rows([], schemas.EVENTS)}}, {{}}, members=["d"])
assert store.read_shard("discuss", 0, "comments").to_pylist()[0]["comment_id"] == "c"
print("pandas" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
