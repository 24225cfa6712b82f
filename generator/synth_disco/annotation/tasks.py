"""Which (comment x annotator x dimension) tasks exist, in a fixed order.

Annotators are drawn per comment from a generator seeded by (run seed, comment id), so a
comment gets the same annotators whichever shard or process handles it, and a resumed run
rebuilds exactly the task list it started with.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from synth_disco.errors import SynthDiscoError
from synth_disco.recipe.schema import AnnotationConfig
from synth_disco.records import Comment, Persona
from synth_disco.seeds import derive_seed
from synth_disco.store import schemas

STAGE = "annotate"


class AnnotationError(SynthDiscoError):
    """The annotation settings cannot be applied to these comments or annotators, or the
    data to annotate cannot be read: bad input, reported as a message (exit code 2)."""

    exit_code = 2


def task_id(comment_id: str, annotator_id: str, dimension: str) -> str:
    return f"{comment_id}|{annotator_id}|{dimension}"


@dataclass(frozen=True)
class Task:
    """One label to produce: ``annotator`` rates ``target`` on ``dimension``."""

    id: str
    target: Comment
    context: tuple[Comment, ...]  # earlier comments of the same discussion, oldest first
    annotator: Persona
    dimension: str

    @functools.cached_property
    def key(self) -> str:
        """A short hash of what the annotator is shown, so that a journal record made for
        other content (a discussion re-run upstream) is never reused for this task. Kept
        once computed: the journal is replayed twice per shard, and a thread-layout task's
        context is its whole discussion so far."""
        h = hashlib.sha256()
        for part in (
            self.id,
            self.target.text,
            *(f"{c.comment_id}\x1e{c.author}\x1e{c.text}" for c in self.context),
            self.annotator.name,
            self.annotator.description,
        ):
            h.update(part.encode("utf-8"))
            h.update(b"\x1f")
        return h.hexdigest()[:16]


_COMMENT_DEFAULTS: dict[str, Any] = {
    "parent_id": None,
    "persona_id": None,
    "variant": None,
    "raw_text": None,
    "model": None,
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "finish_reason": None,
    "attempts": 1,
}


def comments_from_rows(rows: Iterable[dict[str, Any]]) -> list[Comment]:
    """Comment records from table rows; optional columns a dataset may lack get defaults."""
    out = []
    for row in rows:
        d = {k: row.get(k, v) for k, v in _COMMENT_DEFAULTS.items()}
        for k in ("prompt_tokens", "completion_tokens", "attempts"):
            if d[k] is None:
                d[k] = _COMMENT_DEFAULTS[k]
        text = row.get("text") or ""
        out.append(
            Comment(
                discussion_id=str(row["discussion_id"]),
                comment_id=str(row["comment_id"]),
                index=int(row["index"]),
                author=str(row.get("author") or ""),
                role=str(row.get("role") or "user"),
                text=text,
                **{**d, "raw_text": d["raw_text"] if d["raw_text"] is not None else text},
            )
        )
    return out


def comments_from_table(table: pa.Table) -> list[Comment]:
    missing = {"discussion_id", "comment_id", "index"} - set(table.column_names)
    if missing:
        raise AnnotationError(f"comments table lacks column(s): {', '.join(sorted(missing))}")
    return comments_from_rows(table.to_pylist())


def comments_table(comments: Sequence[Comment]) -> pa.Table:
    """The ``comments`` table (``schemas.COMMENTS``) of these records."""
    return schemas.from_rows((c.to_dict() for c in comments), schemas.COMMENTS)


def annotated_roles(cfg: AnnotationConfig) -> set[str]:
    roles = {"user"}
    if cfg.include_moderator:
        roles.add("moderator")
    if cfg.include_seed:
        roles |= {"op", "seed"}
    return roles


def assign_annotators(
    comment_id: str, pool: Sequence[Persona], per_comment: int | str, seed: int
) -> list[Persona]:
    """The annotators of one comment, in pool order; ``"all"`` takes the whole pool."""
    if per_comment == "all":
        return list(pool)
    n = int(per_comment)
    if n > len(pool):
        raise AnnotationError(
            f"annotation.annotators.per_comment is {n} but the annotator pool has only "
            f"{len(pool)} persona(s)"
        )
    rng = random.Random(derive_seed(seed, STAGE, "annotators", comment_id))
    chosen = set(rng.sample(range(len(pool)), n))
    return [p for i, p in enumerate(pool) if i in chosen]


def group_discussions(comments: Iterable[Comment]) -> dict[str, list[Comment]]:
    """Comments by discussion (first-appearance order), each sorted by index."""
    by: dict[str, list[Comment]] = {}
    for c in comments:
        by.setdefault(c.discussion_id, []).append(c)
    for cs in by.values():
        cs.sort(key=lambda c: c.index)
    return by


def count_tasks(comments: pa.Table, cfg: AnnotationConfig, pool_size: int) -> int:
    """How many tasks :func:`build_tasks` makes for ``comments``, without making them (so the
    annotate stage knows its total before it starts)."""
    roles = annotated_roles(cfg)
    rows = comments.select(["role", "text"]).to_pylist()
    targets = sum(r["role"] in roles and bool((r["text"] or "").strip()) for r in rows)
    per = cfg.annotators.per_comment
    per = pool_size if per == "all" else min(int(per), pool_size)
    return targets * per * len(cfg.dimensions)


def build_tasks(
    comments: Iterable[Comment] | pa.Table,
    cfg: AnnotationConfig,
    annotators: Sequence[Persona],
    seed: int,
) -> list[Task]:
    """Every task for these comments, comment-major (then annotator, then dimension).

    Comment-major order keeps the tasks that share a prompt prefix (same context and target)
    next to each other, which is what prefix caches reuse.
    """
    if isinstance(comments, pa.Table):
        comments = comments_from_table(comments)
    if not annotators:
        raise AnnotationError("the annotator pool is empty")
    ids = [p.id for p in annotators]
    if len(set(ids)) != len(ids):
        raise AnnotationError("annotator persona ids must be distinct")
    roles = annotated_roles(cfg)
    tasks: list[Task] = []
    for discussion in group_discussions(comments).values():
        for pos, target in enumerate(discussion):
            if target.role not in roles or not target.text.strip():
                continue
            # layout thread: every earlier comment; window: the last context_window of them.
            start = 0 if cfg.layout == "thread" else max(0, pos - cfg.context_window)
            # The OP stays in view (as for the speakers): a reply is judged against its thread.
            pinned = (discussion[0],) if start > 0 and discussion[0].role == "op" else ()
            context = (*pinned, *discussion[start:pos])
            for annotator in assign_annotators(
                target.comment_id, annotators, cfg.annotators.per_comment, seed
            ):
                for dim in cfg.dimensions:
                    tasks.append(
                        Task(
                            id=task_id(target.comment_id, annotator.id, dim),
                            target=target,
                            context=context,
                            annotator=annotator,
                            dimension=dim,
                        )
                    )
    return tasks
