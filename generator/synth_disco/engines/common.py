"""What engines share: error results, batches within limits, retry by halving, a frozen heap.

A batch that fails (out of memory, or anything else) is halved and retried, down to a single
request, which then gets an error result; the others go on. Out-of-memory also lowers a
padded-token budget that bounds later batches. Nothing here imports torch: an engine says what
to free after running out of memory.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from synth_disco.engines.base import Completion, LabelScores

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def short(exc: BaseException) -> str:
    """One line naming the exception: enough for a record, no traceback."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an accelerator running out of memory (torch's ``OutOfMemoryError``,
    or a runtime error saying so, as CUDA errors raised elsewhere do)."""
    return isinstance(exc, RuntimeError) and (
        type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()
    )


def error_completion(request_id: str, prompt_tokens: int, message: str) -> Completion:
    return Completion(request_id, "", prompt_tokens, 0, "error", error=message)


def error_scores(request_id: str, prompt_tokens: int, message: str) -> LabelScores:
    return LabelScores(request_id, (), "", prompt_tokens, error=message)


def all_done(results: list[_T | None]) -> list[_T]:
    """``results`` once every slot is filled; every engine path fills its slot, and this
    guards against a silent drop."""
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise RuntimeError(f"engine produced no result for requests {missing}")
    return results  # type: ignore[return-value]


class Batcher:
    """Cuts an engine's work into batches within its limits and runs them, halving on failure.

    ``max_batch_size`` bounds rows, ``max_batch_tokens`` padded tokens (None: unbounded);
    ``on_oom`` frees what the engine can after running out of memory (caches, allocator).
    """

    def __init__(
        self,
        max_batch_size: int,
        max_batch_tokens: int | None,
        on_oom: Callable[[], None] = lambda: None,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.on_oom = on_oom
        # Token budget learned from out-of-memory failures; bounds later batches too.
        self.oom_token_cap: int | None = None

    def token_cap(self, *more: int) -> int | None:
        """Padded tokens a batch may hold: the configured budget, the one learned from
        out-of-memory failures and ``more``, whichever is smallest (None: unbounded)."""
        caps = [c for c in (self.max_batch_tokens, self.oom_token_cap, *more) if c]
        return min(caps) if caps else None

    def chunks(self, items: list[_T], length: Callable[[_T], int]) -> Iterator[list[_T]]:
        """Cut length-sorted ``items`` into batches within the row and padded-token limits."""
        token_cap = self.token_cap()
        batch: list[_T] = []
        for item in items:
            longest = length(item)  # items ascend, so the newest is the longest
            if batch and (
                len(batch) + 1 > self.max_batch_size
                or (token_cap is not None and (len(batch) + 1) * longest > token_cap)
            ):
                yield batch
                batch = []
            batch.append(item)
        if batch:
            yield batch

    def run_halving(
        self,
        batch: list[_T],
        run: Callable[[list[_T]], None],
        fail: Callable[[_T, BaseException], None],
        padded_tokens: Callable[[list[_T]], int],
    ) -> None:
        """Run ``run`` on ``batch``; on failure halve and retry, down to single items, each
        of which then goes to ``fail``."""
        pending = [batch]
        while pending:
            part = pending.pop()
            try:
                run(part)
            except Exception as exc:
                oom = is_oom(exc)
                if oom:
                    tokens = padded_tokens(part)
                    cap = max(1, tokens // 2)
                    self.oom_token_cap = min(self.oom_token_cap or cap, cap)
                    self.on_oom()
                if len(part) == 1:
                    log.warning("request failed alone: %s", short(exc))
                    fail(part[0], exc)
                    continue
                log.warning(
                    "%s in a batch of %d; retrying as two halves",
                    "out of memory" if oom else short(exc),
                    len(part),
                )
                half = len(part) // 2
                pending.append(part[half:])
                pending.append(part[:half])


class FrozenHeap:
    """``gc.freeze()`` held by the engines of a process, undone when the last one lets go.

    An engine freezes everything alive after loading (model, tokenizer, the modules of its
    libraries), as vLLM does after start-up: otherwise each full collection during a run
    rescans those hundreds of thousands of objects, about a fifth of a CPU run's time.
    Refcounting still frees them. The frozen generation is one per process, so one engine's
    close must not unfreeze what another engine still relies on: holders are counted.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0

    def hold(self) -> None:
        """Collect, then freeze everything alive now (also what earlier holders left alive)."""
        with self._lock:
            gc.collect()
            gc.freeze()
            self._holders += 1

    def release(self) -> None:
        """Give up one hold; the last one returns the frozen objects to the collector."""
        with self._lock:
            self._holders = max(0, self._holders - 1)
            if self._holders == 0:
                gc.unfreeze()


# The one per process, as gc's frozen generation is (see FrozenHeap).
FROZEN_HEAP = FrozenHeap()
