"""Model engines: turn chat requests into completions and label scores.

``load_engine(cfg)`` picks the engine named by the recipe's model config. The transformers
engine (and torch) are imported only when an engine is loaded, so importing the contract in
:mod:`synth_disco.engines.base` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from synth_disco.engines.base import (
    ChatRequest,
    Completion,
    Engine,
    FinishReason,
    LabelScores,
    SamplingParams,
    ScoreRequest,
)
from synth_disco.engines.errors import EngineLoadError

if TYPE_CHECKING:
    from synth_disco.engines.hf import TransformersEngine
    from synth_disco.engines.tiny import ensure_tiny_model

ENGINES = ("transformers", "tiny")

__all__ = [
    "ENGINES",
    "ChatRequest",
    "Completion",
    "Engine",
    "EngineLoadError",
    "FinishReason",
    "LabelScores",
    "SamplingParams",
    "ScoreRequest",
    "TransformersEngine",
    "ensure_tiny_model",
    "load_engine",
    "sampling_params_from",
    "tiny_seed",
]


def __getattr__(name: str) -> Any:
    # Lazy exports: torch and transformers load only when an engine is actually used.
    if name == "TransformersEngine":
        from synth_disco.engines.hf import TransformersEngine

        return TransformersEngine
    if name == "ensure_tiny_model":
        from synth_disco.engines.tiny import ensure_tiny_model

        return ensure_tiny_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sampling_params_from(cfg: Any) -> SamplingParams:
    """The recipe's default decoding settings (unset attributes keep SamplingParams defaults)."""
    defaults = SamplingParams()

    def pick(name: str) -> Any:
        value = getattr(cfg, name, None)
        return getattr(defaults, name) if value is None else value

    return SamplingParams(
        max_new_tokens=int(pick("max_new_tokens")),
        temperature=float(pick("temperature")),
        top_p=float(pick("top_p")),
        top_k=int(pick("top_k")),
        repetition_penalty=float(pick("repetition_penalty")),
        stop=tuple(pick("stop")),
    )


def tiny_seed(model: str | None) -> int:
    """The seed in a tiny model name: "tiny" -> 0, "tiny:3" -> 3."""
    name = (model or "tiny").strip()
    head, _, tail = name.partition(":")
    if head != "tiny" or (tail and not tail.lstrip("-").isdigit()):
        raise EngineLoadError(f"tiny engine model must be 'tiny' or 'tiny:<seed>', got {model!r}")
    return int(tail) if tail else 0


def load_engine(cfg: Any) -> Engine:
    """Build the engine named by ``cfg.engine`` ("transformers" or "tiny").

    "tiny" builds (once, cached) the random tiny model for the seed in ``cfg.model`` and loads it
    through the transformers engine, in float32 on the CPU unless ``cfg.device`` says otherwise.
    """
    from synth_disco.engines.hf import TransformersEngine

    kind = getattr(cfg, "engine", "transformers")
    if kind == "transformers":
        return TransformersEngine.from_config(cfg)
    if kind == "tiny":
        from synth_disco.engines.tiny import ensure_tiny_model

        path = ensure_tiny_model(tiny_seed(getattr(cfg, "model", None)))
        return TransformersEngine(
            str(path),
            model_id=getattr(cfg, "model", None) or "tiny",
            dtype="float32",
            device=getattr(cfg, "device", None) or "cpu",
            chat_template=getattr(cfg, "chat_template", None),
            max_batch_size=getattr(cfg, "max_batch_size", None) or 64,
            max_batch_tokens=getattr(cfg, "max_batch_tokens", None),
            default_params=sampling_params_from(cfg),
            prefix_cache_mb=getattr(cfg, "prefix_cache_mb", None),
        )
    raise EngineLoadError(f"unknown engine {kind!r}: use one of {', '.join(ENGINES)}")
