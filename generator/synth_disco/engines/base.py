"""The engine contract: chat requests in, completions (or label scores) out.

Engines know nothing of discussions. A request carries its own seed so that its text never
depends on which other requests happen to share a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

FinishReason = Literal["stop", "length", "eos", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings for one request. ``temperature == 0`` means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to make. ``messages`` are ``{"role", "content"}`` dicts."""

    id: str
    messages: list[dict[str, str]]
    seed: int
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class Completion:
    """The engine's answer to one ``ChatRequest``; ``error`` is set when finish_reason is "error"."""

    id: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    error: str | None = None


@dataclass(frozen=True)
class ScoreRequest:
    """Rank fixed label strings as the assistant's answer to ``messages`` (one forward pass)."""

    id: str
    messages: list[dict[str, str]]
    labels: tuple[str, ...]


@dataclass(frozen=True)
class LabelScores:
    """Probability of each label (same order as the request's labels; sums to 1) and the argmax."""

    id: str
    probs: tuple[float, ...]
    label: str
    prompt_tokens: int = 0
    error: str | None = None


class Engine(Protocol):
    """What the runner needs from a model backend."""

    model_id: str  # the model as the recipe named it (hub id, path or "tiny"), for records
    revision: str | None

    def generate(self, requests: list[ChatRequest]) -> list[Completion]: ...

    def score(self, requests: list[ScoreRequest]) -> list[LabelScores]: ...

    def count_tokens(self, messages: list[dict[str, str]]) -> int: ...

    @property
    def max_context(self) -> int: ...

    def close(self) -> None: ...
