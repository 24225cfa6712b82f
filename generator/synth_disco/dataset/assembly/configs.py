"""The published configs' arrow schemas, and the writer that streams one config's rows into
its parquet files.

A config's total row count is known before its first row (from the shard files' footers), so
every file gets its final ``-of-YYYYY`` name at once; rows are buffered up to one bounded row
group and written with the content-defined chunking ``datasets`` uses, so the same rows give
byte-identical files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from synth_disco.dataset.manifest import AssembleError, ConfigFiles, data_file
from synth_disco.dataset.tables import LabelCoding, config_features
from synth_disco.store import schemas as table_schemas

ROW_GROUP_ROWS = 10_000  # small enough for the Hub's viewer, large enough to compress well
ROW_GROUP_BYTES = 32 << 20  # the write buffer's bound, whatever the row size
# The same content-defined chunking `datasets` uses, so a new version that adds rows shares
# most of its bytes with the previous one on the Hub's deduplicating storage.
CDC_OPTIONS = {"min_chunk_size": 256 * 1024, "max_chunk_size": 1024 * 1024, "norm_level": 0}


def config_schemas(
    factors: list[str],
    codings: Mapping[str, LabelCoding] | None = None,
    persona_columns: Mapping[str, pa.DataType] | None = None,
) -> dict[str, pa.Schema]:
    """The arrow schema of every config (``tables.config_features``), with the ``datasets``
    features in its metadata (``ClassLabel`` columns included)."""
    discussions = table_schemas.discussions_schema(factors)
    clashes = sorted({n for n in discussions.names if discussions.names.count(n) > 1})
    if clashes:
        raise AssembleError(
            f"factor name(s) {', '.join(clashes)} clash with columns of the discussions table: "
            "rename the factor(s) in the recipe"
        )
    features = config_features(factors, codings or {}, persona_columns or {})
    return {name: f.arrow_schema for name, f in features.items()}


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
