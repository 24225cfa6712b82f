"""Packed thread scoring: every question about a conversation's prefixes in two passes.

Annotating a discussion comment by comment asks one question after each prefix of it. A
:class:`~synth_disco.engines.base.ThreadScoreRequest` carries the conversation once; its
trunk (template head and segments) and all its questions go through the model as one row
(layout in :mod:`~synth_disco.engines.hf.thread_pack`), so each token runs once instead of
once per later question. Questions that cannot be packed (labels sharing a first token, a chat
template that cannot be split around the user message, a view past a sliding window's reach,
a model whose packed scores do not match its plain ones) are scored one prompt at a time.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import DynamicCache

from synth_disco.engines.base import (
    LabelScores,
    ThreadQuestion,
    ThreadScoreRequest,
    score_threads_by_prompts,
)
from synth_disco.engines.common import Batcher, all_done, error_scores, is_oom, short
from synth_disco.engines.hf.load import LoadedModel
from synth_disco.engines.hf.prefill import Hit, Prefiller, row_kv
from synth_disco.engines.hf.score import LabelScorer
from synth_disco.engines.hf.thread_pack import PackedThread, pack

log = logging.getLogger(__name__)

# Bytes of packed-thread attention masks (rows x slots x slots) per forward pass on an
# accelerator; on a CPU the prefill mask bound (LoadedModel.prefill_limits) applies.
_THREAD_MASK_BYTES = 512 * 2**20
# Stands for the user message when the chat template is split around it.
_SENTINEL = "\x00synth-disco-user-content\x00"


@dataclass
class ThreadItem:
    """The packable questions of one thread request: the packed tokens, and per question its
    result slot and its labels' first tokens."""

    thread: PackedThread
    slots: list[int]
    firsts: list[list[int]]


class ThreadScorer:
    """Scores thread requests packed, falling back to ``scorer`` one prompt at a time."""

    def __init__(
        self, lm: LoadedModel, prefiller: Prefiller, batcher: Batcher, scorer: LabelScorer
    ) -> None:
        self.lm = lm
        self.prefiller = prefiller
        self.batcher = batcher
        self.scorer = scorer
        # None until packed scores are checked once against plain ones on this model.
        self.packed_ok: bool | None = None
        self.template_parts: dict[str, tuple[str, str] | None] = {}

    def score_threads(self, requests: list[ThreadScoreRequest]) -> list[LabelScores]:
        """Score every question of each request, running each conversation's tokens once.

        A request's trunk (template head and segments) and all its questions go through the
        model as one row (:mod:`~synth_disco.engines.hf.thread_pack`). Results come in request
        order, then question order, as :func:`score_threads_by_prompts` gives them. Questions
        whose labels share a first token, a chat template that cannot be split around the user
        message, or a model whose packed scores do not match its plain ones (checked once, on
        the first call) are scored one prompt at a time instead.
        """
        lm = self.lm
        slots = [(i, q) for i, req in enumerate(requests) for q in range(len(req.questions))]
        index = {slot: n for n, slot in enumerate(slots)}
        results: list[LabelScores | None] = [None] * len(slots)
        plain: list[tuple[int, int]] = []  # (request, question) scored one prompt each
        items: list[ThreadItem] = []
        pieces = self.pieces(requests) if self.packed_ok is not False else [None] * len(requests)
        for i, (req, piece) in enumerate(zip(requests, pieces, strict=True)):
            if piece is None:
                plain.extend((i, q) for q in range(len(req.questions)))
                continue
            head, segments, questions = piece
            ends = list(itertools.accumulate((len(s) for s in segments), initial=len(head)))[1:]
            kept_tokens: list[list[int]] = []
            kept_after: list[int] = []
            kept_slots: list[int] = []
            kept_firsts: list[list[int]] = []
            for q, (question, tokens) in enumerate(zip(req.questions, questions, strict=True)):
                firsts = [lm.label_ids(lab)[:1] for lab in question.labels]
                view = ends[question.after] + len(tokens) if 0 <= question.after < len(ends) else 0
                if not tokens or not view or not all(firsts):
                    plain.append((i, q))  # the plain path reports what is wrong
                elif len({f[0] for f in firsts}) < len(firsts):
                    plain.append((i, q))  # multi-token labels: scored token by token
                elif view + 1 > lm.max_context:
                    results[index[i, q]] = error_scores(
                        question.id,
                        view,
                        f"prompt of {view} tokens exceeds the model context of {lm.max_context}",
                    )
                else:
                    kept_tokens.append(tokens)
                    kept_after.append(question.after)
                    kept_slots.append(index[i, q])
                    kept_firsts.append([f[0] for f in firsts])
            if kept_slots:
                # Segments after the last question asked are never read.
                read = segments[: max(kept_after) + 1]
                trunk = [t for part in (head, *read) for t in part]
                thread = PackedThread(trunk, ends, kept_tokens, kept_after)
                if lm.window is not None and thread.cost > lm.window:
                    # Past a sliding-window layer's reach the packed mask would see too far
                    # (and the model's cache keeps only the window): one prompt per label.
                    plain.extend(slots[n] for n in kept_slots)
                else:
                    items.append(ThreadItem(thread, kept_slots, kept_firsts))
        if items and self.packed_ok is None:
            self.packed_ok = self.check_packed(items[0].thread, items[0].firsts[-1])
            if not self.packed_ok:
                plain.extend(slots[n] for item in items for n in item.slots)
                items = []

        def question(n: int) -> ThreadQuestion:
            i, q = slots[n]
            return requests[i].questions[q]

        def run(batch: list[ThreadItem]) -> None:
            logits = self.packed_logits([item.thread for item in batch])
            for row, item in enumerate(batch):
                for j, (n, firsts) in enumerate(zip(item.slots, item.firsts, strict=True)):
                    probs = logits[row, j, firsts].softmax(dim=0).tolist()
                    labels = question(n).labels
                    best = max(range(len(probs)), key=probs.__getitem__)
                    results[n] = LabelScores(
                        question(n).id, tuple(probs), labels[best], item.thread.view_length(j)
                    )

        def fail(item: ThreadItem, exc: BaseException) -> None:
            for j, n in enumerate(item.slots):
                results[n] = error_scores(question(n).id, item.thread.view_length(j), short(exc))

        def padded(batch: list[ThreadItem]) -> int:
            return len(batch) * max(item.thread.cost for item in batch)

        items.sort(key=lambda item: item.thread.cost)
        for batch in self.batches(items):
            self.batcher.run_halving(batch, run, fail, padded)
        if plain:
            alone = [replace(requests[i], questions=(requests[i].questions[q],)) for i, q in plain]
            for (i, q), res in zip(
                plain, score_threads_by_prompts(self.scorer, alone), strict=True
            ):
                results[index[i, q]] = res
        return all_done(results)

    def pieces(
        self, requests: list[ThreadScoreRequest]
    ) -> list[tuple[list[int], list[list[int]], list[list[int]]] | None]:
        """Per request: token ids of the template head with ``head``, of each segment, and of
        each question with the template's tail; None where the template cannot be split.
        One tokenizer call for all, each distinct text once (annotators repeat segments)."""
        splits = [self.template_split(r.system) for r in requests]
        texts: dict[str, int] = {}
        for req, parts in zip(requests, splits, strict=True):
            if parts is not None:
                for text in (parts[0] + req.head, *req.segments):
                    texts.setdefault(text, len(texts))
                for q in req.questions:
                    texts.setdefault(q.text + parts[1], len(texts))
        ids = self.lm.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
        out: list[tuple[list[int], list[list[int]], list[list[int]]] | None] = []
        for req, parts in zip(requests, splits, strict=True):
            if parts is None:
                out.append(None)
                continue
            out.append(
                (
                    list(ids[texts[parts[0] + req.head]]),
                    [list(ids[texts[s]]) for s in req.segments],
                    [list(ids[texts[q.text + parts[1]]]) for q in req.questions],
                )
            )
        return out

    def template_split(self, system: str) -> tuple[str, str] | None:
        """The chat template's text before and after the user message, with ``system`` as
        the system message; None if the template does not hold the message verbatim once."""
        if system in self.template_parts:
            return self.template_parts[system]
        parts = None
        try:
            text = self.lm.tokenizer.apply_chat_template(
                [
                    {"role": "system", "content": system},
                    {"role": "user", "content": _SENTINEL},
                ],
                add_generation_prompt=True,
                tokenize=False,
            )
            if text.count(_SENTINEL) == 1:
                before, after = text.split(_SENTINEL)
                parts = (before, after)
        except Exception:
            parts = None
        if len(self.template_parts) < 64:
            self.template_parts[system] = parts
        return parts

    def batches(self, items: list[ThreadItem]) -> Iterator[list[ThreadItem]]:
        """Cut cost-sorted packed threads into batches: rows, padded tokens and the second
        pass's attention mask (rows x branch slots x all slots) within their limits."""
        if self.lm.prefill_limits is not None:
            token_cap = self.batcher.token_cap(self.lm.prefill_limits[0])
            mask_cap = self.lm.prefill_limits[1]
        else:
            token_cap, mask_cap = self.batcher.token_cap(), _THREAD_MASK_BYTES
        size = self.lm.dtype_bytes
        batch: list[ThreadItem] = []
        for item in items:
            t = item.thread
            rows = len(batch) + 1
            branch = max(x.thread.branch_length for x in (*batch, item))
            trunk = max(len(x.thread.trunk) for x in (*batch, item))
            if batch and (
                rows > self.batcher.max_batch_size
                or (token_cap is not None and rows * t.cost > token_cap)
                or rows * branch * (trunk + branch) * size > mask_cap
                or (self.lm.window is not None and trunk + branch > self.lm.window)
            ):
                yield batch
                batch = []
            batch.append(item)
        if batch:
            yield batch

    def packed_logits(self, threads: list[PackedThread]) -> torch.Tensor:
        """Float32 logits of every question's last token: (rows, most questions, vocab)."""
        dev = self.lm.device
        with torch.inference_mode():
            cache = self._trunk_cache(threads)
            packed = pack(threads, self.lm.pad_id, self.lm.model.dtype)
            kwargs: dict[str, Any] = {"logits_to_keep": packed.keep} if self.lm.keeps_logits else {}
            out = self.lm.model(
                input_ids=packed.ids.to(dev),
                attention_mask=packed.mask.to(dev),
                position_ids=packed.positions.to(dev),
                cache=cache,
                use_cache=True,
                **kwargs,
            )
        return out.logits[:, -packed.keep :, :].float()

    def _trunk_cache(self, threads: list[PackedThread]) -> Any:
        """The first pass: key/value states of every trunk, each from slot 0, right-padded.

        The rows start from the part of their trunk in the prefix store (the template head,
        the same for every discussion of an annotator and dimension), cut to the shortest
        such part in the batch so that the stored states line up without gaps. Causal
        attention never lets a real token see the padding after it, so this pass needs no
        attention mask at all. The trunks are then stored for the next batches.
        """
        dev = self.lm.device
        store = self.prefiller.store if self.prefiller.fast else None
        if store is None:
            hits: list[Hit] = [(0, None)] * len(threads)
        else:
            hits = [store.lookup(t.trunk) for t in threads]
        # A whole trunk in the store still leaves one token to run.
        common = min(min(c, len(t.trunk) - 1) for (c, _), t in zip(hits, threads, strict=True))
        width = max(len(t.trunk) for t in threads) - common
        ids = torch.full((len(threads), width), self.lm.pad_id, dtype=torch.long)
        for row, t in enumerate(threads):
            ids[row, : len(t.trunk) - common] = torch.tensor(t.trunk[common:], dtype=torch.long)
        kwargs: dict[str, Any] = {}
        if common:
            past = DynamicCache()
            for layer in range(len(hits[0][1])):
                past.update(
                    torch.stack([kv[layer][0][:, :common] for _, kv in hits]),
                    torch.stack([kv[layer][1][:, :common] for _, kv in hits]),
                    layer,
                )
            kwargs["cache"] = past
        out = self.lm.model(input_ids=ids.to(dev), use_cache=True, **kwargs, **self.lm.keep_one)
        cache = out.cache
        if store is not None:
            for row, t in enumerate(threads):
                store.add(t.trunk, row_kv(cache, row, 0, len(t.trunk)))
        return cache

    def check_packed(self, thread: PackedThread, firsts: list[int]) -> bool:
        """Whether this model scores a packed thread as it scores the same prompt alone (a
        model that ignores custom attention masks would not); checked on the last question."""
        try:
            packed = self.packed_logits([thread])[0, len(thread.questions) - 1, firsts]
            alone = self.prefiller.last_logits(
                [thread.view(len(thread.questions) - 1)], keep=False
            )[0]
        except Exception as exc:
            if is_oom(exc):
                raise
            log.info("packed thread scoring unavailable for this model (%s)", short(exc))
            return False
        a, b = packed.softmax(dim=0), alone[firsts].softmax(dim=0)
        tolerance = 1e-3 if self.lm.model.dtype == torch.float32 else 3e-2
        ok = bool((a - b).abs().max() <= tolerance)
        if not ok:
            log.info("packed thread scores differ from plain ones on this model; not used")
        return ok
