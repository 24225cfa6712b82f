"""The run directory: journals, shard files and their completion markers.

Everything here is a plain file a person can inspect::

    run.json                          name, version, fingerprint, created
    recipe.yaml                       the resolved recipe, frozen
    plan.parquet                      one row per planned discussion
    journal/<stage>/shard-00003.jsonl append-only log of finished steps (fsync'd every step)
    shards/<stage>/shard-00003.<table>.parquet   a finished shard's rows (atomic rename)
    shards/<stage>/shard-00003.done.json         its checksums and counts: the shard is done
    locks/<stage>-shard-00003.lock    held (filelock) by the process working on that shard
    logs/run.log

A shard is done exactly when its ``done.json`` exists; the marker is written last, after the
parquet files are renamed into place, so a crash at any point leaves either a done shard or a
journal to resume from.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from synth_disco.errors import SynthDiscoError
from synth_disco.faults import crash_point
from synth_disco.store.files import (
    atomic_write_parquet,
    atomic_write_text,
    describe_os_error,
)
from synth_disco.store.journal import Journal


class StoreError(SynthDiscoError):
    """The run directory cannot be used (unwritable, full, locked, or from another recipe)."""


@dataclass
class ShardInfo:
    """The contents of a shard's ``done.json``."""

    stage: str
    shard: int
    files: dict[str, str]  # table -> sha256
    counts: dict[str, int]
    members: list[str]  # the discussion ids the shard covers

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "shard": self.shard,
            "files": self.files,
            "counts": self.counts,
            "members": self.members,
        }


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # -- layout ------------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def recipe_path(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def plan_path(self) -> Path:
        return self.root / "plan.parquet"

    @property
    def log_path(self) -> Path:
        return self.root / "logs" / "run.log"

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"

    def journal_path(self, stage: str, shard: int) -> Path:
        return self.root / "journal" / stage / f"shard-{shard:05d}.jsonl"

    def shard_path(self, stage: str, shard: int, table: str) -> Path:
        return self.root / "shards" / stage / f"shard-{shard:05d}.{table}.parquet"

    def done_path(self, stage: str, shard: int) -> Path:
        return self.root / "shards" / stage / f"shard-{shard:05d}.done.json"

    def posts_path(self, shard: int) -> Path:
        """The posts (OP and seed comments) of a discussion shard's discussions, written when
        the shard opens, so ``show`` can print a running discussion from its start."""
        return self.root / "journal" / "discuss" / f"shard-{shard:05d}.posts.json"

    # -- run metadata --------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Fail early, with a clear message, when the run directory cannot be written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # One probe per process: several workers may check the same directory at once.
            probe = self.root / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StoreError(describe_os_error(exc, self.root)) from exc

    def read_run(self) -> dict[str, Any] | None:
        if not self.run_json.exists():
            return None
        return json.loads(self.run_json.read_text(encoding="utf-8"))

    def write_run(self, info: dict[str, Any]) -> None:
        self.write_text(self.run_json, json.dumps(info, indent=2, sort_keys=True) + "\n")

    @property
    def engines_path(self) -> Path:
        """What each engine the run loaded reported about itself (for the dataset card)."""
        return self.root / "engines.json"

    def read_engines(self) -> list[dict[str, Any]]:
        """The engine records of :meth:`record_engine`, oldest first."""
        if not self.engines_path.exists():
            return []
        return list(json.loads(self.engines_path.read_text(encoding="utf-8")))

    def record_engine(self, info: dict[str, Any]) -> None:
        """Add one loaded engine's record (a record equal to one already kept is not added)."""
        kept = self.read_engines()
        if info not in kept:
            kept.append(info)
            self.write_text(self.engines_path, json.dumps(kept, indent=1, sort_keys=True) + "\n")

    def write_text(self, path: Path, text: str) -> None:
        try:
            atomic_write_text(path, text)
        except OSError as exc:
            raise StoreError(describe_os_error(exc, path)) from exc

    # -- shards --------------------------------------------------------------------------------
    def journal(self, stage: str, shard: int) -> Journal:
        try:
            return Journal(self.journal_path(stage, shard))
        except OSError as exc:
            raise StoreError(describe_os_error(exc, self.journal_path(stage, shard))) from exc

    def read_journal(self, stage: str, shard: int) -> Iterator[dict[str, Any]]:
        return Journal.read(self.journal_path(stage, shard))

    def shard_info(self, stage: str, shard: int) -> ShardInfo | None:
        path = self.done_path(stage, shard)
        if not path.exists():
            return None
        d = json.loads(path.read_text(encoding="utf-8"))
        return ShardInfo(d["stage"], d["shard"], d["files"], d["counts"], d.get("members", []))

    def is_done(self, stage: str, shard: int) -> bool:
        return self.done_path(stage, shard).exists()

    def finish_shard(
        self,
        stage: str,
        shard: int,
        tables: dict[str, pa.Table],
        counts: dict[str, int],
        members: list[str],
    ) -> ShardInfo:
        """Write a shard's tables atomically, then its done marker (last: it commits the shard)."""
        files: dict[str, str] = {}
        try:
            for name, table in tables.items():
                files[name] = atomic_write_parquet(self.shard_path(stage, shard, name), table)
                crash_point("shard.write")
            info = ShardInfo(stage, shard, files, counts, members)
            atomic_write_text(
                self.done_path(stage, shard), json.dumps(info.to_dict(), indent=1) + "\n"
            )
        except OSError as exc:
            raise StoreError(describe_os_error(exc, self.shard_path(stage, shard, "*"))) from exc
        return info

    def reopen_shard(self, stage: str, shard: int) -> None:
        """Mark a done shard as in progress again (to extend it or retry its failures)."""
        with contextlib.suppress(FileNotFoundError):
            self.done_path(stage, shard).unlink()

    def read_shard(self, stage: str, shard: int, table: str) -> pa.Table:
        # ParquetFile, not pq.read_table: the latter goes through pyarrow.dataset, which
        # imports pandas (~50 MiB) in a worker that never needs it.
        return pq.ParquetFile(self.shard_path(stage, shard, table)).read()

    def shard_files(self, stage: str, table: str) -> list[Path]:
        """Finished shard files of one table, in shard order."""
        paths = (self.shard_path(stage, info.shard, table) for info in self.done_shards(stage))
        return [p for p in paths if p.exists()]

    def done_shards(self, stage: str) -> list[ShardInfo]:
        """The done markers of one stage, in shard order."""
        folder = self.root / "shards" / stage
        markers = sorted(folder.glob("shard-*.done.json")) if folder.exists() else []
        infos = (
            self.shard_info(stage, int(m.name[len("shard-") :].split(".")[0])) for m in markers
        )
        return [info for info in infos if info is not None]

    @contextlib.contextmanager
    def lock_shard(self, stage: str, shard: int) -> Iterator[bool]:
        """Hold an exclusive lock on a shard; yields False when another process holds it.

        ``filelock`` rather than ``fcntl``: the same lock file works on Windows too.
        """
        path = self.root / "locks" / f"{stage}-shard-{shard:05d}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()
