"""The annotate stage: every task of a shard through the engine in batches, journaled.

Per shard: build the tasks (deterministic order), replay the journal to skip finished ones,
send the rest to the engine ``max_batch`` at a time (one ``score`` or ``generate`` call per
batch), journal each finished task and fsync once per call, and when all are finished write
the shard's ``annotations`` table and its done marker. A crash at any point loses at most the
call in flight; re-running yields the same rows, without duplicates. Generated answers use a
seed derived from (run seed, task id, attempt), so a resumed task repeats its text exactly.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pyarrow as pa

from synth_disco.annotation.aggregate import AGGREGATE, aggregate
from synth_disco.annotation.parse import parse_answer
from synth_disco.annotation.prompts import PromptBuilder
from synth_disco.annotation.tasks import STAGE, Task, build_tasks, count_tasks
from synth_disco.engines.base import (
    ChatRequest,
    SamplingParams,
    ScoreRequest,
    ThreadQuestion,
    ThreadScoreRequest,
    capabilities_of,
)
from synth_disco.faults import crash_point
from synth_disco.progress import Progress
from synth_disco.recipe.schema import AnnotationConfig
from synth_disco.records import Persona, Prompt
from synth_disco.seeds import derive_seed
from synth_disco.store import schemas
from synth_disco.store.run_dir import RunStore
from synth_disco.store.shards import StageResult, claim, is_current

log = logging.getLogger("synth_disco")

__all__ = ["annotation_row", "default_generate_params", "run_annotation_stage"]

# Greedy decoding would repeat an unparseable answer exactly, so retries sample at least this
# warm (each attempt with its own derived seed).
RETRY_TEMPERATURE = 0.7
# Prompt bytes bound the token count of byte-level and BPE tokenizers: below the model's
# context by this margin, the exact (slower) token count is skipped.
_CONTEXT_MARGIN = 256
# Tokens kept free for the label when scoring.
_SCORE_RESERVE = 16

Comments = Callable[[int], pa.Table] | Mapping[int, pa.Table] | Sequence[pa.Table]
ProgressLike = Progress | Callable[[int], None] | None


def default_generate_params(
    cfg: AnnotationConfig, base: SamplingParams | None = None
) -> SamplingParams:
    """Decoding for the generate method: one short line, or room for a rationale if asked.

    ``base`` carries the model's settings (temperature, top_p, ...); only the length and stop
    strings are adapted to an annotation answer.
    """
    base = base or SamplingParams()
    if cfg.rationale:
        return replace(base, max_new_tokens=max(base.max_new_tokens, 96))
    return replace(
        base,
        max_new_tokens=min(base.max_new_tokens, 24),
        stop=tuple(dict.fromkeys((*base.stop, "\n"))),
    )


class _Caller:
    """Turns (task, attempt) batches into one engine call and its outcomes."""

    def __init__(
        self,
        cfg: AnnotationConfig,
        prompts: PromptBuilder,
        engine: Any,
        seed: int,
        params: SamplingParams,
    ):
        self.cfg = cfg
        self.prompts = prompts
        self.engine = engine
        self.seed = seed
        self.params = params
        self.retry_params = (
            params if params.temperature > 0 else replace(params, temperature=RETRY_TEMPERATURE)
        )
        self.max_context = _max_context(engine)
        # Tokens the engine reports, for the progress line (scoring reads prompts only).
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def messages(self, task: Task) -> list[dict[str, str]]:
        """The task's messages; the oldest context comments are dropped when the model cannot
        fit them (the target comment itself is never cut; if it alone is too long, the
        engine reports an error and the task is recorded as failed)."""
        msgs = self.prompts.messages(task)
        if self.max_context is None:
            return msgs
        reserve = self.params.max_new_tokens if self.cfg.method == "generate" else _SCORE_RESERVE
        budget = self.max_context - reserve
        if sum(len(m["content"].encode()) for m in msgs) + _CONTEXT_MARGIN <= budget:
            return msgs
        context = list(task.context)
        while context and self.engine.count_tokens(msgs) > budget:
            context.pop(0)
            msgs = self.prompts.messages(task, context)
        return msgs

    def call(self, batch: list[tuple[Task, int]]) -> list[dict[str, Any]]:
        """One engine call; one outcome dict per (task, attempt), in order."""
        if (
            self.cfg.method == "score"
            and self.cfg.layout == "thread"
            and capabilities_of(self.engine).score_threads
        ):
            return self._score_threads([t for t, _ in batch])
        if self.cfg.method == "score":
            sreqs = [
                ScoreRequest(
                    id=t.id, messages=self.messages(t), labels=self.prompts.labels(t.dimension)
                )
                for t, _ in batch
            ]
            scores = self.engine.score(sreqs)
            _check_ids(sreqs, scores)
            self.prompt_tokens += sum(r.prompt_tokens for r in scores)
            return [self._score_outcome(t, r) for (t, _), r in zip(batch, scores, strict=True)]
        greqs = [
            ChatRequest(
                id=t.id,
                messages=self.messages(t),
                seed=derive_seed(self.seed, STAGE, t.id, attempt),
                params=self.params if attempt == 1 else self.retry_params,
            )
            for t, attempt in batch
        ]
        completions = self.engine.generate(greqs)
        _check_ids(greqs, completions)
        self.prompt_tokens += sum(c.prompt_tokens for c in completions)
        self.completion_tokens += sum(c.completion_tokens for c in completions)
        return [self._generate_outcome(t, c) for (t, _), c in zip(batch, completions, strict=True)]

    def _score_threads(self, tasks: list[Task]) -> list[dict[str, Any]]:
        """Thread layout: one :class:`ThreadScoreRequest` per (discussion, annotator,
        dimension), so the engine runs each discussion once for all the labels an annotator
        gives in it. A task whose whole thread may not fit the model goes alone, with its
        oldest comments dropped (:meth:`messages`)."""
        p = self.prompts
        groups: dict[tuple[str, str, str], list[Task]] = {}
        for t in tasks:
            groups.setdefault((t.target.discussion_id, t.annotator.id, t.dimension), []).append(t)
        budget = None if self.max_context is None else self.max_context - _SCORE_RESERVE
        requests: list[ThreadScoreRequest] = []
        alone: list[Task] = []
        for group in groups.values():
            # Thread-layout contexts are every earlier comment, so each task's context is a
            # prefix of the latest target's: one set of segments serves the whole group.
            last = max(group, key=lambda t: len(t.context))
            head = p.thread_head(last)
            segments = tuple(p.thread_segment(c) for c in (*last.context, last.target))
            # Bytes of each task's prompt up to its target (a bound on its tokens, as in
            # messages()); a task over the budget goes alone, trimmed.
            upto = list(itertools.accumulate(len(x.encode()) for x in segments))
            fixed = len(p.system_text.encode()) + len(head.encode()) + _CONTEXT_MARGIN
            questions = []
            for t in group:
                text = p.thread_question(t)
                size = fixed + upto[len(t.context)] + len(text.encode())
                if budget is not None and size > budget:
                    alone.append(t)
                else:
                    questions.append(
                        ThreadQuestion(t.id, len(t.context), text, p.labels(t.dimension))
                    )
            if questions:
                requests.append(ThreadScoreRequest(p.system_text, head, segments, tuple(questions)))
        scores = self.engine.score_threads(requests) if requests else []
        if alone:
            sreqs = [
                ScoreRequest(id=t.id, messages=self.messages(t), labels=p.labels(t.dimension))
                for t in alone
            ]
            scores = [*scores, *self.engine.score(sreqs)]
        self.prompt_tokens += sum(r.prompt_tokens for r in scores)
        by_id = {r.id: r for r in scores}
        if len(by_id) != len(tasks) or any(t.id not in by_id for t in tasks):
            raise RuntimeError("the engine returned results that do not match its requests")
        return [self._score_outcome(t, by_id[t.id]) for t in tasks]

    def _score_outcome(self, task: Task, res: Any) -> dict[str, Any]:
        labels = self.prompts.labels(task.dimension)
        probs = [float(p) for p in res.probs] if res.error is None else []
        if res.error is not None or len(probs) != len(labels) or not sum(probs) > 0:
            why = res.error or f"engine returned {len(probs)} scores for {len(labels)} labels"
            return {"ok": False, "raw": "", "error": why}
        total = sum(probs)
        probs = [p / total for p in probs]  # exact normalisation over the label set
        best = max(range(len(probs)), key=probs.__getitem__)  # first of ties
        return {
            "ok": True,
            "label": labels[best],
            "scores": [[lab, p] for lab, p in zip(labels, probs, strict=True)],
            "raw": "",
        }

    def _generate_outcome(self, task: Task, comp: Any) -> dict[str, Any]:
        if comp.finish_reason == "error":
            return {"ok": False, "raw": comp.text or "", "error": comp.error or "engine error"}
        labels = self.prompts.labels(task.dimension)
        parsed = parse_answer(comp.text, labels, task.dimension)
        if not parsed.ok:
            return {"ok": False, "raw": comp.text, "error": parsed.error}
        scores = [[lab, 1.0 if lab == parsed.label else 0.0] for lab in labels]
        return {"ok": True, "label": parsed.label, "scores": scores, "raw": comp.text}


def _max_context(engine: Any) -> int | None:
    if not hasattr(engine, "count_tokens"):
        return None
    try:
        value = engine.max_context
    except Exception:  # an engine that cannot tell (e.g. a remote endpoint): let it judge
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def _check_ids(reqs: Sequence[Any], results: Sequence[Any]) -> None:
    if len(results) != len(reqs) or any(r.id != q.id for r, q in zip(results, reqs, strict=False)):
        raise RuntimeError("the engine returned results that do not match its requests")


def _journal_record(
    task: Task, outcome: dict[str, Any], attempt: int, method: str
) -> dict[str, Any]:
    return {
        "task": task.id,
        "key": task.key,
        "status": "ok" if outcome["ok"] else "failed",
        "label": outcome.get("label"),
        "scores": outcome.get("scores", []),
        "raw": outcome.get("raw", ""),
        "error": outcome.get("error"),
        "attempts": attempt,
        "method": method,
    }


def annotation_row(
    task: Task, record: dict[str, Any], model_name: str, prompt_id: str | None = None
) -> dict[str, Any]:
    """The ``annotations`` table row of a finished task, from its journal record;
    ``prompt_id`` names the prompt it was made from (``PromptBuilder.prompt``)."""
    raw = record.get("raw") or ""
    if record["status"] != "ok" and not raw and record.get("error"):
        raw = f"[error] {record['error']}"  # no text came back: keep why it failed
    return {
        "comment_id": task.target.comment_id,
        "discussion_id": task.target.discussion_id,
        "annotator_id": task.annotator.id,
        "annotator_persona": task.annotator.description,
        "dimension": task.dimension,
        "label": record.get("label"),
        "scores": [{"label": lab, "prob": float(p)} for lab, p in record.get("scores", [])],
        "method": record.get("method", ""),
        "raw_text": raw,
        "model": model_name,
        "status": record["status"],
        "attempts": int(record.get("attempts", 1)),
        "prompt_id": prompt_id,
    }


def _replay(store: RunStore, shard: int, tasks: list[Task]) -> dict[str, dict[str, Any]]:
    """The journal's latest valid record per task (a retry's record supersedes a failure)."""
    keys = {t.id: t.key for t in tasks}
    records: dict[str, dict[str, Any]] = {}
    for r in store.read_journal(STAGE, shard):
        tid = r.get("task")
        if tid in keys and r.get("key") == keys[tid]:
            records[tid] = r
    return records


class _Tracker:
    """Feeds a :class:`Progress`, a plain callback (labels just finished), or both."""

    def __init__(self, progress: ProgressLike, total: int):
        self.callback = progress if callable(progress) else None
        self.progress = progress if isinstance(progress, Progress) else None
        if progress is None:
            self.progress = Progress("annotate", total, unit="labels")

    def resumed(self, n: int) -> None:
        if self.progress is not None:
            self.progress.skip(n)
        if self.callback is not None and n:
            self.callback(n)

    def update(self, done: int, failed: int, prompt_tokens: int, completion_tokens: int) -> None:
        if self.progress is not None:
            self.progress.add(
                done,
                failed=failed,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
            self.progress.tick()
        if self.callback is not None and done:
            self.callback(done)

    def shard_done(self) -> None:
        if self.progress is not None:
            self.progress.units_done += 1

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


def run_annotation_stage(
    store: RunStore,
    comments_by_shard: Comments,
    shards: list[int],
    cfg: AnnotationConfig,
    annotators: list[Persona],
    engine: Any,
    *,
    model_name: str,
    seed: int,
    max_batch: int = 256,
    progress: ProgressLike = None,
    should_stop: Callable[[], bool] = lambda: False,
    params: SamplingParams | None = None,
    prompts: PromptBuilder | None = None,
    retry_failed: bool = False,
) -> StageResult:
    """Annotate every comment of ``shards``; see the module doc for the guarantees.

    ``comments_by_shard`` gives a shard's ``comments`` table (a function, a mapping, or a
    list indexed by shard number). ``progress`` is a :class:`Progress`, or a callback given
    the number of labels just finished; None logs progress lines. ``params`` are the generate
    method's decoding settings (the build passes the annotation model's own, through
    :func:`default_generate_params`; default: :class:`SamplingParams` defaults); ``prompts``
    overrides the templates; ``retry_failed`` reopens done shards with failed labels and asks
    again for those.
    """
    if max_batch < 1:
        raise ValueError("max_batch must be at least 1")
    start = time.perf_counter()
    result = StageResult()
    prompts = prompts or PromptBuilder(cfg)
    if params is None:  # decoding travels with requests: the engine has no settings of its own
        params = default_generate_params(cfg)
    caller = _Caller(cfg, prompts, engine, seed, params)

    def comments_of(shard: int) -> pa.Table:
        return comments_by_shard(shard) if callable(comments_by_shard) else comments_by_shard[shard]

    # The total is known before the first label (a count, without building the tasks), so
    # the progress line never shows a total that grows as shards open.
    total = sum(count_tasks(comments_of(s), cfg, len(annotators)) for s in shards)
    if isinstance(progress, Progress):
        progress.total = total
    tracker = _Tracker(progress, total)
    try:
        for shard in shards:
            if should_stop():
                result.stopped = True
                break
            tasks = build_tasks(comments_of(shard), cfg, annotators, seed)
            members = list(dict.fromkeys(t.target.comment_id for t in tasks))
            digest = task_digest(tasks)
            current = dict(members=members, retry_failed=retry_failed, digest=digest)
            if is_current(store, STAGE, shard, **current):
                result.shards_already += 1
                tracker.resumed(len(tasks))
                continue
            with claim(store, STAGE, shard, result) as held:
                if not held:
                    tracker.resumed(len(tasks))  # another process's work: not ours to wait for
                    continue
                if is_current(store, STAGE, shard, **current):  # done meanwhile
                    result.shards_already += 1
                    tracker.resumed(len(tasks))
                    continue
                store.reopen_shard(STAGE, shard)
                if not _run_shard(
                    store,
                    shard,
                    tasks,
                    cfg,
                    caller,
                    max_batch,
                    tracker,
                    should_stop,
                    retry_failed,
                    result,
                ):
                    result.stopped = True
                    break
                _finish(store, shard, tasks, cfg, members, digest, model_name, prompts.prompt)
                result.shards_done += 1
                tracker.shard_done()
    finally:
        tracker.close()
        result.seconds = time.perf_counter() - start
    return result


def task_digest(tasks: list[Task]) -> int:
    """A 48-bit digest of a shard's task list (ids and what each shows the annotator).

    Kept in the done marker's counts: a shard labelled under other settings (dimensions,
    annotators, context) is not taken as done when the same comments are annotated again.
    """
    h = hashlib.sha256()
    for t in tasks:
        h.update(f"{t.id}\x1f{t.key}\x1e".encode())
    return int(h.hexdigest()[:12], 16)


def _run_shard(
    store: RunStore,
    shard: int,
    tasks: list[Task],
    cfg: AnnotationConfig,
    caller: _Caller,
    max_batch: int,
    tracker: _Tracker,
    should_stop: Callable[[], bool],
    retry_failed: bool,
    result: StageResult,
) -> bool:
    """Bring every task of the shard to a journal record; False when stopped first."""
    records = _replay(store, shard, tasks)
    if retry_failed:
        records = {k: r for k, r in records.items() if r["status"] == "ok"}
    result.resumed += len(records)
    tracker.resumed(len(records))
    pending = deque((t, 1) for t in tasks if t.id not in records)
    if not pending:
        return True
    journal = store.journal(STAGE, shard)
    try:
        while pending:
            if should_stop():
                return False
            batch = [pending.popleft() for _ in range(min(max_batch, len(pending)))]
            if cfg.layout == "thread":  # whole discussions, so none is run twice
                while (
                    pending
                    and pending[0][0].target.discussion_id == batch[-1][0].target.discussion_id
                ):
                    batch.append(pending.popleft())
            tokens_before = (caller.prompt_tokens, caller.completion_tokens)
            outcomes = caller.call(batch)
            result.engine_calls += 1
            finished = failed = 0
            for (task, attempt), outcome in zip(batch, outcomes, strict=True):
                if outcome["ok"] or attempt > cfg.max_retries:
                    journal.append(_journal_record(task, outcome, attempt, cfg.method))
                    finished += 1
                    failed += not outcome["ok"]
                else:
                    pending.append((task, attempt + 1))
            journal.sync()
            crash_point("annotate.step")
            result.finished += finished
            result.failed += failed
            tracker.update(
                finished,
                failed,
                caller.prompt_tokens - tokens_before[0],
                caller.completion_tokens - tokens_before[1],
            )
    finally:
        journal.close()
    return True


def _finish(
    store: RunStore,
    shard: int,
    tasks: list[Task],
    cfg: AnnotationConfig,
    members: list[str],
    digest: int,
    model_name: str,
    prompt: Prompt,
) -> None:
    records = _replay(store, shard, tasks)
    rows = [annotation_row(t, records[t.id], model_name, prompt.id) for t in tasks]
    table = schemas.from_rows(rows, schemas.ANNOTATIONS)
    n_failed = sum(r["status"] != "ok" for r in rows)
    counts = {
        "annotations": len(rows),
        "ok": len(rows) - n_failed,
        "failed": n_failed,
        "comments": len(members),
        "task_digest": digest,
    }
    crash_point("annotate.finish")
    # Every label of a comment is in this shard, so its aggregates are too.
    aggregates, _ = aggregate(table, cfg, interval=False)
    tables = {
        "annotations": table,
        "aggregates": schemas.from_rows(aggregates, AGGREGATE),
        "prompts": schemas.from_rows([prompt.to_dict()], schemas.PROMPTS),
    }
    store.finish_shard(STAGE, shard, tables, counts, members=members)
    log.debug("annotate shard %d: %d labels (%d failed)", shard, len(rows), n_failed)
