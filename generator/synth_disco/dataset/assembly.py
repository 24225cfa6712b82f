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

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synth_disco.annotation.aggregate import AGGREGATE
from synth_disco.dataset.bundle import Bundle, write_bundle
from synth_disco.dataset.card.render import render_card
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
from synth_disco.dataset.tables import (
    DesignMap,
    LabelCoding,
    agreement_rows,
    coded_aggregates,
    coded_annotations,
    config_features,
    design_map,
    label_codings,
    typed_personas,
    with_design,
)
from synth_disco.recipe.schema import Recipe
from synth_disco.store import schemas as table_schemas
from synth_disco.store.files import fsync_dir, sha256_file
from synth_disco.store.run_dir import RunStore

READ_BATCH_ROWS = 4096
# Configs published only when they have rows.
OPTIONAL = frozenset({"events", "aggregates", "agreement", "prompts"})
ROW_GROUP_ROWS = 10_000  # small enough for the Hub's viewer, large enough to compress well
ROW_GROUP_BYTES = 32 << 20  # the write buffer's bound, whatever the row size
# The same content-defined chunking `datasets` uses, so a new version that adds rows shares
# most of its bytes with the previous one on the Hub's deduplicating storage.
CDC_OPTIONS = {"min_chunk_size": 256 * 1024, "max_chunk_size": 1024 * 1024, "norm_level": 0}

# -- schemas ---------------------------------------------------------------------------------


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


def _design_of(path: Path | None, factors: list[str]) -> DesignMap:
    """The design columns of one discussions shard file's discussions."""
    if path is None:
        return {}
    return design_map(
        pq.read_table(path, columns=["discussion_id", "cell_id", "replicate", *factors]), factors
    )


def _cells_of(design: DesignMap) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The (cell_id, levels) view of a design map the statistics fold labels with."""
    return {d: (c, tuple(x or "" for x in lv)) for d, (c, lv, _) in design.items()}


class _ShardDesign:
    """The design map for a shard of annotations: its discuss shard's discussions (annotation
    shards cover the discussions of the discuss shard with their number); a map of every
    discussion is built only if that ever fails to hold."""

    def __init__(self, discuss: Mapping[int, Mapping[str, Path]], factors: list[str]):
        self.discuss = discuss
        self.factors = factors
        self._all: DesignMap | None = None

    def covering(self, shard: int, ids: Iterable[str]) -> DesignMap:
        design = _design_of(self.discuss.get(shard, {}).get("discussions"), self.factors)
        if set(ids) <= design.keys():
            return design
        if self._all is None:
            self._all = {}
            for _, p in sorted(self.discuss.items()):
                self._all.update(_design_of(p.get("discussions"), self.factors))
        return self._all


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
    statistics; comments and events get their discussion's design columns."""
    factors = stats.factors
    paths_of = lambda table: [p[table] for _, p in sorted(discuss.items()) if table in p]  # noqa: E731
    writers = {
        name: _ConfigWriter(tmp, name, schemas[name], _rows_in(paths_of(name)), max_rows)
        for name in ("discussions", "comments", "events")
    }
    for shard in sorted(discuss):
        paths = discuss[shard]
        design: DesignMap = {}
        ids: list[str] = []
        if "discussions" in paths:
            for batch in _read_batches(paths["discussions"], schemas["discussions"], scrub):
                table = pa.Table.from_batches([batch])
                stats.add_discussions(table)
                design.update(design_map(table, factors))
                ids.extend(batch.column("discussion_id").to_pylist())
                writers["discussions"].write(batch)
        cells = _cells_of(design)
        if "events" in paths:  # before the comments: see StatsCollector.add_events
            for batch in _read_batches(paths["events"], table_schemas.EVENTS, scrub):
                stats.add_events(batch)
                writers["events"].write(with_design(batch, design, factors, schemas["events"]))
        counts: Counter[str] = Counter()
        if "comments" in paths:
            for batch in _read_batches(paths["comments"], table_schemas.COMMENTS, scrub):
                stats.add_comments(batch, cells, counts)
                writers["comments"].write(with_design(batch, design, factors, schemas["comments"]))
        stats.end_shard(ids, counts)
    return [w.close() for w in writers.values()]


def _write_annotations(
    tmp: Path,
    annotate: Mapping[int, Mapping[str, Path]],
    discuss: Mapping[int, Mapping[str, Path]],
    schemas: Mapping[str, pa.Schema],
    codings: Mapping[str, LabelCoding],
    stats: StatsCollector,
    max_rows: int,
    scrub: Sequence[tuple[str, str]],
) -> list[ConfigFiles]:
    """The annotations config (each label counted under its discussion's factor levels) and,
    from the shards that have them, the aggregates config; both coded (``tables.py``)."""
    factors = stats.factors
    designs = _ShardDesign(discuss, factors)
    out = []
    for table, shard_schema in (
        ("annotations", table_schemas.ANNOTATIONS),
        ("aggregates", AGGREGATE),
    ):
        paths = [p[table] for _, p in sorted(annotate.items()) if table in p]
        if not paths:
            continue
        writer = _ConfigWriter(tmp, table, schemas[table], _rows_in(paths), max_rows)
        code = coded_annotations if table == "annotations" else coded_aggregates
        for shard in sorted(annotate):
            if table not in annotate[shard]:
                continue
            for batch in _read_batches(annotate[shard][table], shard_schema, scrub):
                design = designs.covering(shard, batch.column("discussion_id").to_pylist())
                if table == "annotations":
                    stats.add_annotations(batch, _cells_of(design))
                writer.write(code(batch, design, factors, codings, schemas[table]))
        out.append(writer.close())
    return out


def _write_rows(
    tmp: Path, name: str, rows: list[dict[str, Any]], schema: pa.Schema, max_rows: int
) -> ConfigFiles:
    """A config from rows already in memory (small: prompts, agreement, personas)."""
    writer = _ConfigWriter(tmp, name, schema, len(rows), max_rows)
    for start in range(0, len(rows), READ_BATCH_ROWS):
        writer.write(
            pa.RecordBatch.from_pylist(rows[start : start + READ_BATCH_ROWS], schema=schema)
        )
    return writer.close()


def _prompt_rows(*stages: Mapping[int, Mapping[str, Path]]) -> list[dict[str, Any]]:
    """Every distinct prompt of the shards, participants' first, then by id."""
    rows: dict[str, dict[str, Any]] = {}
    for shards in stages:
        for _, paths in sorted(shards.items()):
            if "prompts" in paths:
                for row in pq.read_table(paths["prompts"]).to_pylist():
                    rows.setdefault(row["prompt_id"], row)
    rank = {"participant": 0, "moderator": 1, "annotator": 2}
    return sorted(rows.values(), key=lambda r: (rank.get(r["role"], 3), r["prompt_id"]))


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
    bundle: Bundle | None = None,
    recipe_dir: Path | None = None,
) -> Path:
    """Assemble the run's finished shards, and its card, into ``out`` (default
    ``run_dir/dataset``).

    ``personas`` maps each pool the run used (see ``manifest.used_pools``) to its personas
    (``Persona`` records or dicts); without it, the discussion participants stand in.
    ``agreement`` is the annotation step's ``{dimension: {"alpha", "level", "n_items"}}``;
    ``source_files`` the recipe's referenced files (relative path -> sha256), recorded in the
    manifest; ``repo`` the Hub repo the card's examples load from; ``bundle`` what the folder
    ships so it can be rebuilt (``bundle.py``), its files read from ``recipe_dir`` (without
    it, only the recipe as resolved is copied). Returns the dataset folder.
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
    codings = label_codings(recipe.annotation)
    disc_paths = [p["discussions"] for _, p in sorted(discuss.items()) if "discussions" in p]
    persona_columns, persona_rows = typed_personas(
        _persona_rows(personas, recipe.discussion.persona_pool, disc_paths)
    )
    schemas = config_schemas(factors, codings, persona_columns)
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
        written += _write_annotations(
            tmp, annotate, discuss, schemas, codings, stats, max_rows, scrub
        )
        if agreement:
            rows = agreement_rows(agreement)
            written.append(_write_rows(tmp, "agreement", rows, schemas["agreement"], max_rows))
        rows = _prompt_rows(discuss, annotate)
        written.append(_write_rows(tmp, "prompts", rows, schemas["prompts"], max_rows))
        written.append(_write_rows(tmp, "personas", persona_rows, schemas["personas"], max_rows))

        # A config without rows (no events, no aggregates) is left out: `datasets` cannot
        # load an empty split, and the card lists only what loads.
        for empty in [c for c in written if not c.num_examples and c.name in OPTIONAL]:
            for rel in empty.files:
                (tmp / rel).unlink()
                (tmp / rel).parent.rmdir()
            written.remove(empty)
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
        if bundle is not None:
            manifest["rebuild"] = bundle.to_manifest()
            write_bundle(bundle, recipe_dir or Path("."), tmp / META_DIR)
            copy = bundle.recipe
        else:
            copy = portable_recipe(raw_recipe)
        (tmp / RECIPE_COPY).write_text(dump_yaml(copy), encoding="utf-8")
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
        scan = LeakScan.around(store.root)
        leak = scan.find_in_folder(tmp)
        for shipped in sorted(bundle.files) if bundle is not None and leak is None else ():
            what = scan.find((tmp / META_DIR / shipped).read_bytes())
            if what is not None:
                leak = (f"{META_DIR}/{shipped}", what)
                break
        if leak is not None:
            raise AssembleError(f"{leak[0]}: contains {leak[1]}; refusing to publish it")
        _fsync_tree(tmp)
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
