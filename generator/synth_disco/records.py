"""Plain records passed between the pipeline steps (personas, posts, specs, comments, labels).

They are frozen dataclasses so that a record read back from a journal or a shard equals the
one that was written, and ``to_dict`` gives the row that goes into parquet.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class Persona:
    """A person a participant or annotator plays. ``fields`` keeps the source's attributes."""

    id: str
    name: str
    description: str = ""
    fields: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "fields": [{"key": k, "value": v} for k, v in self.fields],
        }


@dataclass(frozen=True)
class SeedComment:
    """A comment that exists before the discussion starts (the OP or a seed reply)."""

    author: str
    text: str


@dataclass(frozen=True)
class Post:
    """An original post, optionally followed by seed comments: ``comments[0]`` is the OP."""

    id: str
    comments: tuple[SeedComment, ...]
    title: str = ""

    @property
    def op(self) -> SeedComment:
        return self.comments[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "comments": [{"author": c.author, "text": c.text} for c in self.comments],
        }


@dataclass(frozen=True)
class Participant:
    """A user-agent in one discussion: its display name, persona and instruction variant."""

    name: str
    persona: Persona
    variant: str
    instructions: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "persona": self.persona.to_dict(),
            "variant": self.variant,
            "instructions": self.instructions,
        }


@dataclass(frozen=True)
class DiscussionSpec:
    """One planned discussion: everything needed to run it, independent of any other."""

    discussion_id: str
    index: int  # position in plan order
    cell_id: str
    cell: dict[str, str]  # factor -> level
    replicate: int
    seed: int
    shard: int
    post: Post
    participants: tuple[Participant, ...]
    config: dict[str, Any]  # the resolved recipe for this cell (factor patches applied)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["post"] = self.post.to_dict()
        d["participants"] = [p.to_dict() for p in self.participants]
        return d


@dataclass(frozen=True)
class Comment:
    """One comment of a discussion as written to the ``comments`` table."""

    discussion_id: str
    comment_id: str
    index: int
    parent_id: str | None
    author: str
    role: str  # "op" | "seed" | "user" | "moderator"
    persona_id: str | None
    variant: str | None
    text: str
    raw_text: str
    model: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    attempts: int = 1
    flags: list[str] = field(default_factory=list)  # quality flags (discussion/quality/)
    prompt_id: str | None = None  # the Prompt it was generated from (None for the OP, seeds)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))  # flat record: a shallow copy is the row (asdict is slow)


@dataclass(frozen=True)
class Response(Comment):
    """A comment of a deliberation structure: where it stands and what its author was shown.

    ``cycle`` is 1-based and ``position`` the 0-based place of its author in that cycle's
    order (both None for the combiner's final response); ``parent_ids`` are the comments the
    author was shown (the task when it was shown no response). ``parent_id`` is the last of
    them."""

    cycle: int | None = None
    position: int | None = None
    parent_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        row = dict(vars(self))
        row["parent_ids"] = list(self.parent_ids)
        return row


@dataclass(frozen=True)
class Event:
    """Something that happened in a discussion but is not a comment (e.g. moderator passed)."""

    discussion_id: str
    index: int  # the comment index at which it happened
    kind: str  # "no_intervention" | "failed_turn" | "regenerated"
    author: str
    detail: str = ""
    raw_text: str = ""
    attempt: int = 1  # which attempt of the turn this was (1 = the first)
    flags: list[str] = field(default_factory=list)  # "regenerated": the flags it raised

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))  # flat record: a shallow copy is the row (asdict is slow)


@dataclass(frozen=True)
class Prompt:
    """What a comment or a label was generated from, as the ``prompts`` config publishes it:
    the rendered system message and the template sources of the user message (which is
    rendered from them with the row's own context: the comments before it, the speaker or the
    annotator). ``id`` is a hash of all three, so the same prompt has the same id in any run.
    """

    role: str  # "participant" | "moderator" | "annotator"
    system: str
    templates: tuple[tuple[str, str], ...]  # (name, Jinja source)

    @cached_property  # every response of an agent asks for it
    def id(self) -> str:
        data = json.dumps([self.role, self.system, self.templates], ensure_ascii=False)
        return hashlib.sha256(data.encode("utf-8")).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_id": self.id,
            "role": self.role,
            "system": self.system,
            "templates": [{"name": n, "text": t} for n, t in self.templates],
        }
