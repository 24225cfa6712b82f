"""Assembly of a run's finished shards into a Hub-layout dataset folder (see ``manifest.py``
for the layout).

Assembly streams: shard files are read record batch by record batch and written through
``pyarrow.parquet.ParquetWriter`` with a bounded buffer, and the statistics the card needs are
folded into aggregates as the rows pass (``stats.py``), so peak memory does not grow with the
number of discussions. The folder, card included, is built next to its destination, checked for
leaks and swapped in at the end, so an interruption never leaves half a dataset and a refused
folder never replaces a good one. The same shards give byte-identical files (no timestamps,
deterministic row groups).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synth_disco.dataset.card import render_card
from synth_disco.dataset.manifest import (
    MANIFEST,
    META_DIR,
    RECIPE_COPY,
    AssembleError,
    ConfigFiles,
    build_manifest,
    data_file,
    dump_yaml,
)
from synth_disco.dataset.portable import LeakScan, portable_model_id, portable_recipe, scrub_pairs
from synth_disco.dataset.stats import StatsCollector
from synth_disco.recipe.schema import Recipe
from synth_disco.store import schemas as table_schemas
from synth_disco.store.files import fsync_dir, sha256_file
from synth_disco.store.run_dir import RunStore

READ_BATCH_ROWS = 4096
ROW_GROUP_ROWS = 10_000  # small enough for the Hub's viewer, large enough to compress well
ROW_GROUP_BYTES = 32 << 20  # the write buffer's bound, whatever the row size
# The same content-defined chunking `datasets` uses, so a new version that adds rows shares
# most of its bytes with the previous one on the Hub's deduplicating storage.
CDC_OPTIONS = {"min_chunk_size": 256 * 1024, "max_chunk_size": 1024 * 1024, "norm_level": 0}

# -- schemas ---------------------------------------------------------------------------------


def config_schemas(factors: list[str]) -> dict[str, pa.Schema]:
    """The arrow schema of every config, from ``store/schemas.py``."""
    discussions = table_schemas.discussions_schema(factors)
    clashes = sorted({n for n in discussions.names if discussions.names.count(n) > 1})
    if clashes:
        raise AssembleError(
            f"factor name(s) {', '.join(clashes)} clash with columns of the discussions table: "
            "rename the factor(s) in the recipe"
        )
    return {
        "discussions": discussions,
        "comments": table_schemas.COMMENTS,
        "events": table_schemas.EVENTS,
        "annotations": table_schemas.ANNOTATIONS,
        "personas": table_schemas.PERSONAS,
    }


# -- writing ---------------------------------------------------------------------------------


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


def _write_discuss(
    tmp: Path,
    discuss: Mapping[int, Mapping[str, Path]],
    schemas: Mapping[str, pa.Schema],
    stats: StatsCollector,
    max_rows: int,
    scrub: Sequence[tuple[str, str]],
) -> list[ConfigFiles]:
    """The discussions, comments and events configs, shard by shard, folding their
    statistics."""
    disc_paths = [p["discussions"] for _, p in sorted(discuss.items()) if "discussions" in p]
    comm_paths = [p["comments"] for _, p in sorted(discuss.items()) if "comments" in p]
    w_disc = _ConfigWriter(
        tmp, "discussions", schemas["discussions"], _rows_in(disc_paths), max_rows
    )
    w_comm = _ConfigWriter(tmp, "comments", schemas["comments"], _rows_in(comm_paths), max_rows)
    event_paths = [p["events"] for _, p in sorted(discuss.items()) if "events" in p]
    w_events = _ConfigWriter(tmp, "events", schemas["events"], _rows_in(event_paths), max_rows)
    for shard in sorted(discuss):
        paths = discuss[shard]
        cells: dict[str, tuple[str, tuple[str, ...]]] = {}
        ids: list[str] = []
        if "discussions" in paths:
            for batch in _read_batches(paths["discussions"], schemas["discussions"], scrub):
                cells.update(stats.add_discussions(pa.Table.from_batches([batch])))
                ids.extend(batch.column("discussion_id").to_pylist())
                w_disc.write(batch)
        if "events" in paths:  # before the comments: see StatsCollector.add_events
            for batch in _read_batches(paths["events"], schemas["events"], scrub):
                stats.add_events(batch)
                w_events.write(batch)
        counts: Counter[str] = Counter()
        if "comments" in paths:
            for batch in _read_batches(paths["comments"], schemas["comments"], scrub):
                stats.add_comments(batch, cells, counts)
                w_comm.write(batch)
        stats.end_shard(ids, counts)
    return [w_disc.close(), w_comm.close(), w_events.close()]


def _write_annotations(
    tmp: Path,
    annotate: Mapping[int, Mapping[str, Path]],
    discuss: Mapping[int, Mapping[str, Path]],
    schema: pa.Schema,
    stats: StatsCollector,
    max_rows: int,
    scrub: Sequence[tuple[str, str]],
) -> ConfigFiles:
    """The annotations config; each label is counted under its discussion's factor levels."""
    factors = stats.factors
    ann_paths = [p["annotations"] for _, p in sorted(annotate.items()) if "annotations" in p]
    w_ann = _ConfigWriter(tmp, "annotations", schema, _rows_in(ann_paths), max_rows)
    global_cells: dict[str, tuple[str, tuple[str, ...]]] | None = None
    for shard in sorted(annotate):
        if "annotations" not in annotate[shard]:
            continue
        # Annotation shards cover the discussions of the discuss shard with their number;
        # a global map is built only if that ever fails to hold.
        cells = _cell_map(discuss.get(shard, {}).get("discussions"), factors)
        for batch in _read_batches(annotate[shard]["annotations"], schema, scrub):
            ids_here = set(batch.column("discussion_id").to_pylist())
            if not ids_here <= cells.keys():
                if global_cells is None:
                    global_cells = {}
                    for _, p in sorted(discuss.items()):
                        if "discussions" in p:
                            global_cells.update(_cell_map(p["discussions"], factors))
                cells = global_cells
            stats.add_annotations(batch, cells)
            w_ann.write(batch)
    return w_ann.close()


def _write_personas(
    tmp: Path, rows: list[dict[str, Any]], schema: pa.Schema, max_rows: int
) -> ConfigFiles:
    w_per = _ConfigWriter(tmp, "personas", schema, len(rows), max_rows)
    for start in range(0, len(rows), READ_BATCH_ROWS):
        w_per.write(
            pa.RecordBatch.from_pylist(rows[start : start + READ_BATCH_ROWS], schema=schema)
        )
    return w_per.close()


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
    """Assemble the run's finished shards, and its card, into ``out`` (default
    ``run_dir/dataset``).

    ``personas`` maps each pool the run used (see ``manifest.used_pools``) to its personas
    (``Persona`` records or dicts); without it, the discussion participants stand in.
    ``agreement`` is the annotation step's ``{dimension: {"alpha", "level", "n_items"}}``;
    ``source_files`` the recipe's referenced files (relative path -> sha256), recorded in the
    manifest; ``repo`` the Hub repo the card's examples load from. Returns the dataset folder.
    """
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
    schemas = {
        k: datasets.Features.from_arrow_schema(s).arrow_schema
        for k, s in config_schemas(factors).items()
    }
    max_rows = recipe.output.max_rows_per_file
    scrub = scrub_pairs(store.root)
    dims = {
        d: dim.labels
        for d, dim in (recipe.annotation.dimensions.items() if recipe.annotation else [])
    }

    dest.parent.mkdir(parents=True, exist_ok=True)
    _cleanup_stale(dest.parent, dest.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        stats = StatsCollector(factors, dims)
        written = _write_discuss(tmp, discuss, schemas, stats, max_rows, scrub)
        if any("annotations" in p for p in annotate.values()):
            written.append(
                _write_annotations(
                    tmp, annotate, discuss, schemas["annotations"], stats, max_rows, scrub
                )
            )
        disc_paths = [p["discussions"] for _, p in sorted(discuss.items()) if "discussions" in p]
        rows = _persona_rows(personas, recipe.discussion.persona_pool, disc_paths)
        written.append(_write_personas(tmp, rows, schemas["personas"], max_rows))

        stats_dict = stats.to_dict()
        manifest = build_manifest(
            recipe,
            fingerprint,
            store,
            {c.name: c for c in written},
            stats_dict,
            agreement,
            tmp,
            repo=repo,
            source_files=source_files,
        )
        (tmp / META_DIR).mkdir(parents=True, exist_ok=True)
        (tmp / RECIPE_COPY).write_text(dump_yaml(portable_recipe(raw_recipe)), encoding="utf-8")
        (tmp / MANIFEST).write_text(
            json.dumps(manifest, indent=1, sort_keys=False, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        existing = dest / "README.md"
        render_card(
            tmp,
            recipe,
            fingerprint,
            stats_dict,
            manifest=manifest,
            agreement=agreement,
            existing_readme=existing.read_text(encoding="utf-8") if existing.exists() else None,
            repo=repo,
        )
        leak = LeakScan.around(store.root).find_in_folder(tmp)
        if leak is not None:
            raise AssembleError(f"{leak[0]}: contains {leak[1]}; refusing to publish it")
        _fsync_tree(tmp)
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
