"""The interface the discuss stage drives: a discussion as a replayable state machine.

A forum thread (``state.DiscussionState``) and a deliberation structure
(``structure_state.StructureState``) are driven the same way:

- ``next_requests()``: every request the discussion can make now, each with the model that
  must answer it. A forum waits on one turn at a time; a structure may wait on several (all
  agents of an ensemble's cycle, a level of a graph, and the combiner's `auto` instructions
  alongside the first agents). An empty list means nothing is left to ask.
- ``apply_all(completions)``: the engine's answers to the last ``next_requests()``, in the
  same order; returns the journal records they make (absorbed as they are made).
- ``absorb(record)``: apply one journal record; replaying a discussion's records rebuilds its
  state, so resuming after a crash is replaying. ``settle()`` adds the end record a crash
  may have cut off.
- ``done``, ``status``, ``error``, ``comments``, ``events`` and ``discussion_row(factors)``:
  what the stage writes when the discussion ends.

A request's text and seed depend only on the discussion (never on which requests share the
engine call), so the stage may batch any mix of discussions and requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from synth_disco.engines.base import ChatRequest, Completion, SamplingParams
from synth_disco.recipe.schema import ModelConfig
from synth_disco.records import Comment, DiscussionSpec, Event


@dataclass(frozen=True)
class Ask:
    """One request a discussion waits on, and the model config that must answer it."""

    request: ChatRequest
    model: ModelConfig


class Conversation(Protocol):
    """What the discuss stage needs of one discussion (see the module docstring)."""

    spec: DiscussionSpec
    comments: list[Comment]
    events: list[Event]
    status: str
    error: str | None

    @property
    def done(self) -> bool: ...

    def next_requests(self) -> list[Ask]: ...

    def apply_all(self, completions: list[Completion]) -> list[dict[str, Any]]: ...

    def absorb(self, record: dict[str, Any]) -> None: ...

    def settle(self) -> list[dict[str, Any]]: ...

    def discussion_row(self, factors: list[str]) -> dict[str, Any]: ...

    def prompts(self) -> list[Any]: ...


def spec_columns(spec: DiscussionSpec, factors: list[str]) -> dict[str, Any]:
    """The ``discussions`` columns a discussion's plan decides (its place in the design, its
    post and its participants), the same for a forum thread and a structure."""
    return {
        "discussion_id": spec.discussion_id,
        "index": spec.index,
        "cell_id": spec.cell_id,
        **{f: spec.cell.get(f) for f in factors},
        "replicate": spec.replicate,
        "seed": spec.seed,
        "post_id": spec.post.id,
        "title": spec.post.title,
        "op": spec.post.op.text,
        "op_author": spec.post.op.author,
        "seed_comments": [{"author": c.author, "text": c.text} for c in spec.post.comments[1:]],
        "participants": [p.to_dict() for p in spec.participants],
    }


def generation_column(params: SamplingParams) -> str:
    """The ``discussions.generation`` column: the decoding settings the participants' turns
    were asked with, as canonical JSON (the same for a forum thread and a structure)."""
    return json.dumps(
        {
            "max_new_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "repetition_penalty": params.repetition_penalty,
            "stop": list(params.stop),
        },
        sort_keys=True,
    )


def comment_row(comment: Comment) -> dict[str, Any]:
    """A comment as a row of the ``comments`` table. Forum comments have no cycle or
    position; their ``parent_ids`` is the one comment they reply to."""
    row = comment.to_dict()
    if "parent_ids" not in row:
        row["parent_ids"] = [comment.parent_id] if comment.parent_id else []
    return row
