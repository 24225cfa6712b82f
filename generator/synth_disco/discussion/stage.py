"""The discuss stage: many discussions in flight, one batched engine call per step.

Discussions are admitted in plan order, up to ``max_concurrent`` at a time and across shard
boundaries (so the batch does not drain at the end of each shard). Each step gathers the
pending request of every active discussion, sends them to the engine together (one call per
model), applies the answers, appends them to the shard journals and syncs the journals once.
A shard is finalised (parquet files + done marker) as soon as its last discussion ends.
Shards follow the protocol of :mod:`synth_disco.store.shards` (skip, claim, replay, finish).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from synth_disco.discussion.state import DiscussionState
from synth_disco.engines.base import LOAD_FIELDS, ChatRequest, Engine
from synth_disco.faults import crash_point
from synth_disco.progress import Progress
from synth_disco.recipe.schema import ModelConfig
from synth_disco.records import DiscussionSpec
from synth_disco.store import schemas
from synth_disco.store.journal import Journal
from synth_disco.store.run_dir import RunStore
from synth_disco.store.shards import StageResult, claim, is_current

log = logging.getLogger("synth_disco")

STAGE = "discuss"


@dataclass
class _ShardWork:
    shard: int
    members: list[str]
    journal: Journal
    lock: contextlib.ExitStack
    states: list[DiscussionState]
    open: int  # discussions not yet ended


def replay(spec: DiscussionSpec, records: Iterable[dict]) -> DiscussionState:
    """Rebuild a discussion's state from its journal records."""
    state = DiscussionState(spec)
    for r in records:
        state.absorb(r)
    return state


class DiscussionRunner:
    """Runs the discussion stage of one process over the shards it was given."""

    def __init__(
        self,
        store: RunStore,
        specs_for_shard: Callable[[int], list[DiscussionSpec]],
        engine_for: Callable[[ModelConfig], Engine],
        factors: list[str],
        *,
        max_concurrent: int = 64,
        retry_failed: bool = False,
        should_stop: Callable[[], bool] = lambda: False,
    ):
        self.store = store
        self.specs_for_shard = specs_for_shard
        self.engine_for = engine_for
        self.factors = factors
        self.max_concurrent = max_concurrent
        self.retry_failed = retry_failed
        self.should_stop = should_stop

    def run(self, shards: list[int]) -> StageResult:
        start = time.perf_counter()
        result = StageResult()
        todo: deque[int] = deque()
        total = 0
        # Which shards need work, and how many discussions they hold. _open_shard builds the
        # specs again rather than keeping these: holding every pending shard's specs at once
        # would cost memory in proportion to the whole plan, for a few milliseconds a shard.
        for shard in shards:
            specs = self.specs_for_shard(shard)
            members = [s.discussion_id for s in specs]
            if is_current(self.store, STAGE, shard, members, retry_failed=self.retry_failed):
                result.shards_already += 1
                continue
            todo.append(shard)
            total += len(specs)
        progress = Progress("discuss", total)
        admit: deque[tuple[_ShardWork, DiscussionState]] = deque()
        active: list[tuple[_ShardWork, DiscussionState]] = []
        open_work: list[_ShardWork] = []
        try:
            while True:
                while len(active) < self.max_concurrent:
                    if not admit:
                        if not todo:
                            break
                        work = self._open_shard(todo.popleft(), result, progress)
                        if work is None:
                            continue
                        open_work.append(work)
                        admit.extend((work, s) for s in work.states if not s.done)
                        if work.open == 0:
                            self._finish_shard(work, result)
                            open_work.remove(work)
                        continue
                    active.append(admit.popleft())
                if not active:
                    break
                if self.should_stop():
                    result.stopped = True
                    break
                self._step(active, progress, result)
                still = []
                for work, state in active:
                    if state.done:
                        work.open -= 1
                        progress.done += 1
                        if state.status == "failed":
                            progress.failed += 1
                        if work.open == 0:
                            self._finish_shard(work, result)
                            open_work.remove(work)
                    else:
                        still.append((work, state))
                active = still
                progress.tick()
        finally:
            for work in open_work:
                work.journal.close()
                work.lock.close()
            progress.tick(force=True)
            result.seconds = time.perf_counter() - start
        return result

    # -- shards ----------------------------------------------------------------------------------
    def _open_shard(self, shard: int, result: StageResult, progress: Progress) -> _ShardWork | None:
        lock = contextlib.ExitStack()
        if not lock.enter_context(claim(self.store, STAGE, shard, result)):
            lock.close()
            return None
        specs = self.specs_for_shard(shard)
        by_id: dict[str, list[dict]] = defaultdict(list)
        for record in self.store.read_journal(STAGE, shard):
            by_id[record["d"]].append(record)
        journal = self.store.journal(STAGE, shard)
        states = []
        for spec in specs:
            state = replay(spec, by_id.get(spec.discussion_id, ()))
            for record in state.settle():
                journal.append(record)
            if self.retry_failed and state.status == "failed":
                record = {"t": "reopen", "d": spec.discussion_id}
                journal.append(record)
                state.absorb(record)
            if state.done:
                progress.done += 1
                progress.failed += state.status == "failed"
            states.append(state)
        journal.sync()
        self.store.reopen_shard(STAGE, shard)
        return _ShardWork(
            shard,
            [s.discussion_id for s in specs],
            journal,
            lock,
            states,
            sum(not s.done for s in states),
        )

    def _finish_shard(self, work: _ShardWork, result: StageResult) -> None:
        discussions = [s.discussion_row(self.factors) for s in work.states]
        comments = [c.to_dict() for s in work.states for c in s.comments]
        events = [e.to_dict() for s in work.states for e in s.events]
        prompts = {p.id: p.to_dict() for s in work.states for p in s.prompts()}
        failed = [
            (s.spec.discussion_id, s.error or "") for s in work.states if s.status == "failed"
        ]
        counts = {
            "discussions": len(discussions),
            "failed": len(failed),
            "comments": len(comments),
            "completion_tokens": sum(d["completion_tokens"] for d in discussions),
            "prompt_tokens": sum(d["prompt_tokens"] for d in discussions),
        }
        work.journal.close()
        self.store.finish_shard(
            STAGE,
            work.shard,
            {
                "discussions": schemas.from_rows(
                    discussions, schemas.discussions_schema(self.factors)
                ),
                "comments": schemas.from_rows(comments, schemas.COMMENTS),
                "events": schemas.from_rows(events, schemas.EVENTS),
                "prompts": schemas.from_rows(prompts.values(), schemas.PROMPTS),
            },
            counts,
            work.members,
        )
        work.lock.close()
        result.shards_done += 1
        result.finished += counts["discussions"]
        result.failed += counts["failed"]
        result.comments += counts["comments"]
        result.failures.extend(failed)
        log.debug("shard %d done: %s", work.shard, counts)

    # -- one engine step -------------------------------------------------------------------------
    def _step(
        self,
        active: list[tuple[_ShardWork, DiscussionState]],
        progress: Progress,
        result: StageResult,
    ) -> None:
        groups: dict[str, list[tuple[_ShardWork, DiscussionState, ChatRequest]]] = defaultdict(list)
        configs: dict[str, ModelConfig] = {}
        for work, state in active:
            request = state.next_request()
            if request is None:  # nothing left to say: the state ends itself on apply
                continue
            cfg = state.model_config_for_next()
            key = cfg.model_dump_json(include=LOAD_FIELDS)
            configs[key] = cfg
            groups[key].append((work, state, request))
        touched: dict[int, Journal] = {}
        for key, items in groups.items():
            engine = self.engine_for(configs[key])
            completions = engine.generate([r for _, _, r in items])
            result.engine_calls += 1
            for (work, state, _), completion in zip(items, completions, strict=True):
                for record in state.apply(completion):
                    work.journal.append(record)
                    if record["t"] == "comment":
                        progress.items += 1
                        result.tokens += completion.completion_tokens
                progress.tokens += completion.completion_tokens
                touched[work.shard] = work.journal
        for journal in touched.values():
            journal.sync()
        crash_point("discuss.step")
