"""The discuss stage: many discussions in flight, one batched engine call per step.

Discussions are admitted in plan order, up to ``max_concurrent`` at a time and across shard
boundaries (so the batch does not drain at the end of each shard). Each step gathers the
pending requests of every active discussion (``machine.py``: one for a forum thread; for a
deliberation structure every ready agent, e.g. a whole ensemble cycle or a graph level), sends
them to the engine together (one call per model), gives each discussion its answers, appends
the records to the shard journals and syncs the journals once. A crash in a step leaves each
journal a prefix of what the step wrote, which replays to a state the next step continues
from.
A shard is finalised (parquet files + done marker) as soon as its last discussion ends.
Shards follow the protocol of :mod:`synth_disco.store.shards` (skip, claim, replay, finish).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from synth_disco.discussion.machine import Conversation, comment_row
from synth_disco.discussion.moderation import planned_calls
from synth_disco.discussion.state import DiscussionState
from synth_disco.discussion.structure_state import StructureState
from synth_disco.discussion.structures import planned_calls as structure_calls
from synth_disco.engines.base import LOAD_FIELDS, ChatRequest, Completion, Engine
from synth_disco.faults import crash_point
from synth_disco.progress import Progress
from synth_disco.recipe.schema import DiscussionConfig, ModelConfig
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
    states: list[Conversation]
    open: int  # discussions not yet ended


def _planned_calls(spec: DiscussionSpec, memo: dict[str, int]) -> int:
    """The LLM calls a discussion makes by the moderation rules; ``memo`` (the runner's) works
    each distinct discussion config out once, as cells share theirs."""
    key = json.dumps(spec.config["discussion"], sort_keys=True, default=str)
    if key not in memo:
        cfg = DiscussionConfig.model_validate(spec.config["discussion"])
        if cfg.structure == "forum":
            calls = planned_calls(cfg)
            memo[key] = calls.turns + calls.moderator
        else:
            memo[key] = sum(structure_calls(cfg, len(spec.participants)))
    return memo[key]


def _calls_made(state: Conversation) -> int:
    """Calls a (replayed) discussion has already made: its generated comments and events,
    and the call that wrote a combiner's ``auto`` instructions."""
    generated = sum(c.role in ("user", "moderator") for c in getattr(state, "comments", ()))
    wrote = getattr(state, "wrote_instructions", False)
    return generated + len(getattr(state, "events", ())) + wrote


def _ended(state: Conversation, progress: Progress, memo: dict[str, int]) -> None:
    """Count a finished discussion; calls it planned but never made (it failed, or a
    moderator passed its turn) are taken off what is left, so the ETA stays honest."""
    progress.units_done += 1
    if state.status == "failed":
        progress.failed += 1
    progress.skip(max(_planned_calls(state.spec, memo) - _calls_made(state), 0))


def new_state(spec: DiscussionSpec) -> Conversation:
    """The state machine of a planned discussion: a forum thread or a deliberation structure."""
    if spec.config["discussion"].get("structure", "forum") == "forum":
        return DiscussionState(spec)
    return StructureState(spec)


def replay(spec: DiscussionSpec, records: Iterable[dict]) -> Conversation:
    """Rebuild a discussion's state from its journal records."""
    state = new_state(spec)
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
        progress: Progress | None = None,
    ):
        self.store = store
        self.progress = progress
        self._calls: dict[str, int] = {}  # discussion config -> planned calls
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
        calls = journaled = 0
        # Which shards need work, and how many calls they take. _open_shard builds the specs
        # again rather than keeping these: holding every pending shard's specs at once would
        # cost memory in proportion to the whole plan, for a few milliseconds a shard.
        for shard in shards:
            specs = self.specs_for_shard(shard)
            members = [s.discussion_id for s in specs]
            if is_current(self.store, STAGE, shard, members, retry_failed=self.retry_failed):
                result.shards_already += 1
                continue
            todo.append(shard)
            calls += sum(_planned_calls(spec, self._calls) for spec in specs)
            journaled += sum(r["t"] == "comment" for r in self.store.read_journal(STAGE, shard))
        if result.shards_already or journaled:
            log.info(
                "discuss: resuming: %d of %d shards done, %d comments journaled in the others",
                result.shards_already,
                len(shards),
                journaled,
            )
        progress = self.progress or Progress("discuss", 0, unit="calls")
        progress.total = calls
        admit: deque[tuple[_ShardWork, Conversation]] = deque()
        active: list[tuple[_ShardWork, Conversation]] = []
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
                        _ended(state, progress, self._calls)
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
            progress.close()
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
            progress.skip(_calls_made(state))
            if state.done:
                _ended(state, progress, self._calls)
            states.append(state)
        journal.sync()
        self._write_posts(shard, states)
        self.store.reopen_shard(STAGE, shard)
        return _ShardWork(
            shard,
            [s.discussion_id for s in specs],
            journal,
            lock,
            states,
            sum(not s.done for s in states),
        )

    def _write_posts(self, shard: int, states: list[Conversation]) -> None:
        """What each discussion of the shard starts from (its OP, or task, and seed
        comments), for ``show`` while the shard runs; not read by the build itself."""
        posts = {
            s.spec.discussion_id: [
                comment_row(c) for c in getattr(s, "comments", ()) if c.role in ("op", "seed")
            ]
            for s in states
        }
        self.store.write_text(
            self.store.posts_path(shard), json.dumps(posts, ensure_ascii=False) + "\n"
        )

    def _finish_shard(self, work: _ShardWork, result: StageResult) -> None:
        discussions = [_with_structure(s.discussion_row(self.factors)) for s in work.states]
        comments = [comment_row(c) for s in work.states for c in s.comments]
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
        active: list[tuple[_ShardWork, Conversation]],
        progress: Progress,
        result: StageResult,
    ) -> None:
        """Every request of every active discussion, one engine call per model; then each
        discussion gets its answers (in the order it asked) and the journals are synced."""
        groups: dict[str, list[tuple[int, int, ChatRequest]]] = defaultdict(list)
        configs: dict[str, ModelConfig] = {}
        answers: dict[int, list[Completion | None]] = {}
        for i, (_, state) in enumerate(active):
            asks = state.next_requests()
            if not asks:  # nothing left to ask: the state ends itself on apply
                continue
            answers[i] = [None] * len(asks)
            for j, ask in enumerate(asks):
                key = ask.model.model_dump_json(include=LOAD_FIELDS)
                configs[key] = ask.model
                groups[key].append((i, j, ask.request))
        for key, items in groups.items():
            engine = self.engine_for(configs[key])
            completions = engine.generate([r for _, _, r in items])
            result.engine_calls += 1
            for (i, j, _), completion in zip(items, completions, strict=True):
                answers[i][j] = completion
                progress.add(
                    1,
                    failed=completion.finish_reason == "error",
                    prompt_tokens=completion.prompt_tokens,
                    completion_tokens=completion.completion_tokens,
                )
        touched: dict[int, Journal] = {}
        for i, got in answers.items():
            work, state = active[i]
            completions = [c for c in got if c is not None]
            for record in state.apply_all(completions):
                work.journal.append(record)
                if record["t"] == "comment":
                    result.tokens += record["completion_tokens"]
            touched[work.shard] = work.journal
        for journal in touched.values():
            journal.sync()
        crash_point("discuss.step")


def _with_structure(row: dict) -> dict:
    """A discussions row with its ``structure`` (a forum thread's row does not name it)."""
    row.setdefault("structure", "forum")
    return row
