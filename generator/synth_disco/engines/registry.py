"""Which engines exist, and loading one from an :class:`~synth_disco.engines.base.EngineConfig`.

An engine is a module that defines ``load(config: EngineConfig) -> Engine``, plus one entry in
:data:`ENGINES` naming that module and the config keys the engine reads. The module is imported
only when its engine is loaded, so naming the engines (a recipe check, a plan) never imports
torch or an engine's other libraries.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

from synth_disco.engines.base import LOAD_FIELDS, Engine, EngineConfig, EngineLoadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineEntry:
    """One engine: the module whose ``load(config)`` builds it, and the config keys it reads
    (a key it does not read must be left at its default, or it is ignored with a warning)."""

    module: str
    accepts: frozenset[str]

    def ignored(self, config: EngineConfig) -> list[str]:
        """The keys ``config`` sets that this engine does not read, sorted."""
        return sorted(config.non_defaults() - self.accepts)

    def load(self, config: EngineConfig) -> Engine:
        return importlib.import_module(self.module).load(config)


ENGINES: dict[str, EngineEntry] = {
    # Any transformers causal LM with a chat template (hub id or local path).
    "transformers": EngineEntry("synth_disco.engines.hf", accepts=LOAD_FIELDS),
    # The built-in random tiny model, "tiny" or "tiny:<seed>": offline, float32, for tests.
    "tiny": EngineEntry(
        "synth_disco.engines.tiny",
        accepts=frozenset(
            {
                "engine",
                "model",
                "device",
                "chat_template",
                "max_batch_size",
                "max_batch_tokens",
                "prefix_cache_mb",
            }
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
    ),
}

ENGINE_NAMES: tuple[str, ...] = tuple(ENGINES)


def load_engine(config: EngineConfig) -> Engine:
    """Build the engine named by ``config.engine``.

    Raises :class:`~synth_disco.engines.base.EngineLoadError` for an unknown engine or a
    model that cannot be loaded.
    """
    entry = ENGINES.get(config.engine)
    if entry is None:
        raise EngineLoadError(
            f"unknown engine {config.engine!r}: use one of {', '.join(ENGINE_NAMES)}"
        )
    ignored = entry.ignored(config)
    if ignored:
        log.warning("the %s engine ignores %s", config.engine, ", ".join(ignored))
    return entry.load(config)
