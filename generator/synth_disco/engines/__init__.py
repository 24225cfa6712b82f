"""Model engines: turn chat requests into completions and label scores.

- :mod:`~synth_disco.engines.base`: the contract (requests, results, :class:`EngineConfig`,
  the :class:`Engine` protocol and its declared :class:`Capabilities`);
- :mod:`~synth_disco.engines.registry`: the engine names and :func:`load_engine`;
- :mod:`~synth_disco.engines.sampling`: a model config's decoding settings, and their check;
- :mod:`~synth_disco.engines.common`: what engines share (error results, batching, halving);
- :mod:`~synth_disco.engines.hf`: the transformers engine; :mod:`~synth_disco.engines.tiny`:
  the built-in tiny model.

Importing this package (or any module above but ``hf``) never imports torch: an engine's
module is imported when the engine is loaded.
"""

from __future__ import annotations

from synth_disco.engines.base import (
    Capabilities,
    ChatRequest,
    Completion,
    Engine,
    EngineConfig,
    EngineLoadError,
    FinishReason,
    LabelScores,
    SamplingParams,
    ScoreRequest,
    ThreadQuestion,
    ThreadScoreRequest,
)
from synth_disco.engines.registry import ENGINE_NAMES, load_engine
from synth_disco.engines.sampling import sampling_params_from

__all__ = [
    "ENGINE_NAMES",
    "Capabilities",
    "ChatRequest",
    "Completion",
    "Engine",
    "EngineConfig",
    "EngineLoadError",
    "FinishReason",
    "LabelScores",
    "SamplingParams",
    "ScoreRequest",
    "ThreadQuestion",
    "ThreadScoreRequest",
    "load_engine",
    "sampling_params_from",
]
