"""The configs written from the shards, table by table: discussions, comments and events shard
by shard (folding their statistics, the comments and events joined with their discussion's
design columns), annotations and aggregates coded (``tables.py``), and the small configs
(agreement, prompts, personas) from rows held in memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from synth_disco.annotation.aggregate import AGGREGATE
from synth_disco.dataset.assembly.batches import READ_BATCH_ROWS, _read_batches, _rows_in
from synth_disco.dataset.assembly.configs import _ConfigWriter
from synth_disco.dataset.assembly.shards import _cells_of, _ShardDesign
from synth_disco.dataset.manifest import ConfigFiles
from synth_disco.dataset.stats import StatsCollector
from synth_disco.dataset.tables import (
    DesignMap,
    LabelCoding,
    coded_aggregates,
    coded_annotations,
    design_map,
    with_design,
)
from synth_disco.store import schemas as table_schemas


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
