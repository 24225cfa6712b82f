"""The comment being judged (``CommentCheck``: everything a flag may look at) and a flag's
record (``Flag``). Every rule module takes a ``CommentCheck``; ``flags`` holds the registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from synth_disco.recipe.quality import QualityConfig


@dataclass(frozen=True)
class CommentCheck:
    """Everything a flag may look at (``flag_comment``'s arguments)."""

    text: str
    finish_reason: str
    earlier: Sequence[str]
    persona_values: Sequence[str]
    participant_names: Sequence[str]
    scaffolding: Sequence[str]
    config: QualityConfig = field(default_factory=QualityConfig)


@dataclass(frozen=True)
class Flag:
    """A flag: its column value, its one-line meaning for the dataset card (a format string
    over ``QualityConfig``'s fields, see ``flag_docs``) and its check."""

    name: str
    meaning: str
    check: Callable[[CommentCheck], bool]
