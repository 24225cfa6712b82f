"""A run's finished shards as assembly reads them: each file checked against the checksum its
done marker recorded, and the design columns (cell, replicate, factor levels) of their
discussions, which the comments, events and annotations are joined with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow.parquet as pq

from synth_disco.dataset.manifest import AssembleError
from synth_disco.dataset.tables import DesignMap, design_map
from synth_disco.store.files import sha256_file
from synth_disco.store.run_dir import RunStore


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
