"""Batched chat generation with per-request seeded sampling and stop strings.

How a batch is made: requests are templated and tokenised, grouped by the settings that
``generate`` can only take per batch (``max_new_tokens``, ``repetition_penalty``, ``stop``),
sorted by prompt length, and cut into left-padded batches bounded by ``max_batch_size`` rows and
``max_batch_tokens`` padded tokens (prompt + new tokens). Temperature, top-k and top-p are
applied per row, so requests that differ only in those still share a batch. Each batch's prompts
are prefilled by :class:`~synth_disco.engines.hf.prefill.Prefiller` (stored prefixes reused).

Per-request seeded sampling: ``generate`` runs greedy (``do_sample=False``) with a logits
processor (:class:`~synth_disco.engines.hf.sampler.SeededSampler`) that, per row, applies
temperature, top-k and top-p and then adds Gumbel noise derived from a counter-based hash of
(request seed, decoding step, token id). The argmax of logits plus Gumbel noise is an exact
sample from the softmax, and the noise of a row never depends on the other rows, so a request's
text is a function of its seed and prompt alone, up to floating-point differences between batch
shapes and cache layouts: nil in practice in float32 on CPU (the tests and the benchmark check
exact equality), while in bfloat16 on GPU they can flip rare near-ties.

Continuous batching (``generate_batch``) is deliberately not used: in transformers 5.23 it
drops stop strings and repetition penalty, has a single global sampling seed, and with sdpa
builds a dense mask over the whole cache. It could only serve greedy requests without stop
strings on CUDA with a flash-attention kernel, which is not what discussion generation asks for.

A failing batch (out of memory or anything else) is halved and retried
(:meth:`~synth_disco.engines.common.Batcher.run_halving`); a request that fails alone gets
``finish_reason="error"`` and the others go on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    StoppingCriteriaList,
    StopStringCriteria,
)

from synth_disco.engines.base import ChatRequest, Completion
from synth_disco.engines.common import Batcher, all_done, error_completion, short
from synth_disco.engines.hf.load import LoadedModel
from synth_disco.engines.hf.prefill import Hit, Prefiller
from synth_disco.engines.hf.sampler import SeededSampler
from synth_disco.engines.sampling import check_params

log = logging.getLogger("synth_disco")


@dataclass
class GenItem:
    """One request to generate, with its position in the call and its prompt's token ids."""

    index: int
    request: ChatRequest
    ids: list[int]
    # The prompt's stored prefix as the call found it (``Prefiller.expect``).
    pinned: Hit = (0, None)


class Generator:
    """Generates completions for chat requests, batched within the engine's limits."""

    def __init__(self, lm: LoadedModel, prefiller: Prefiller, batcher: Batcher) -> None:
        self.lm = lm
        self.prefiller = prefiller
        self.batcher = batcher
        # Building stop criteria scans the whole vocabulary: once per stop tuple.
        self.stop_criteria: dict[tuple[str, ...], StopStringCriteria | None] = {}

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        """Complete every request; results come back in request order."""
        lm = self.lm
        results: list[Completion | None] = [None] * len(requests)
        groups: dict[tuple[int, float, tuple[str, ...]], list[GenItem]] = {}
        encoded = lm.encode_many([req.messages for req in requests])
        for i, req in enumerate(requests):
            p = req.params
            problem = check_params(p)
            ids: list[int] = []
            if problem is None:
                try:
                    ids = encoded[i] if encoded[i] is not None else lm.encode(req.messages)
                except Exception as exc:
                    problem = f"cannot apply the chat template: {short(exc)}"
            if problem is None and len(ids) + p.max_new_tokens > lm.max_context:
                problem = (
                    f"prompt of {len(ids)} tokens exceeds the model context of "
                    f"{lm.max_context} (with max_new_tokens={p.max_new_tokens})"
                )
            if problem is not None:
                results[i] = error_completion(req.id, len(ids), problem)
                continue
            key = (p.max_new_tokens, float(p.repetition_penalty), tuple(p.stop))
            groups.setdefault(key, []).append(GenItem(i, req, ids))

        every = [it for items in groups.values() for it in items]
        found = self.prefiller.expect(
            [it.ids for it in every], [it.request.keep_prefix for it in every]
        )
        for it, hit in zip(every, found, strict=True):
            it.pinned = hit
        for (max_new, penalty, stop), items in groups.items():
            items.sort(key=lambda it: (len(it.ids), it.index))

            def run(batch: list[GenItem], m=max_new, r=penalty, s=stop) -> None:
                for item, done in zip(batch, self.generate_batch(batch, m, r, s), strict=True):
                    results[item.index] = done

            def fail(item: GenItem, exc: BaseException) -> None:
                results[item.index] = error_completion(item.request.id, len(item.ids), short(exc))

            def padded(batch: list[GenItem], m=max_new) -> int:
                return len(batch) * (max(len(it.ids) for it in batch) + m)

            for batch in self.batcher.chunks(items, lambda it, m=max_new: len(it.ids) + m):
                self.batcher.run_halving(batch, run, fail, padded)
        return all_done(results)

    def generate_batch(
        self,
        items: list[GenItem],
        max_new_tokens: int,
        repetition_penalty: float,
        stop: tuple[str, ...],
    ) -> list[Completion]:
        """Generate one padded batch (the unit that out-of-memory handling halves)."""
        lm = self.lm
        input_ids, mask = lm.left_pad([it.ids for it in items])
        prompt_len = input_ids.shape[1]
        params = [it.request.params for it in items]
        processors = LogitsProcessorList()
        if any(p.temperature > 0 for p in params):
            processors.append(
                SeededSampler(
                    seeds=[it.request.seed for it in items],
                    temperature=[p.temperature for p in params],
                    top_k=[p.top_k for p in params],
                    top_p=[p.top_p for p in params],
                    prompt_len=prompt_len,
                    vocab_size=len(lm.tokenizer),
                    device=input_ids.device,
                )
            )
        stopping = self._stopping(stop) if stop else None
        criteria = StoppingCriteriaList([stopping] if stopping is not None else [])
        with torch.inference_mode():
            # Room for the last prompt token (generate runs it) and the new tokens.
            cache = self.prefiller.prefill(
                [it.ids for it in items],
                prompt_len,
                keep=[it.request.keep_prefix for it in items],
                pinned=[it.pinned for it in items],
                room=max_new_tokens + 1,
            )
            for it in items:  # used: let evicted states go (a retry looks them up again)
                it.pinned = (0, None)
            out = lm.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                cache=cache,
                generation_config=self._generation_config(max_new_tokens, repetition_penalty),
                logits_processor=processors,
                stopping_criteria=criteria,
            )
        rows = out[:, prompt_len:].tolist()
        return [
            self._finish(it, row, max_new_tokens, stop) for it, row in zip(items, rows, strict=True)
        ]

    def _generation_config(
        self, max_new_tokens: int, repetition_penalty: float
    ) -> GenerationConfig:
        # Explicit values override the model's own generation config (which may ask for
        # sampling); unset ones such as suppress_tokens are still taken from it.
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            temperature=1.0,
            top_p=1.0,
            top_k=50,  # the library default: any other value warns when not sampling
            repetition_penalty=repetition_penalty,
            eos_token_id=self.lm.eos_ids or None,
            pad_token_id=self.lm.pad_id,
            use_cache=True,
        )

    def _stopping(self, stop: tuple[str, ...]) -> StopStringCriteria | None:
        """The criteria that end generation at a stop string, or None when the tokenizer
        cannot express one (a word-level tokenizer has no token for "\n"): then generation
        runs to its end and ``_finish`` still cuts the text at the first stop string."""
        if stop not in self.stop_criteria:
            try:
                self.stop_criteria[stop] = StopStringCriteria(self.lm.tokenizer, list(stop))
            except Exception as exc:  # transformers raises ValueError, IndexError, ...
                log.warning(
                    "stop strings %s cannot be matched token by token (%s): replies are cut "
                    "after generating",
                    list(stop),
                    short(exc),
                )
                self.stop_criteria[stop] = None
        return self.stop_criteria[stop]

    def _finish(
        self, item: GenItem, row: list[int], max_new_tokens: int, stop: tuple[str, ...]
    ) -> Completion:
        """Turn one generated row into a Completion: cut at eos / first stop string."""
        lm = self.lm
        eos = set(lm.eos_ids)
        eos_at = next((j for j, t in enumerate(row) if t in eos), None)
        body = row if eos_at is None else row[:eos_at]
        text = lm.decode(body)
        n_prompt = len(item.ids)
        if stop:
            hits = [text.find(s) for s in stop if s and s in text]
            if hits:
                used = self._tokens_until_stop(body, stop)
                return Completion(item.request.id, text[: min(hits)], n_prompt, used, "stop")
        if eos_at is not None:
            return Completion(item.request.id, text, n_prompt, eos_at + 1, "eos")
        if len(row) >= max_new_tokens:
            return Completion(item.request.id, text, n_prompt, len(row), "length")
        # Stopped early without eos or a stop string in the reply: the stop string began in
        # the prompt. Trailing pad tokens are what the finished row was filled with.
        used = len(row)
        while used and row[used - 1] == lm.pad_id:
            used -= 1
        return Completion(item.request.id, lm.decode(row[:used]), n_prompt, used, "stop")

    def _tokens_until_stop(self, ids: list[int], stop: tuple[str, ...]) -> int:
        """Fewest leading tokens whose text contains a stop string (binary search)."""
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            text = self.lm.decode(ids[:mid])
            if any(s and s in text for s in stop):
                hi = mid
            else:
                lo = mid + 1
        return hi
