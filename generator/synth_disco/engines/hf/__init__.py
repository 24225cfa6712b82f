"""The transformers engine: batched chat generation and label scoring with any causal LM.

:class:`TransformersEngine` is a small facade over its parts, one idea per module:

- :mod:`~synth_disco.engines.hf.load`: the model and tokenizer, and the facts read off them;
- :mod:`~synth_disco.engines.hf.generate`: batched generation, seeded sampling
  (:mod:`~synth_disco.engines.hf.sampler`), stop strings, and why continuous batching is not
  used;
- :mod:`~synth_disco.engines.hf.prefill`: prompt prefill reusing stored prefixes
  (:mod:`~synth_disco.engines.hf.prefix_cache`);
- :mod:`~synth_disco.engines.hf.score`: label scoring;
- :mod:`~synth_disco.engines.hf.thread_score`: packed thread scoring
  (:mod:`~synth_disco.engines.hf.thread_pack`).

Every part batches through one :class:`~synth_disco.engines.common.Batcher`: CUDA
out-of-memory (and any other failure) in a batch halves the batch and retries, down to a
single request, which then gets an error result; the others go on. Out-of-memory also empties
the prefix store and lowers a padded-token budget that bounds later batches.
"""

from __future__ import annotations

import gc
from typing import Any

import torch
import transformers

from synth_disco.engines.base import (
    Capabilities,
    ChatRequest,
    Completion,
    EngineConfig,
    LabelScores,
    ScoreRequest,
    ThreadScoreRequest,
)
from synth_disco.engines.common import FROZEN_HEAP, Batcher
from synth_disco.engines.hf.generate import Generator
from synth_disco.engines.hf.load import LoadedModel, cpu_batch_tokens, load_model, record_name
from synth_disco.engines.hf.prefill import Prefiller
from synth_disco.engines.hf.score import LabelScorer
from synth_disco.engines.hf.thread_score import ThreadScorer
from synth_disco.engines.registry import ENGINES

__all__ = ["TransformersEngine", "load"]


class TransformersEngine:
    """The :class:`~synth_disco.engines.base.Engine` for transformers causal language models.

    ``lm`` is the loaded model and tokenizer (:class:`~synth_disco.engines.hf.load.LoadedModel`)
    for benchmarks that drive the model directly.
    """

    capabilities = Capabilities(score_threads=True, seeded_sampling=True)

    def __init__(self, config: EngineConfig, *, model_id: str | None = None) -> None:
        """Load ``config.model`` (hub id or local path). Raises
        :class:`~synth_disco.engines.base.EngineLoadError` when it cannot be loaded.

        ``model_id`` is the name kept for records (defaults to ``config.model``).
        """
        self.config = config
        self.model_id = model_id or config.model
        self.revision = config.revision
        self.lm: LoadedModel = load_model(config, record_name(self.model_id))
        batch_tokens = config.max_batch_tokens
        if batch_tokens is None and self.lm.device.type == "cpu":
            batch_tokens = cpu_batch_tokens(self.lm.kv_bytes_per_token)
        self._batcher = Batcher(config.max_batch_size, batch_tokens, self._free_memory)
        self._prefill = Prefiller(self.lm, config.prefix_cache_mb)
        self._generator = Generator(self.lm, self._prefill, self._batcher)
        self._scorer = LabelScorer(self.lm, self._prefill, self._batcher)
        self._threads = ThreadScorer(self.lm, self._prefill, self._batcher, self._scorer)
        self._closed = False
        FROZEN_HEAP.hold()  # until close(): see FrozenHeap

    @property
    def max_context(self) -> int:
        """Longest sequence (prompt + new tokens) the model accepts."""
        return self.lm.max_context

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        """Complete every request; results come back in request order."""
        self._check_open()
        return self._generator.generate(requests)

    def score(self, requests: list[ScoreRequest]) -> list[LabelScores]:
        """Probability of each label as the assistant's reply, in label order."""
        self._check_open()
        return self._scorer.score(requests)

    def score_threads(self, requests: list[ThreadScoreRequest]) -> list[LabelScores]:
        """Score every question of each request, running each conversation's tokens once;
        results in request order, then question order (see :mod:`.thread_score`)."""
        self._check_open()
        return self._threads.score_threads(requests)

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens of ``messages`` as templated for generation."""
        return len(self.lm.encode(messages))

    def engine_info(self) -> dict[str, Any]:
        """What to record about the engine (no local paths)."""
        return {
            "engine": "transformers",
            "name": record_name(self.model_id),
            "gguf_file": self.lm.gguf_file,
            "revision": self.revision,
            "commit": self.lm.commit,
            "dtype": str(self.lm.model.dtype).removeprefix("torch.") if not self._closed else None,
            "device": str(self.lm.device),
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__.split("+")[0],
            "reproducibility": ENGINES["transformers"].reproducibility,
        }

    def prefix_stats(self) -> dict[str, int]:
        """Prompt tokens served from the prefix store vs computed, and its size."""
        return self._prefill.stats()

    def close(self) -> None:
        """Release the model and its memory; the engine cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        FROZEN_HEAP.release()
        del self.lm.model
        self._generator.stop_criteria.clear()
        self._prefill.forget()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("engine is closed")

    def _free_memory(self) -> None:
        """After running out of memory: drop the stored prefixes and the allocator's cache."""
        self._prefill.forget()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load(config: EngineConfig) -> TransformersEngine:
    """The registry's entry point for ``engine: transformers``."""
    return TransformersEngine(config)
