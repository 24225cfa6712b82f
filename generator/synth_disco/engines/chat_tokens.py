"""Chat prompts to token ids with a transformers tokenizer, many at a time.

The local engines (transformers and vLLM) template and tokenise every prompt of a call
themselves, so that they know each prompt's length before batching; this is the one way both do
it.
"""

from __future__ import annotations

from typing import Any


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of one conversation as templated for generation (raises where the chat
    template fails: the message names why)."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_chats(
    tokenizer: Any, conversations: list[list[dict[str, str]]]
) -> list[list[int] | None]:
    """:func:`encode_chat` of each conversation, with one tokenizer call (a third faster than
    one call each); None where the chat template fails, for the caller to template alone and
    report why."""
    texts: dict[int, str] = {}
    for i, messages in enumerate(conversations):
        try:
            texts[i] = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception:
            continue
    out: list[list[int] | None] = [None] * len(conversations)
    if texts:
        for i, row in zip(texts, tokenize(tokenizer, list(texts.values())), strict=True):
            out[i] = row
    return out


def tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each of ``texts`` (no special tokens added), in one tokenizer call.

    A fast tokenizer's Rust backend can skip the character offsets that ``tokenizer(texts)``
    computes and converts to Python (``encode_batch_fast``: a third less time for a call's
    prompts). A tokenizer whose Python side adds to the backend's work (a prefix space, say)
    would give other ids, so the first text is encoded both ways and the plain call is used
    unless they agree (a single text takes the plain call)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    fast = getattr(backend, "encode_batch_fast", None)
    if fast is not None and len(texts) > 1:
        plain = list(tokenizer(texts[0], add_special_tokens=False)["input_ids"])
        rows = [e.ids for e in fast(texts, add_special_tokens=False)]
        if rows[0] == plain:
            return rows
    return [list(r) for r in tokenizer(texts, add_special_tokens=False)["input_ids"]]
