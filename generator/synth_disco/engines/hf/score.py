"""Label scoring: the probability of each fixed label string as the assistant's reply.

Labels with distinct first tokens (the usual case: "1".."5", "yes"/"no") are scored from one
forward pass per prompt, as a softmax over those first tokens' logits; the prompt goes through
the prefix-cached prefill, so prompts repeating another prompt of the call (the same comment
for another annotator) only run their differing tail. Labels sharing a first token are scored
as whole sequences: the sum of each label's token log-probabilities, softmaxed over labels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from synth_disco.engines.base import LabelScores, ScoreRequest
from synth_disco.engines.common import Batcher, all_done, error_scores, short
from synth_disco.engines.hf.load import LoadedModel
from synth_disco.engines.hf.prefill import Prefiller


@dataclass
class _ScoreRow:
    index: int  # request position
    label: int  # label position (multi-token path) or -1 (first-token path)
    prompt: list[int]
    label_ids: list[int]  # empty on the first-token path


def label_scores(req: ScoreRequest, probs: list[float], prompt_tokens: int) -> LabelScores:
    """The result for ``req`` given its labels' probabilities (in label order)."""
    best = max(range(len(probs)), key=probs.__getitem__)
    return LabelScores(req.id, tuple(probs), req.labels[best], prompt_tokens)


class LabelScorer:
    """Scores label strings as the reply to chat prompts, batched within the engine's limits."""

    def __init__(self, lm: LoadedModel, prefiller: Prefiller, batcher: Batcher) -> None:
        self.lm = lm
        self.prefiller = prefiller
        self.batcher = batcher

    def score(self, requests: list[ScoreRequest]) -> list[LabelScores]:
        """Probability of each label as the assistant's reply, in label order."""
        lm = self.lm
        results: list[LabelScores | None] = [None] * len(requests)
        first_rows: list[_ScoreRow] = []
        multi_rows: list[_ScoreRow] = []
        logprobs: dict[int, list[float | None]] = {}
        prompt_lens: dict[int, int] = {}
        encoded = lm.encode_many([req.messages for req in requests])
        for i, req in enumerate(requests):
            prompt: list[int] = []
            try:
                if not req.labels:
                    raise ValueError("no labels to score")
                prompt = encoded[i] if encoded[i] is not None else lm.encode(req.messages)
                labels = [lm.label_ids(lab) for lab in req.labels]
                empty = [lab for lab, ids in zip(req.labels, labels, strict=True) if not ids]
                if empty:
                    raise ValueError(f"label {empty[0]!r} encodes to no tokens")
                longest = max(len(ids) for ids in labels)
                if len(prompt) + longest > lm.max_context:
                    raise ValueError(
                        f"prompt of {len(prompt)} tokens exceeds the model context of "
                        f"{lm.max_context}"
                    )
            except Exception as exc:
                results[i] = error_scores(req.id, len(prompt), short(exc))
                continue
            prompt_lens[i] = len(prompt)
            firsts = [ids[0] for ids in labels]
            if len(set(firsts)) == len(firsts):
                first_rows.append(_ScoreRow(i, -1, prompt, firsts))
            else:
                logprobs[i] = [None] * len(labels)
                multi_rows.extend(_ScoreRow(i, j, prompt, ids) for j, ids in enumerate(labels))

        def fail(row: _ScoreRow, exc: BaseException) -> None:
            req = requests[row.index]
            results[row.index] = error_scores(req.id, len(row.prompt), short(exc))
            logprobs.pop(row.index, None)

        def run_first(batch: list[_ScoreRow], keep: bool = True) -> None:
            for row, probs in zip(batch, self._first_token_batch(batch, keep), strict=True):
                results[row.index] = label_scores(requests[row.index], probs, len(row.prompt))

        def run_multi(batch: list[_ScoreRow]) -> None:
            for row, lp in zip(batch, self._sequence_batch(batch), strict=True):
                if row.index in logprobs:
                    logprobs[row.index][row.label] = lp

        def padded(batch: list[_ScoreRow]) -> int:
            return len(batch) * max(
                len(r.prompt) + (len(r.label_ids) if r.label >= 0 else 0) for r in batch
            )

        for rows, run, extra in ((first_rows, run_first, False), (multi_rows, run_multi, True)):

            def length(r: _ScoreRow, extra=extra) -> int:
                return len(r.prompt) + (len(r.label_ids) if extra else 0)

            # Prompts that mostly repeat another prompt of the call (the same comment for
            # another annotator) wait for a second wave: by then the prompt they repeat is in
            # the prefix store and only their differing tail runs through the model.
            waves = self._waves([r.prompt for r in rows]) if not extra else [0] * len(rows)
            for wave in sorted(set(waves)):
                part = [r for r, w in zip(rows, waves, strict=True) if w == wave]
                part.sort(key=lambda r: (length(r), r.index, r.label))
                # Second-wave prompts are not kept: nothing later is expected to repeat them.
                step = run if wave == 0 or extra else functools.partial(run, keep=False)
                for batch in self.batcher.chunks(part, length):
                    self.batcher.run_halving(batch, step, fail, padded)

        for i, lps in logprobs.items():
            if results[i] is None and all(lp is not None for lp in lps):
                probs = torch.tensor(lps, dtype=torch.float64).softmax(dim=0).tolist()
                results[i] = label_scores(requests[i], probs, prompt_lens[i])
        return all_done(results)

    def _waves(self, prompts: list[list[int]]) -> list[int]:
        """Wave 1 for each prompt sharing at least half its tokens with another prompt of the
        call that comes before it in token order (and that is in wave 0), else wave 0."""
        waves = [0] * len(prompts)
        store = self.prefiller.store
        if store is None or not self.prefiller.fast or len(prompts) < 2:
            return waves
        order = sorted(range(len(prompts)), key=lambda i: prompts[i])
        leader: list[int] | None = None
        for i in order:
            p = prompts[i]
            if leader is not None:
                n = min(len(p), len(leader))
                common = next((j for j in range(n) if p[j] != leader[j]), n)
                if common >= max(store.min_tokens, len(p) // 2):
                    waves[i] = 1
                    continue
            leader = p
        return waves

    def _first_token_batch(self, batch: list[_ScoreRow], keep: bool) -> list[list[float]]:
        """One forward pass; softmax over each request's labels' (distinct) first tokens."""
        logits = self.prefiller.last_logits([r.prompt for r in batch], keep)
        out = []
        for row, lg in zip(batch, logits, strict=True):
            out.append(lg[row.label_ids].softmax(dim=0).tolist())
        return out

    def _sequence_batch(self, batch: list[_ScoreRow]) -> list[float]:
        """Sum of label-token log-probs for each prompt+label row."""
        longest = max(len(r.label_ids) for r in batch)
        logits = self.prefiller.forward_tail([r.prompt + r.label_ids for r in batch], longest + 1)
        logp = logits.log_softmax(dim=-1)
        out = []
        for b, row in enumerate(batch):
            n = len(row.label_ids)
            # Label token t (0-based) sits at tail position keep-n+t; its predictor one before.
            start = logp.shape[1] - n - 1
            pred = logp[b, start : start + n, :]
            targets = torch.tensor(row.label_ids, device=pred.device)[:, None]
            out.append(float(pred.gather(1, targets).sum()))
        return out
