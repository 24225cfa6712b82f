"""The ``openai`` engine: any OpenAI-compatible server (``vllm serve``, SGLang, TGI, llama.cpp's
server, hosted APIs), one server or a list of replicas.

One idea per module:

- :mod:`~synth_disco.engines.openai.config`: :class:`OpenAIConfig` and its checks;
- :mod:`~synth_disco.engines.openai.errors`: what stops a build (:class:`EndpointError`) and
  what becomes a failed result;
- :mod:`~synth_disco.engines.openai.transport`: the replicas, retries with backoff and
  ``Retry-After``, the hidden API key;
- :mod:`~synth_disco.engines.openai.loop`: the private event loop that keeps requests in
  flight behind synchronous methods;
- :mod:`~synth_disco.engines.openai.tokens`: token counts from the server's ``/tokenize``;
- :mod:`~synth_disco.engines.openai.scoring`: label scores from log-probabilities;
- :mod:`~synth_disco.engines.openai.engine`: :class:`OpenAIEngine`, what a build calls.
"""

from __future__ import annotations

from synth_disco.engines.openai.config import OpenAIConfig, OpenAIConfigError
from synth_disco.engines.openai.engine import REPRODUCIBILITY, OpenAIEngine, load
from synth_disco.engines.openai.errors import (
    ContextUnknownError,
    EndpointError,
    ScoreUnsupportedError,
)

__all__ = [
    "REPRODUCIBILITY",
    "ContextUnknownError",
    "EndpointError",
    "OpenAIConfig",
    "OpenAIConfigError",
    "OpenAIEngine",
    "ScoreUnsupportedError",
    "load",
]
