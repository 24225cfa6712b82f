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
class ThreadQuestion:
    """One label to score about a prefix of a :class:`ThreadScoreRequest`'s segments."""

    id: str
    after: int  # index of the last segment the question sees
    text: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class ThreadScoreRequest:
    """Many :class:`ScoreRequest` that read growing prefixes of one conversation.

    Question ``q`` asks about ``system`` plus a user message made of ``head``, the segments up
    to ``q.after`` and ``q.text`` (:meth:`messages`). An engine may score all questions of a
    request in one pass, computing the shared segments once; it then tokenises ``head``, each
    segment and each question on their own, which can differ from tokenising the joined text
    at the boundaries (one token merge at most per boundary).
    """

    system: str
    head: str
    segments: tuple[str, ...]
    questions: tuple[ThreadQuestion, ...]

    def messages(self, q: ThreadQuestion, first: int = 0) -> list[dict[str, str]]:
        """The chat messages of question ``q``; ``first`` drops the segments before it."""
        body = "".join(self.segments[first : q.after + 1])
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.head + body + q.text},
        ]


def score_threads_by_prompts(
    engine: Engine, requests: list[ThreadScoreRequest]
) -> list[LabelScores]:
    """The reference for ``score_threads``: every question as its own :class:`ScoreRequest`.

    Engines without a one-pass implementation are scored this way; results come in request
    order, then question order.
    """
    flat = [
        ScoreRequest(id=q.id, messages=req.messages(q), labels=q.labels)
        for req in requests
        for q in req.questions
    ]
    return engine.score(flat) if flat else []


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

    # Optional: ``score_threads(requests: list[ThreadScoreRequest]) -> list[LabelScores]``,
    # results in request order then question order, as :func:`score_threads_by_prompts` gives.

    @property
    def max_context(self) -> int: ...

    def close(self) -> None: ...
