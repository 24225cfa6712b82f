"""The shard protocol every stage follows, and what one call of a stage reports.

A stage works a shard in four moves, whatever it computes:

1. **skip** it when its done marker covers the same members (and, for annotation, the same
   task digest) and no failure is to be retried (:func:`is_current`);
2. **claim** it with an exclusive lock, or leave it to the process that holds it
   (:func:`claim`);
3. **replay** its journal to skip finished work, then journal new work step by step;
4. **finish** it: tables and done marker through :meth:`RunStore.finish_shard`, last.

The discuss and annotate stages keep their own loops (the discuss stage admits discussions
across shard boundaries, annotation goes shard by shard), but both use these moves and report
one :class:`StageResult`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from synth_disco.store.run_dir import RunStore

log = logging.getLogger("synth_disco")


@dataclass
class StageResult:
    """What one call of a stage did. ``finished`` counts the stage's units: discussions for
    the discuss stage, labels for the annotate stage."""

    shards_done: int = 0  # finished by this call
    shards_skipped: int = 0  # held by another process
    shards_already: int = 0  # done before this call
    finished: int = 0  # units finished by this call (ok or failed)
    resumed: int = 0  # units found finished in journals
    failed: int = 0  # units recorded as failed by this call
    comments: int = 0  # comments written (discuss stage)
    tokens: int = 0  # tokens generated
    engine_calls: int = 0
    seconds: float = 0.0
    stopped: bool = False  # should_stop() ended the call early
    failures: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)


def is_current(
    store: RunStore,
    stage: str,
    shard: int,
    members: list[str],
    *,
    retry_failed: bool = False,
    digest: int | None = None,
) -> bool:
    """The shard is done for exactly these members (and this task digest, when given), and no
    failure of it is to be retried."""
    info = store.shard_info(stage, shard)
    return (
        info is not None
        and info.members == members
        and (digest is None or info.counts.get("task_digest") == digest)
        and not (retry_failed and info.counts.get("failed", 0))
    )


@contextlib.contextmanager
def claim(store: RunStore, stage: str, shard: int, result: StageResult) -> Iterator[bool]:
    """Hold the shard's lock while the block runs; yields False (and counts the shard as
    skipped) when another process holds it."""
    with store.lock_shard(stage, shard) as held:
        if not held:
            log.warning(
                "%s shard %d is being worked on by another process; skipping it", stage, shard
            )
            result.shards_skipped += 1
        yield held
