"""Shard files read back batch by batch: conformed to the config's schema, their model ids
free of local paths, and the run's local paths scrubbed from error messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synth_disco.dataset.manifest import AssembleError
from synth_disco.dataset.portable import portable_model_id

READ_BATCH_ROWS = 4096


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
