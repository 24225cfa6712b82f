"""``synth-disco annotate DATA RECIPE``: label comments that already exist.

DATA may be a run directory (it has ``shards/discuss``), a built dataset folder (it has
``data/comments/*.parquet``) or a directory of SynDisco discussion JSON files. Imported
comments are written as the ``discuss`` stage of a run directory (``comments`` tables,
``output.shard_size`` discussions per shard), so the same resumable annotate stage applies;
running the command again continues where it stopped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synth_disco.annotation.aggregate import write_aggregates
from synth_disco.annotation.stage import (
    ProgressLike,
    default_generate_params,
    run_annotation_stage,
)
from synth_disco.annotation.syndisco_import import read_syndisco_dir
from synth_disco.annotation.tasks import (
    AnnotationError,
    comments_from_table,
    comments_table,
    group_discussions,
)
from synth_disco.engines.base import EngineConfig
from synth_disco.engines.registry import load_engine
from synth_disco.engines.sampling import sampling_params_from
from synth_disco.errors import SynthDiscoError
from synth_disco.records import Comment
from synth_disco.store.run_dir import RunStore, StoreError
from synth_disco.store.shards import StageResult

log = logging.getLogger("synth_disco")

SourceKind = Literal["run", "dataset", "syndisco"]
IMPORT_FILE = "import.json"


class AnnotationStopped(SynthDiscoError):
    """The annotation was interrupted (Ctrl-C); ``run_dir`` holds the progress so far."""

    exit_code = 130

    def __init__(self, message: str, run_dir: Path, result: StageResult):
        super().__init__(message)
        self.run_dir = run_dir
        self.result = result


def detect_source(data: Path) -> SourceKind:
    """Which kind of input ``data`` is; raises naming what was expected."""
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"{data}: no such file or directory")
    if not data.is_dir():
        raise AnnotationError(
            f"{data} is a file: give a run directory, a dataset folder or a directory of "
            "SynDisco JSON files"
        )
    if (data / "shards" / "discuss").is_dir():
        return "run"
    if any((data / "data" / "comments").glob("*.parquet")):
        return "dataset"
    if any(data.rglob("*.json")):
        return "syndisco"
    raise AnnotationError(
        f"{data} holds nothing to annotate: expected a run directory (shards/discuss/), a "
        "dataset folder (data/comments/*.parquet) or SynDisco discussion files (*.json)"
    )


def _read_parquets(paths: list[Path]) -> pa.Table | None:
    if not paths:
        return None
    return pa.concat_tables([pq.read_table(p) for p in paths], promote_options="default")


def write_comment_shards(
    store: RunStore,
    comments: list[Comment],
    shard_size: int,
    discussions: pa.Table | None = None,
) -> list[int]:
    """Write imported comments as ``discuss`` shards of ``shard_size`` discussions each.

    Shards already written with the same discussions are kept (a re-run resumes); a shard
    holding other discussions means the output directory belongs to another input: refused.
    """
    by_discussion = group_discussions(comments)
    ids = list(by_discussion)
    shards = []
    for shard, start in enumerate(range(0, len(ids), shard_size)):
        members = ids[start : start + shard_size]
        info = store.shard_info("discuss", shard)
        if info is not None:
            if info.members != members:
                raise StoreError(
                    f"{store.root.name} already holds other discussions in shard {shard}: "
                    "choose another output directory"
                )
            shards.append(shard)
            continue
        rows = [c for d in members for c in by_discussion[d]]
        tables_ = {"comments": comments_table(rows)}
        if discussions is not None and "discussion_id" in discussions.column_names:
            wanted = pa.array(members, pa.string())
            mask = pc.is_in(discussions.column("discussion_id"), value_set=wanted)
            tables_["discussions"] = discussions.filter(mask)
        counts = {"discussions": len(members), "comments": len(rows), "failed": 0}
        store.finish_shard("discuss", shard, tables_, counts, members=members)
        shards.append(shard)
    return shards


def _import(
    data: Path, kind: SourceKind, store: RunStore, shard_size: int
) -> tuple[list[int], dict[str, Any]]:
    """Create the target's discuss shards from ``data``; returns shards and import facts."""
    facts: dict[str, Any] = {"source": data.name, "kind": kind}
    discussions = None
    if kind == "run":
        src = RunStore(data)
        infos = src.done_shards("discuss")
        for info in infos:  # copy shard by shard, keeping the source's shard numbers
            if store.shard_info("discuss", info.shard) is None:
                tabs = {"comments": src.read_shard("discuss", info.shard, "comments")}
                if src.shard_path("discuss", info.shard, "discussions").exists():
                    tabs["discussions"] = src.read_shard("discuss", info.shard, "discussions")
                store.finish_shard("discuss", info.shard, tabs, info.counts, info.members)
        facts["discussions"] = sum(len(i.members) for i in infos)
        return [i.shard for i in infos], facts
    if kind == "dataset":
        table = _read_parquets(sorted((data / "data" / "comments").glob("*.parquet")))
        comments = comments_from_table(table) if table is not None else []
        discussions = _read_parquets(sorted((data / "data" / "discussions").glob("*.parquet")))
    else:
        imported = read_syndisco_dir(data)
        comments = imported.comments
        facts["formats"] = sorted(set(imported.formats.values()))
        facts["skipped_files"] = [{"file": f, "reason": r} for f, r in imported.skipped]
        facts["empty_entries_skipped"] = imported.empty_entries
        for f, r in imported.skipped:
            log.info("skipped %s: %s", f, r)
        if not comments:
            raise AnnotationError(f"{data} holds no SynDisco discussion with comments")
    shards = write_comment_shards(store, comments, shard_size, discussions)
    facts["discussions"] = len(group_discussions(comments))
    facts["comments"] = len(comments)
    return shards, facts


def annotate_existing(
    data: Path,
    loaded_recipe: Any,
    out: Path | None = None,
    *,
    engine: Any = None,
    progress: ProgressLike = None,
    should_stop: Callable[[], bool] = lambda: False,
    max_batch: int = 256,
    retry_failed: bool = False,
) -> Path:
    """Annotate the comments in ``data`` with the recipe's ``annotation`` settings.

    Writes (or continues) a run directory: ``out``, else ``data`` itself for a run directory
    and ``<data>-annotated/`` beside it otherwise; returns its path. ``engine`` replaces the
    recipe's annotation model (tests); it is loaded from the recipe otherwise and closed at
    the end. Raises :class:`AnnotationStopped` when ``should_stop`` interrupts it.
    """
    data = Path(data)
    recipe = loaded_recipe.recipe
    cfg = recipe.annotation
    if cfg is None:
        raise AnnotationError(
            f"{getattr(loaded_recipe, 'display_path', 'the recipe')} has no `annotation` "
            "section: add one with at least one dimension"
        )
    kind = detect_source(data)
    if out is None:
        out = data if kind == "run" else data.parent / f"{data.name}-annotated"
    out = Path(out)
    store = RunStore(out)
    store.check_writable()
    if kind == "run" and out.resolve() == data.resolve():
        shards = [i.shard for i in store.done_shards("discuss")]
    else:
        shards, facts = _import(data, kind, store, recipe.output.shard_size)
        facts["annotation_model"] = recipe.model_for(cfg.model).model
        store.write_text(store.root / IMPORT_FILE, json.dumps(facts, indent=2) + "\n")
    if not shards:
        raise AnnotationError(f"{data} has no finished discussion shards to annotate")

    annotators = loaded_recipe.personas(cfg.annotators.pool)
    model_cfg = recipe.model_for(cfg.model)
    own_engine = engine is None
    if own_engine:
        engine = load_engine(EngineConfig.from_mapping(model_cfg.model_dump()))
    try:
        result = run_annotation_stage(
            store,
            lambda shard: store.read_shard("discuss", shard, "comments"),
            shards,
            cfg,
            annotators,
            engine,
            model_name=getattr(engine, "model_id", None) or model_cfg.model,
            seed=recipe.seed,
            max_batch=max_batch,
            progress=progress,
            should_stop=should_stop,
            params=default_generate_params(cfg, sampling_params_from(model_cfg)),
            retry_failed=retry_failed,
        )
    finally:
        if own_engine:
            engine.close()
    if result.stopped:
        raise AnnotationStopped(
            f"annotation stopped; run the same command again to continue ({out})", out, result
        )
    if result.shards_skipped:
        log.warning(
            "%d annotate shard(s) are held by another process; re-run when it has finished",
            result.shards_skipped,
        )
    write_aggregates(store, cfg, recipe.seed)
    return out
