"""Token counts and label token ids from the server's own tokenizer (``/tokenize``).

vLLM and SGLang serve ``/tokenize`` at the server root (not under ``/v1``): it applies the
model's chat template to messages, or tokenises a plain prompt. A server without it (llama.cpp
has one of another shape, hosted APIs none) is asked once; token counts are then upper bounds
from byte lengths, and labels are scored by their first token, matched as text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from synth_disco.engines.openai.errors import Exhausted
from synth_disco.engines.openai.transport import ServerPool

log = logging.getLogger(__name__)

TOKENIZE_PATH = "/tokenize"
# Template tokens per message assumed by the byte bound of a count (no /tokenize).
BYTE_BOUND_PER_MESSAGE = 8


class ServerTokenizer:
    """The server's tokenizer, as far as it offers one; remembers when it offers none."""

    def __init__(self, pool: ServerPool, served: Callable[[], str]) -> None:
        self._pool = pool
        self._served = served  # the model id requests name (known once the engine loaded)
        self.available: bool | None = None  # unknown until the first /tokenize call
        self._label_ids: dict[str, asyncio.Future[Any]] = {}  # label -> its /tokenize answer

    async def tokenize(self, fields: dict[str, Any]) -> dict[str, Any] | None:
        """The server's ``/tokenize`` answer, or None when it has no such endpoint."""
        if self.available is False:
            return None
        # 400/422 too: servers with a /tokenize of another shape (llama.cpp) reject vLLM's fields.
        answer = await self._pool.call(
            "POST",
            TOKENIZE_PATH,
            {"model": self._served(), **fields},
            missing=(400, 404, 405, 422, 501),
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("tokens"), list):
            if self.available is None:
                log.info(
                    "openai engine: %s has no /tokenize; token counts are upper bounds from "
                    "byte lengths, labels are scored by their first token",
                    self._pool.where(),
                )
            self.available = False
            return None
        self.available = True
        return answer

    async def prompt_ids(self, messages: list[dict[str, str]]) -> list[int] | None:
        """Token ids of ``messages`` templated for generation, or None (no ``/tokenize``)."""
        answer = await self.tokenize({"messages": messages, "add_generation_prompt": True})
        return None if answer is None else [int(t) for t in answer["tokens"]]

    async def count(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens of ``messages``; a byte bound when the server cannot tokenize."""
        try:
            answer = await self.tokenize({"messages": messages, "add_generation_prompt": True})
        except Exhausted as exc:
            log.warning("openai engine: counting tokens by bytes, /tokenize failed: %s", exc)
            answer = None
        if answer is not None:
            return int(answer.get("count", len(answer["tokens"])))
        return byte_bound(messages)

    async def label_ids(self, label: str) -> list[int] | None:
        """Token ids of a label, or None when the server cannot tokenize.

        Every score request repeats its label set, and a call sends all requests at once:
        one shared task per label asks the server once; a failed one is forgotten.
        """
        task = self._label_ids.get(label)
        if task is None:
            task = asyncio.ensure_future(
                self.tokenize({"prompt": label, "add_special_tokens": False})
            )
            self._label_ids[label] = task

            def forget(done: asyncio.Future[Any], label: str = label) -> None:
                if done.cancelled() or done.exception() is not None:
                    self._label_ids.pop(label, None)

            task.add_done_callback(forget)
        answer = await asyncio.shield(task)
        return None if answer is None else [int(t) for t in answer["tokens"]]


def byte_bound(messages: list[dict[str, str]]) -> int:
    """An upper bound on the prompt tokens of ``messages``: UTF-8 bytes plus
    ``BYTE_BOUND_PER_MESSAGE`` per message for the template (a byte-level or byte-fallback
    tokenizer never makes a token of less than one byte)."""
    return (
        sum(
            len(str(m.get("content", "")).encode("utf-8")) + BYTE_BOUND_PER_MESSAGE
            for m in messages
        )
        + BYTE_BOUND_PER_MESSAGE
    )
