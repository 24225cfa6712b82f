"""The engine contract: chat requests in, completions (or label scores) out.

Engines know nothing of discussions. A request carries its own seed and decoding settings, so
that its text never depends on which other requests share a batch, nor on which model config
happened to load the engine (configs that differ only in decoding share one engine). What an
engine is loaded with is an :class:`EngineConfig`; optional methods are declared in its
:class:`Capabilities`, not probed for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal, Protocol

from synth_disco.errors import SynthDiscoError

FinishReason = Literal["stop", "length", "eos", "error"]


class EngineLoadError(SynthDiscoError):
    """A model or tokenizer could not be loaded; the message names the model and the fix.

    Exit code 2: the model named (or how it is to be loaded) is wrong input, not a crash.
    """

    exit_code = 2


@dataclass(frozen=True)
class EngineConfig:
    """What an engine is loaded with: the settings that decide which weights are loaded and how.

    Decoding settings are not here: they travel with each request (:class:`SamplingParams`).
    ``None`` means the engine's own default (a device: CUDA when available; a prefix cache
    budget: sized to the model).
    """

    model: str  # hub id, local path, or "tiny" / "tiny:<seed>" for the tiny engine
    engine: str = "transformers"  # a name in engines.registry.ENGINES
    revision: str | None = None
    dtype: str = "auto"  # auto, float32, bfloat16, float16
    device: str | None = None  # "cpu", "cuda", "cuda:1"
    device_map: str | dict[str, Any] | None = None  # e.g. "auto": spread over GPUs
    trust_remote_code: bool = False
    chat_template: str | None = None  # overrides the tokenizer's
    max_batch_size: int = 512
    max_batch_tokens: int | None = None  # padded tokens (prompt + new) in one batch
    prefix_cache_mb: float | None = None  # 0 turns prompt prefix reuse off
    # transformers: the GGUF file to load from the directory or Hub repo named by ``model``
    # (a ``model`` ending in ``.gguf`` names its file itself).
    gguf_file: str | None = None
    # vllm: keyword arguments for ``vllm.LLM``, passed as they are.
    engine_args: Mapping[str, Any] | None = None
    # openai: the server roots (replicas of one model), the environment variable holding the
    # API key, and how requests are sent (None: the engine's defaults, see engines.openai).
    base_url: tuple[str, ...] = ()
    api_key_env: str | None = None
    max_in_flight: int | None = None
    timeout_s: float | None = None
    connect_timeout_s: float | None = None
    max_retries: int | None = None
    backoff_initial_s: float | None = None
    backoff_max_s: float | None = None
    top_logprobs: int | None = None

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if isinstance(self.base_url, str):  # one server given as a string
            object.__setattr__(self, "base_url", (self.base_url,))
        elif not isinstance(self.base_url, tuple):
            object.__setattr__(self, "base_url", tuple(self.base_url))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> EngineConfig:
        """The config in ``values`` (e.g. a recipe's model config as a dict): keys that are
        not load settings (decoding settings, ...) are ignored, ``None`` keeps the default."""
        given = {k: values[k] for k in LOAD_FIELDS if values.get(k) is not None}
        return cls(**given)

    def non_defaults(self) -> set[str]:
        """Names of the fields set to something other than their default."""
        return {
            f.name
            for f in fields(self)
            if f.default is MISSING or getattr(self, f.name) != f.default
        }


# The model settings that decide which engine is loaded: configs equal in these share one.
LOAD_FIELDS = frozenset(f.name for f in fields(EngineConfig))


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
    """One chat completion to make. ``messages`` are ``{"role", "content"}`` dicts.

    ``keep_prefix`` says whether a later request may begin with this prompt (the same agent's
    next cycle, the same speaker's next turn). False is a hint for an engine that keeps prompt
    states for reuse: keeping these would only evict states a later request will use. It never
    changes what is generated.
    """

    id: str
    messages: list[dict[str, str]]
    seed: int
    params: SamplingParams = field(default_factory=SamplingParams)
    keep_prefix: bool = True


@dataclass(frozen=True)
class Completion:
    """The engine's answer to one ``ChatRequest``; ``error`` is set when finish_reason is "error"."""

    id: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    error: str | None = None
    # The model that answered, as the engine reports it (a server names the model, or the
    # dated snapshot, that answered); None: the model as configured.
    model: str | None = None


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


class Scores(Protocol):
    """Anything that scores labels as an :class:`Engine` does (an engine, or a part of one)."""

    def score(self, requests: list[ScoreRequest]) -> list[LabelScores]: ...


def score_threads_by_prompts(
    engine: Scores, requests: list[ThreadScoreRequest]
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


@dataclass(frozen=True)
class Capabilities:
    """The optional methods an engine implements, declared as its ``capabilities``.

    ``score_threads(requests: list[ThreadScoreRequest]) -> list[LabelScores]``: results in
    request order then question order, as :func:`score_threads_by_prompts` gives them.

    ``seeded_sampling`` is a promise rather than a method: a sampled reply is a function of
    the request and its seed alone (the same seed gives the same text again, whichever
    requests share the call). An engine that sends seeds to a server it does not control
    cannot promise it.
    """

    score_threads: bool = False
    seeded_sampling: bool = False


class Engine(Protocol):
    """What the stages need from a model backend."""

    model_id: str  # the model as the recipe named it (hub id, path or "tiny"), for records
    revision: str | None
    capabilities: Capabilities

    def generate(self, requests: list[ChatRequest]) -> list[Completion]: ...

    def score(self, requests: list[ScoreRequest]) -> list[LabelScores]: ...

    def count_tokens(self, messages: list[dict[str, str]]) -> int: ...

    @property
    def max_context(self) -> int: ...

    def close(self) -> None: ...


def capabilities_of(engine: object) -> Capabilities:
    """What ``engine`` declares it can do beyond the required methods; an engine (or test
    double) that declares nothing can do nothing more."""
    declared = getattr(engine, "capabilities", None)
    return declared if isinstance(declared, Capabilities) else Capabilities()
