"""The transformers engine: batched chat generation and label scoring with any causal LM.

How a batch is made: requests are templated and tokenised, grouped by the settings that
``generate`` can only take per batch (``max_new_tokens``, ``repetition_penalty``, ``stop``),
sorted by prompt length, and cut into left-padded batches bounded by ``max_batch_size`` rows and
``max_batch_tokens`` padded tokens (prompt + new tokens). Temperature, top-k and top-p are
applied per row, so requests that differ only in those still share a batch.

Per-request seeded sampling: ``generate`` runs greedy (``do_sample=False``) with a logits
processor (:class:`~synth_disco.engines.hf.sampler.SeededSampler`) that, per row, applies
temperature, top-k and top-p and then adds Gumbel noise derived from a counter-based hash of
(request seed, decoding step, token id). The argmax of logits plus Gumbel noise is an exact
sample from the softmax, and the noise of a row never depends on the other rows, so a request's
text is a function of its seed and prompt alone, up to floating-point differences between batch
shapes and cache layouts: nil in practice in float32 on CPU (the tests and the benchmark check
exact equality), while in bfloat16 on GPU they can flip rare near-ties.

Prefill (see ``TransformersEngine._prefill``): prompt prefixes already seen are taken from a
prefix store of KV states (:mod:`~synth_disco.engines.hf.prefix_cache`), so a turn's prompt only
runs its new tokens; fresh prompts run right-padded without an attention mask (causal SDPA
kernels, about 2x faster than a masked left-padded prefill of long prompts). The states are
then gathered into the left-padded layout ``generate`` expects.

Continuous batching (``generate_batch``) is deliberately not used: in transformers 5.23 it
drops stop strings and repetition penalty, has a single global sampling seed, and with sdpa
builds a dense mask over the whole cache. It could only serve greedy requests without stop
strings on CUDA with a flash-attention kernel, which is not what discussion generation asks for.

CUDA out-of-memory (and any other failure) in a batch halves the batch and retries, down to a
single request, which then gets ``finish_reason="error"``; the others go on. Out-of-memory also
lowers a padded-token budget that bounds later batches.
"""

from __future__ import annotations

import functools
import gc
import inspect
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    GenerationConfig,
    LogitsProcessorList,
    StoppingCriteriaList,
    StopStringCriteria,
)
from transformers.cache_utils import DynamicLayer

from synth_disco.engines.base import (
    ChatRequest,
    Completion,
    LabelScores,
    SamplingParams,
    ScoreRequest,
    ThreadQuestion,
    ThreadScoreRequest,
    score_threads_by_prompts,
)
from synth_disco.engines.errors import EngineLoadError
from synth_disco.engines.hf.prefix_cache import PrefixStore
from synth_disco.engines.hf.sampler import SeededSampler
from synth_disco.engines.hf.thread_pack import PackedThread, pack

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# CPU bounds on one prefill forward pass (see TransformersEngine._prefill_groups): tokens, and
# bytes of the float32 attention mask SDPA builds for a masked prefill. Chunks this size still
# run at full speed on a CPU; on accelerators the batch is left whole. The token bound is what
# keeps activations small, so a narrow model gets more tokens (_cpu_prefill_limits): up to
# _CPU_PREFILL_MAX_TOKENS, as many as fit _CPU_ACTIVATION_BYTES, never fewer than the floor.
_CPU_PREFILL_LIMITS = (2048, 8 * 2**20)
_CPU_ACTIVATION_BYTES = 32 * 2**20
_CPU_PREFILL_MAX_TOKENS = 16384
# Bytes of packed-thread attention masks (rows x slots x slots) per forward pass on an
# accelerator; on a CPU the prefill mask bound above applies.
_THREAD_MASK_BYTES = 512 * 2**20
# Stands for the user message when the chat template is split around it.
_SENTINEL = "\x00synth-disco-user-content\x00"


@dataclass
class _GenItem:
    index: int
    request: ChatRequest
    ids: list[int]


@dataclass
class _ThreadItem:
    """The packable questions of one thread request: the packed tokens, and per question its
    result slot and its labels' first tokens."""

    thread: PackedThread
    slots: list[int]
    firsts: list[list[int]]


@dataclass
class _ScoreRow:
    index: int  # request position
    label: int  # label position (multi-token path) or -1 (first-token path)
    prompt: list[int]
    label_ids: list[int]  # empty on the first-token path


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _row_kv(cache: Any, row: int, start: int, stop: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copies of one row's key/value states in slots ``[start, stop)``, every layer (for the
    prefix store, which must not hold views into a batch's cache)."""
    return [
        (layer.keys[row, :, start:stop].clone(), layer.values[row, :, start:stop].clone())
        for layer in cache.layers
    ]


def _short(exc: BaseException) -> str:
    """One line naming the exception: enough for a record, no traceback."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _parse_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype:
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype or "auto"
    name = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}.get(
        dtype, dtype
    )
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise EngineLoadError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return value


def _looks_local(model: str) -> bool:
    """Whether ``model`` names a filesystem path rather than a hub id like ``org/name``."""
    return (
        Path(model).expanduser().exists()
        or model.startswith(("/", "./", "../", "~", "\\"))
        or model.count("/") > 1
        or (len(model) > 1 and model[1] == ":")  # Windows drive
    )


class TransformersEngine:
    """The :class:`~synth_disco.engines.base.Engine` for transformers causal language models."""

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        device: str | None = None,
        device_map: str | dict | None = None,
        trust_remote_code: bool = False,
        chat_template: str | None = None,
        max_batch_size: int = 64,
        max_batch_tokens: int | None = None,
        default_params: SamplingParams = SamplingParams(),  # noqa: B008 (frozen dataclass)
        model_id: str | None = None,
        prefix_cache_mb: float | None = None,
    ) -> None:
        """Load ``model`` (hub id or local path). Raises :class:`EngineLoadError` when it
        cannot be loaded.

        ``model_id`` is the name kept for records (defaults to ``model``). ``prefix_cache_mb``
        bounds the memory (on the model's device) that keeps prompt KV states for reuse by
        later prompts sharing their prefix; 0 turns prefix reuse off. The default (None) sizes
        it to one full batch of 1,024-token prompts (what the next turn of every discussion in
        flight needs to find its previous prompt), at most 512 MiB: 16 MiB for the tiny model
        instead of a fixed budget that would dominate a small model's memory.
        """
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.model_id = model_id or model
        self.revision = revision
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.default_params = default_params
        # Token budget learned from out-of-memory failures; bounds later batches too.
        self._oom_token_cap: int | None = None
        self._stop_criteria: dict[tuple[str, ...], StopStringCriteria] = {}
        self._label_cache: dict[str, list[int]] = {}
        self._template_parts: dict[str, tuple[str, str] | None] = {}
        # Packed thread scoring: None until checked once against plain scoring on this model.
        self._packed_ok: bool | None = None
        self._closed = False
        self._load(model, revision, dtype, device, device_map, trust_remote_code, chat_template)
        if prefix_cache_mb is None:
            budget = min(512 * 2**20, max_batch_size * 1024 * self._kv_bytes_per_token())
        else:
            budget = int(prefix_cache_mb * 2**20)
        self._prefix = PrefixStore(budget) if budget > 0 else None

    @classmethod
    def from_config(cls, cfg: Any) -> TransformersEngine:
        """Build from any object with the constructor's argument names as attributes."""
        from synth_disco.engines import sampling_params_from

        return cls(
            cfg.model,
            revision=getattr(cfg, "revision", None),
            dtype=getattr(cfg, "dtype", None) or "auto",
            device=getattr(cfg, "device", None),
            device_map=getattr(cfg, "device_map", None),
            trust_remote_code=bool(getattr(cfg, "trust_remote_code", False)),
            chat_template=getattr(cfg, "chat_template", None),
            max_batch_size=getattr(cfg, "max_batch_size", None) or 64,
            max_batch_tokens=getattr(cfg, "max_batch_tokens", None),
            default_params=sampling_params_from(cfg),
            prefix_cache_mb=getattr(cfg, "prefix_cache_mb", None),
        )

    # ---------------------------------------------------------------- loading

    def _load(
        self,
        model: str,
        revision: str | None,
        dtype: str,
        device: str | None,
        device_map: str | dict | None,
        trust_remote_code: bool,
        chat_template: str | None,
    ) -> None:
        name = self._record_name()
        source = model
        if _looks_local(model):
            path = Path(model).expanduser()
            if not path.is_dir():
                raise EngineLoadError(
                    f"cannot load model {model!r}: no such directory (give a hub id like "
                    "'org/name' or the path of a saved model)"
                )
            source = str(path)
        common = {"revision": revision, "trust_remote_code": trust_remote_code}
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **common)
        except Exception as exc:
            raise EngineLoadError(
                f"cannot load the tokenizer of model {name!r}: {_short(exc)}"
            ) from None
        if chat_template:
            tokenizer.chat_template = chat_template
        if not getattr(tokenizer, "chat_template", None):
            raise EngineLoadError(
                f"model {name!r} has no chat template: give one as `chat_template:` in the "
                "recipe's model config (a Jinja template over `messages`), or use a chat/"
                "instruct variant of the model"
            )
        tokenizer.padding_side = "left"
        torch_dtype = _parse_dtype(dtype)
        kwargs: dict[str, Any] = {**common, "dtype": torch_dtype}
        if device_map is not None:
            kwargs["device_map"] = device_map
        try:
            lm = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except Exception as exc:
            raise EngineLoadError(f"cannot load model {name!r}: {_short(exc)}") from None
        if device_map is None:
            target = device or ("cuda" if torch.cuda.is_available() else "cpu")
            try:
                lm = lm.to(target)
            except Exception as exc:
                raise EngineLoadError(
                    f"cannot move model {name!r} to {target!r}: {_short(exc)}"
                ) from None
        lm.eval()
        self.model = lm
        self.tokenizer = tokenizer
        self.device = lm.device
        self._commit = getattr(lm.config, "_commit_hash", None)
        gen_cfg = getattr(lm, "generation_config", None)
        eos: set[int] = set()
        for src in (getattr(gen_cfg, "eos_token_id", None), tokenizer.eos_token_id):
            if isinstance(src, int):
                eos.add(src)
            elif src:
                eos.update(int(t) for t in src)
        self._eos_ids = sorted(eos)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = getattr(gen_cfg, "pad_token_id", None)
        if pad is None and self._eos_ids:
            pad = self._eos_ids[0]
        if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        self._pad_id = int(pad or 0)
        self._max_context = self._find_max_context()
        self._window = self._sliding_window()
        self._keeps_logits = "logits_to_keep" in inspect.signature(lm.forward).parameters
        self._keep_one = {"logits_to_keep": 1} if self._keeps_logits else {}
        self._prefill_limits = self._cpu_prefill_limits() if self.device.type == "cpu" else None
        # Right-padded prefill (see _prefill); switched off for good if the model rejects it.
        # A model that asks for its own cache type (static, hybrid...) cannot take ours.
        self._fast_prefill = getattr(gen_cfg, "cache_implementation", None) is None
        # Move everything alive now (model, tokenizer, the modules of torch and transformers)
        # out of the cyclic garbage collector's reach, as vLLM does after start-up: otherwise
        # each full collection during a run rescans those hundreds of thousands of objects,
        # about a fifth of a CPU run's time. Refcounting still frees them; close() undoes it.
        gc.collect()
        gc.freeze()

    def _text_config(self) -> Any:
        """The config of the language model (a multimodal model nests it)."""
        cfg = self.model.config
        return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    def _dtype_bytes(self) -> int:
        """Bytes of one weight, activation or cache value."""
        dtype = self.model.dtype
        return torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4

    def _cpu_prefill_limits(self) -> tuple[int, int]:
        """(tokens, mask bytes) of one CPU prefill pass. A token's activations in one layer
        take about six hidden-size vectors and three MLP-width ones; a narrow model fits more
        tokens in the same memory, and bigger passes cost less per token there (fewer calls,
        each with the same fixed overhead)."""
        text = self._text_config()
        hidden = getattr(text, "hidden_size", None) or 4096
        mlp = getattr(text, "intermediate_size", None) or 4 * hidden
        fits = _CPU_ACTIVATION_BYTES // ((6 * hidden + 3 * mlp) * self._dtype_bytes())
        floor, mask_bytes = _CPU_PREFILL_LIMITS
        return max(floor, min(_CPU_PREFILL_MAX_TOKENS, fits)), mask_bytes

    def _kv_bytes_per_token(self) -> int:
        """Bytes of key/value cache one token takes (all layers), from the model config."""
        text = self._text_config()
        layers = getattr(text, "num_hidden_layers", None) or 32
        heads = getattr(text, "num_attention_heads", None) or 32
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        hidden = getattr(text, "hidden_size", None) or 4096
        head_dim = getattr(text, "head_dim", None) or hidden // heads
        return int(layers * kv_heads * head_dim * 2 * self._dtype_bytes())

    def _sliding_window(self) -> int | None:
        """The attention window of the model's sliding-window layers, if it has any. A packed
        thread's question pass brings its own attention mask, which knows no window, so
        threads longer than that are scored one prompt at a time."""
        text = self._text_config()
        window = getattr(text, "sliding_window", None)
        if not isinstance(window, int) or window <= 0:
            return None
        if getattr(text, "use_sliding_window", True) is False:
            return None
        types = getattr(text, "layer_types", None)
        if types is not None and "sliding_attention" not in types:
            return None
        return window

    def _find_max_context(self) -> int:
        text_cfg = self._text_config()
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(text_cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        value = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(value, int) and 0 < value < 10**8:
            return value
        return 2048

    def _record_name(self) -> str:
        """The model name for records: local paths reduced to their directory name."""
        if _looks_local(self.model_id):
            return Path(self.model_id).expanduser().name or self.model_id
        return self.model_id

    # ---------------------------------------------------------------- public helpers

    @property
    def max_context(self) -> int:
        """Longest sequence (prompt + new tokens) the model accepts."""
        return self._max_context

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens of ``messages`` as templated for generation."""
        return len(self._encode(messages))

    def engine_info(self) -> dict[str, Any]:
        """What to record about the engine (no local paths)."""
        return {
            "engine": "transformers",
            "name": self._record_name(),
            "revision": self.revision,
            "commit": self._commit,
            "dtype": str(self.model.dtype).removeprefix("torch.") if not self._closed else None,
            "device": str(self.device),
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__.split("+")[0],
        }

    def prefix_stats(self) -> dict[str, int]:
        """Prompt tokens served from the prefix store vs computed, and its size."""
        p = self._prefix
        if p is None:
            return {"hit_tokens": 0, "miss_tokens": 0, "entries": 0, "bytes": 0}
        return {
            "hit_tokens": p.hit_tokens,
            "miss_tokens": p.miss_tokens,
            "entries": len(p),
            "bytes": p.nbytes,
        }

    def close(self) -> None:
        """Release the model and its memory; the engine cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        gc.unfreeze()
        del self.model
        self._stop_criteria.clear()
        if self._prefix is not None:
            self._prefix.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("engine is closed")

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode_many(self, conversations: list[list[dict[str, str]]]) -> list[list[int] | None]:
        """:meth:`_encode` of many prompts with one tokenizer call (a third faster than one
        call each); None where the chat template fails, for the caller to report."""
        texts: dict[int, str] = {}
        for i, messages in enumerate(conversations):
            try:
                texts[i] = self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
            except Exception:
                continue
        out: list[list[int] | None] = [None] * len(conversations)
        if texts:
            ids = self.tokenizer(list(texts.values()), add_special_tokens=False)["input_ids"]
            for i, row in zip(texts, ids, strict=True):
                out[i] = list(row)
        return out

    def _label_ids(self, label: str) -> list[int]:
        """Token ids of a label string (cached: every score request repeats the label set)."""
        ids = self._label_cache.get(label)
        if ids is None:
            ids = self.tokenizer(label, add_special_tokens=False)["input_ids"]
            if len(self._label_cache) < 4096:
                self._label_cache[label] = ids
        return list(ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    # ---------------------------------------------------------------- batching

    def _token_cap(self, *more: int) -> int | None:
        """Padded tokens a batch may hold: the configured budget, the one learned from
        out-of-memory failures and ``more``, whichever is smallest (None: unbounded)."""
        caps = [c for c in (self.max_batch_tokens, self._oom_token_cap, *more) if c]
        return min(caps) if caps else None

    def _chunks(self, items: list[_T], length: Callable[[_T], int]) -> Iterator[list[_T]]:
        """Cut length-sorted ``items`` into batches within the row and padded-token limits."""
        token_cap = self._token_cap()
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

    def _run_halving(
        self,
        batch: list[_T],
        run: Callable[[list[_T]], None],
        fail: Callable[[_T, BaseException], None],
        padded_tokens: Callable[[list[_T]], int],
    ) -> None:
        """Run ``run`` on ``batch``; on failure halve and retry, down to single items."""
        pending = [batch]
        while pending:
            part = pending.pop()
            try:
                run(part)
            except Exception as exc:
                oom = _is_oom(exc)
                if oom:
                    if self._prefix is not None:
                        self._prefix.clear()
                    tokens = padded_tokens(part)
                    cap = max(1, tokens // 2)
                    self._oom_token_cap = min(self._oom_token_cap or cap, cap)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                if len(part) == 1:
                    log.warning("request failed alone: %s", _short(exc))
                    fail(part[0], exc)
                    continue
                log.warning(
                    "%s in a batch of %d; retrying as two halves",
                    "out of memory" if oom else _short(exc),
                    len(part),
                )
                half = len(part) // 2
                pending.append(part[half:])
                pending.append(part[:half])

    # ---------------------------------------------------------------- generation

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        """Complete every request; results come back in request order."""
        self._check_open()
        results: list[Completion | None] = [None] * len(requests)
        groups: dict[tuple[int, float, tuple[str, ...]], list[_GenItem]] = {}
        encoded = self._encode_many([req.messages for req in requests])
        for i, req in enumerate(requests):
            p = req.params
            problem = _check_params(p)
            ids: list[int] = []
            if problem is None:
                try:
                    ids = encoded[i] if encoded[i] is not None else self._encode(req.messages)
                except Exception as exc:
                    problem = f"cannot apply the chat template: {_short(exc)}"
            if problem is None and len(ids) + p.max_new_tokens > self.max_context:
                problem = (
                    f"prompt of {len(ids)} tokens exceeds the model context of "
                    f"{self.max_context} (with max_new_tokens={p.max_new_tokens})"
                )
            if problem is not None:
                results[i] = _error_completion(req.id, len(ids), problem)
                continue
            key = (p.max_new_tokens, float(p.repetition_penalty), tuple(p.stop))
            groups.setdefault(key, []).append(_GenItem(i, req, ids))

        for (max_new, penalty, stop), items in groups.items():
            items.sort(key=lambda it: (len(it.ids), it.index))

            def run(batch: list[_GenItem], m=max_new, r=penalty, s=stop) -> None:
                for item, done in zip(batch, self._generate_batch(batch, m, r, s), strict=True):
                    results[item.index] = done

            def fail(item: _GenItem, exc: BaseException) -> None:
                results[item.index] = _error_completion(item.request.id, len(item.ids), _short(exc))

            def padded(batch: list[_GenItem], m=max_new) -> int:
                return len(batch) * (max(len(it.ids) for it in batch) + m)

            for batch in self._chunks(items, lambda it, m=max_new: len(it.ids) + m):
                self._run_halving(batch, run, fail, padded)
        return _all_done(results)

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
            eos_token_id=self._eos_ids or None,
            pad_token_id=self._pad_id,
            use_cache=True,
        )

    def _stopping(self, stop: tuple[str, ...]) -> StopStringCriteria:
        # Building the criteria scans the whole vocabulary: do it once per stop tuple.
        if stop not in self._stop_criteria:
            self._stop_criteria[stop] = StopStringCriteria(self.tokenizer, list(stop))
        return self._stop_criteria[stop]

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            if seq:
                ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                mask[row, width - len(seq) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _generate_batch(
        self,
        items: list[_GenItem],
        max_new_tokens: int,
        repetition_penalty: float,
        stop: tuple[str, ...],
    ) -> list[Completion]:
        """Generate one padded batch (the unit that out-of-memory handling halves)."""
        input_ids, mask = self._left_pad([it.ids for it in items])
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
                    vocab_size=len(self.tokenizer),
                    device=input_ids.device,
                )
            )
        criteria = StoppingCriteriaList([self._stopping(stop)] if stop else [])
        with torch.inference_mode():
            cache = self._prefill(items, prompt_len)
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                past_key_values=cache,
                generation_config=self._generation_config(max_new_tokens, repetition_penalty),
                logits_processor=processors,
                stopping_criteria=criteria,
            )
        rows = out[:, prompt_len:].tolist()
        return [
            self._finish(it, row, max_new_tokens, stop) for it, row in zip(items, rows, strict=True)
        ]

    def _prefill(self, items: list[_GenItem], width: int, keep: bool = True) -> DynamicCache | None:
        """KV cache of every prompt but its last token, laid out as left padding would.

        Two savings over letting ``generate`` prefill a left-padded batch:

        * Prefixes already in the prefix store are not recomputed: only each row's new tokens
          run through the model, on top of the stored states.
        * Without stored prefixes the prompts run right-padded with no attention mask. Causal
          attention never lets a real token see the padding after it, and without a mask SDPA
          uses its causal kernels (about 2x faster than a masked prefill of long prompts).

        The resulting states are then gathered into the left-padded layout ``generate``
        expects (real entries flush right); ``generate`` masks the padding and runs the last
        prompt token itself. Only for models with a plain full-attention cache; otherwise (or
        for a batch with neither padding nor a store) None, and ``generate`` prefills as usual.
        On a CPU the rows run in groups (:meth:`_prefill_groups`) to bound peak memory.
        ``keep=False`` leaves these prompts out of the prefix store.
        """
        need = [len(it.ids) - 1 for it in items]
        store = self._prefix
        if not self._fast_prefill or min(need) < 1:
            return None
        if store is None and min(need) == max(need):
            return None
        hits = [store.lookup(it.ids[:-1]) for it in items] if store else [(0, None)] * len(items)
        try:
            cache = self._prefill_groups(items, need, hits, width - 1)
        except Exception as exc:
            if _is_oom(exc):
                raise
            self._fast_prefill = False
            if store is not None:
                store.clear()
            log.info("own prefill unavailable for this model (%s)", _short(exc))
            return None
        if store is not None and keep:
            for row, (it, n) in enumerate(zip(items, need, strict=True)):
                store.add(it.ids[:-1], _row_kv(cache, row, width - 1 - n, width - 1))
        return cache

    def _prefill_groups(
        self,
        items: list[_GenItem],
        need: list[int],
        hits: list[tuple[int, Any]],
        width: int,
    ) -> DynamicCache:
        """:meth:`_prefill_rows` on groups of rows small enough for ``_prefill_limits``: the
        tokens of one forward pass (activations take a few KiB per token) and the attention
        mask of a masked prefill (rows x new tokens x all tokens, which SDPA expands to
        float32). The groups' caches are then stacked back into one. Bounding these is what
        keeps the peak memory of a batched turn on a CPU near that of one request."""
        groups: list[list[int]] = [[]]
        limits = self._prefill_limits
        for row in range(len(items)):
            group = groups[-1] + [row]
            if limits is not None and len(group) > 1:
                c = max(hits[r][0] for r in group)
                u = max(need[r] - hits[r][0] for r in group)
                mask_bytes = len(group) * u * (c + u) * 4 if c else 0
                if len(group) * u > limits[0] or mask_bytes > limits[1]:
                    groups.append([row])
                    continue
            groups[-1] = group
        if len(groups) == 1:
            return self._prefill_rows(items, need, hits, width)
        parts = [
            self._prefill_rows(
                [items[r] for r in g], [need[r] for r in g], [hits[r] for r in g], width
            )
            for g in groups
        ]
        cache = DynamicCache()
        for layer in range(len(parts[0].layers)):
            keys = torch.cat([p.layers[layer].keys for p in parts])
            values = torch.cat([p.layers[layer].values for p in parts])
            cache.update(keys, values, layer)
        return cache

    def _prefill_rows(
        self,
        items: list[_GenItem],
        need: list[int],
        hits: list[tuple[int, Any]],
        width: int,
    ) -> DynamicCache:
        """Compute the uncached part of each row and assemble the left-padded cache."""
        dev = self.device
        cached = [c for c, _ in hits]
        fresh = [n - c for n, c in zip(need, cached, strict=True)]
        c_max, u_max = max(cached), max(fresh)
        prefix: list[tuple[torch.Tensor, torch.Tensor]] = []
        if c_max:
            layers = next(kv for c, kv in hits if c)
            for layer, (k0, v0) in enumerate(layers):
                keys = k0.new_zeros((len(items), k0.shape[0], c_max, k0.shape[2]))
                values = v0.new_zeros((len(items), v0.shape[0], c_max, v0.shape[2]))
                for row, (c, kv) in enumerate(hits):
                    if c:
                        keys[row, :, :c] = kv[layer][0]
                        values[row, :, :c] = kv[layer][1]
                prefix.append((keys, values))
        cache = DynamicCache()
        for layer, (keys, values) in enumerate(prefix):
            cache.update(keys, values, layer)
        if u_max:
            ids = torch.full((len(items), u_max), self._pad_id, dtype=torch.long)
            for row, (it, c, n) in enumerate(zip(items, cached, need, strict=True)):
                ids[row, : n - c] = torch.tensor(it.ids[c:n], dtype=torch.long)
            kwargs: dict[str, Any] = {}
            if c_max:
                # Stored prefixes end at different lengths: mask the gap after each, and
                # number the new tokens from where the row's prefix ends.
                mask = torch.zeros((len(items), c_max + u_max), dtype=torch.long)
                for row, (c, u) in enumerate(zip(cached, fresh, strict=True)):
                    mask[row, :c] = 1
                    mask[row, c_max : c_max + u] = 1
                positions = torch.tensor(cached)[:, None] + torch.arange(u_max)[None, :]
                # Padding slots past a row's end must still be valid positions for the model.
                positions = positions.clamp_max(self.max_context - 1)
                kwargs = {
                    "past_key_values": cache,
                    "attention_mask": mask.to(dev),
                    "position_ids": positions.to(dev),
                }
            out = self.model(input_ids=ids.to(dev), use_cache=True, **kwargs, **self._keep_one)
            cache = out.past_key_values
        if type(cache) is not DynamicCache or any(
            type(layer) is not DynamicLayer for layer in cache.layers
        ):
            raise TypeError(f"{type(cache).__name__} is not a plain full-attention cache")
        # Target slot j of row r holds token k = j - (width - need[r]): a stored token when
        # k < cached[r], else new token k - cached[r], found after the c_max stored slots.
        slot = torch.arange(width, device=dev)[None, :]
        k = slot - (width - torch.tensor(need, device=dev))[:, None]
        c = torch.tensor(cached, device=dev)[:, None]
        source = torch.where(k < c, k, c_max + k - c).clamp_min(0)
        for layer in cache.layers:
            # ``width`` may exceed this cache's length (a group of shorter rows): gather
            # accepts a longer index along its dimension; slots before a row's start are
            # padding, masked later, and read slot 0.
            rows, heads, _, dim = layer.keys.shape
            index = source[:, None, :, None].expand(rows, heads, width, dim)
            layer.keys = layer.keys.gather(2, index)
            layer.values = layer.values.gather(
                2, source[:, None, :, None].expand(rows, heads, width, layer.values.shape[-1])
            )
        return cache

    def _finish(
        self, item: _GenItem, row: list[int], max_new_tokens: int, stop: tuple[str, ...]
    ) -> Completion:
        """Turn one generated row into a Completion: cut at eos / first stop string."""
        eos = set(self._eos_ids)
        eos_at = next((j for j, t in enumerate(row) if t in eos), None)
        body = row if eos_at is None else row[:eos_at]
        text = self._decode(body)
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
        while used and row[used - 1] == self._pad_id:
            used -= 1
        return Completion(item.request.id, self._decode(row[:used]), n_prompt, used, "stop")

    def _tokens_until_stop(self, ids: list[int], stop: tuple[str, ...]) -> int:
        """Fewest leading tokens whose text contains a stop string (binary search)."""
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            text = self._decode(ids[:mid])
            if any(s and s in text for s in stop):
                hi = mid
            else:
                lo = mid + 1
        return hi

    # ---------------------------------------------------------------- scoring

    def score(self, requests: list[ScoreRequest]) -> list[LabelScores]:
        """Probability of each label as the assistant's reply, in label order."""
        self._check_open()
        results: list[LabelScores | None] = [None] * len(requests)
        first_rows: list[_ScoreRow] = []
        multi_rows: list[_ScoreRow] = []
        logprobs: dict[int, list[float | None]] = {}
        prompt_lens: dict[int, int] = {}
        encoded = self._encode_many([req.messages for req in requests])
        for i, req in enumerate(requests):
            prompt: list[int] = []
            try:
                if not req.labels:
                    raise ValueError("no labels to score")
                prompt = encoded[i] if encoded[i] is not None else self._encode(req.messages)
                labels = [self._label_ids(lab) for lab in req.labels]
                empty = [lab for lab, ids in zip(req.labels, labels, strict=True) if not ids]
                if empty:
                    raise ValueError(f"label {empty[0]!r} encodes to no tokens")
                longest = max(len(ids) for ids in labels)
                if len(prompt) + longest > self.max_context:
                    raise ValueError(
                        f"prompt of {len(prompt)} tokens exceeds the model context of "
                        f"{self.max_context}"
                    )
            except Exception as exc:
                results[i] = _error_scores(req.id, len(prompt), _short(exc))
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
            results[row.index] = _error_scores(req.id, len(row.prompt), _short(exc))
            logprobs.pop(row.index, None)

        def run_first(batch: list[_ScoreRow], keep: bool = True) -> None:
            for row, probs in zip(batch, self._score_first_batch(batch, keep), strict=True):
                results[row.index] = _label_scores(requests[row.index], probs, len(row.prompt))

        def run_multi(batch: list[_ScoreRow]) -> None:
            for row, lp in zip(batch, self._score_multi_batch(batch), strict=True):
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
            waves = self._score_waves([r.prompt for r in rows]) if not extra else [0] * len(rows)
            for wave in sorted(set(waves)):
                part = [r for r, w in zip(rows, waves, strict=True) if w == wave]
                part.sort(key=lambda r: (length(r), r.index, r.label))
                # Second-wave prompts are not kept: nothing later is expected to repeat them.
                step = run if wave == 0 or extra else functools.partial(run, keep=False)
                for batch in self._chunks(part, length):
                    self._run_halving(batch, step, fail, padded)

        for i, lps in logprobs.items():
            if results[i] is None and all(lp is not None for lp in lps):
                probs = torch.tensor(lps, dtype=torch.float64).softmax(dim=0).tolist()
                results[i] = _label_scores(requests[i], probs, prompt_lens[i])
        return _all_done(results)

    def score_threads(self, requests: list[ThreadScoreRequest]) -> list[LabelScores]:
        """Score every question of each request, running each conversation's tokens once.

        A request's trunk (template head and segments) and all its questions go through the
        model as one row (:mod:`~synth_disco.engines.hf.thread_pack`). Results come in request
        order, then question order, as :func:`score_threads_by_prompts` gives them. Questions
        whose labels share a first token, a chat template that cannot be split around the user
        message, or a model whose packed scores do not match its plain ones (checked once, on
        the first call) are scored one prompt at a time instead.
        """
        self._check_open()
        slots = [(i, q) for i, req in enumerate(requests) for q in range(len(req.questions))]
        index = {slot: n for n, slot in enumerate(slots)}
        results: list[LabelScores | None] = [None] * len(slots)
        plain: list[tuple[int, int]] = []  # (request, question) scored one prompt each
        items: list[_ThreadItem] = []
        pieces = (
            self._thread_pieces(requests)
            if self._packed_ok is not False
            else [None] * len(requests)
        )
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
                firsts = [self._label_ids(lab)[:1] for lab in question.labels]
                view = ends[question.after] + len(tokens) if 0 <= question.after < len(ends) else 0
                if not tokens or not view or not all(firsts):
                    plain.append((i, q))  # the plain path reports what is wrong
                elif len({f[0] for f in firsts}) < len(firsts):
                    plain.append((i, q))  # multi-token labels: scored token by token
                elif view + 1 > self.max_context:
                    results[index[i, q]] = _error_scores(
                        question.id,
                        view,
                        f"prompt of {view} tokens exceeds the model context of {self.max_context}",
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
                if self._window is not None and thread.cost > self._window:
                    # Past a sliding-window layer's reach the packed mask would see too far
                    # (and the model's cache keeps only the window): one prompt per label.
                    plain.extend(slots[n] for n in kept_slots)
                else:
                    items.append(_ThreadItem(thread, kept_slots, kept_firsts))
        if items and self._packed_ok is None:
            self._packed_ok = self._check_packed(items[0].thread, items[0].firsts[-1])
            if not self._packed_ok:
                plain.extend(slots[n] for item in items for n in item.slots)
                items = []

        def question(n: int) -> ThreadQuestion:
            i, q = slots[n]
            return requests[i].questions[q]

        def run(batch: list[_ThreadItem]) -> None:
            logits = self._packed_logits([item.thread for item in batch])
            for row, item in enumerate(batch):
                for j, (n, firsts) in enumerate(zip(item.slots, item.firsts, strict=True)):
                    probs = logits[row, j, firsts].softmax(dim=0).tolist()
                    labels = question(n).labels
                    best = max(range(len(probs)), key=probs.__getitem__)
                    results[n] = LabelScores(
                        question(n).id, tuple(probs), labels[best], item.thread.view_length(j)
                    )

        def fail(item: _ThreadItem, exc: BaseException) -> None:
            for j, n in enumerate(item.slots):
                results[n] = _error_scores(question(n).id, item.thread.view_length(j), _short(exc))

        def padded(batch: list[_ThreadItem]) -> int:
            return len(batch) * max(item.thread.cost for item in batch)

        items.sort(key=lambda item: item.thread.cost)
        for batch in self._thread_batches(items):
            self._run_halving(batch, run, fail, padded)
        if plain:
            alone = [replace(requests[i], questions=(requests[i].questions[q],)) for i, q in plain]
            for (i, q), res in zip(plain, score_threads_by_prompts(self, alone), strict=True):
                results[index[i, q]] = res
        return _all_done(results)

    def _thread_pieces(
        self, requests: list[ThreadScoreRequest]
    ) -> list[tuple[list[int], list[list[int]], list[list[int]]] | None]:
        """Per request: token ids of the template head with ``head``, of each segment, and of
        each question with the template's tail; None where the template cannot be split.
        One tokenizer call for all, each distinct text once (annotators repeat segments)."""
        splits = [self._template_split(r.system) for r in requests]
        texts: dict[str, int] = {}
        for req, parts in zip(requests, splits, strict=True):
            if parts is not None:
                for text in (parts[0] + req.head, *req.segments):
                    texts.setdefault(text, len(texts))
                for q in req.questions:
                    texts.setdefault(q.text + parts[1], len(texts))
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
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

    def _template_split(self, system: str) -> tuple[str, str] | None:
        """The chat template's text before and after the user message, with ``system`` as
        the system message; None if the template does not hold the message verbatim once."""
        if system in self._template_parts:
            return self._template_parts[system]
        parts = None
        try:
            text = self.tokenizer.apply_chat_template(
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
        if len(self._template_parts) < 64:
            self._template_parts[system] = parts
        return parts

    def _thread_batches(self, items: list[_ThreadItem]) -> Iterator[list[_ThreadItem]]:
        """Cut cost-sorted packed threads into batches: rows, padded tokens and the second
        pass's attention mask (rows x branch slots x all slots) within their limits."""
        if self._prefill_limits is not None:
            token_cap = self._token_cap(self._prefill_limits[0])
            mask_cap = self._prefill_limits[1]
        else:
            token_cap, mask_cap = self._token_cap(), _THREAD_MASK_BYTES
        size = self._dtype_bytes()
        batch: list[_ThreadItem] = []
        for item in items:
            t = item.thread
            rows = len(batch) + 1
            branch = max(x.thread.branch_length for x in (*batch, item))
            trunk = max(len(x.thread.trunk) for x in (*batch, item))
            if batch and (
                rows > self.max_batch_size
                or (token_cap is not None and rows * t.cost > token_cap)
                or rows * branch * (trunk + branch) * size > mask_cap
                or (self._window is not None and trunk + branch > self._window)
            ):
                yield batch
                batch = []
            batch.append(item)
        if batch:
            yield batch

    def _packed_logits(self, threads: list[PackedThread]) -> torch.Tensor:
        """Float32 logits of every question's last token: (rows, most questions, vocab)."""
        dev = self.device
        with torch.inference_mode():
            cache = self._trunk_cache(threads)
            packed = pack(threads, self._pad_id, self.model.dtype)
            kwargs: dict[str, Any] = {"logits_to_keep": packed.keep} if self._keeps_logits else {}
            out = self.model(
                input_ids=packed.ids.to(dev),
                attention_mask=packed.mask.to(dev),
                position_ids=packed.positions.to(dev),
                past_key_values=cache,
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
        dev = self.device
        store = self._prefix if self._fast_prefill else None
        if store is None:
            hits: list[tuple[int, Any]] = [(0, None)] * len(threads)
        else:
            hits = [store.lookup(t.trunk) for t in threads]
        # A whole trunk in the store still leaves one token to run.
        common = min(min(c, len(t.trunk) - 1) for (c, _), t in zip(hits, threads, strict=True))
        width = max(len(t.trunk) for t in threads) - common
        ids = torch.full((len(threads), width), self._pad_id, dtype=torch.long)
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
            kwargs["past_key_values"] = past
        out = self.model(input_ids=ids.to(dev), use_cache=True, **kwargs, **self._keep_one)
        cache = out.past_key_values
        if store is not None:
            for row, t in enumerate(threads):
                store.add(t.trunk, _row_kv(cache, row, 0, len(t.trunk)))
        return cache

    def _check_packed(self, thread: PackedThread, firsts: list[int]) -> bool:
        """Whether this model scores a packed thread as it scores the same prompt alone (a
        model that ignores custom attention masks would not); checked on the last question."""
        try:
            packed = self._packed_logits([thread])[0, len(thread.questions) - 1, firsts]
            alone = self._last_logits([thread.view(len(thread.questions) - 1)], keep=False)[0]
        except Exception as exc:
            if _is_oom(exc):
                raise
            log.info("packed thread scoring unavailable for this model (%s)", _short(exc))
            return False
        a, b = packed.softmax(dim=0), alone[firsts].softmax(dim=0)
        tolerance = 1e-3 if self.model.dtype == torch.float32 else 3e-2
        ok = bool((a - b).abs().max() <= tolerance)
        if not ok:
            log.info("packed thread scores differ from plain ones on this model; not used")
        return ok

    def _forward_tail(self, seqs: list[list[int]], keep: int) -> torch.Tensor:
        """Float32 logits of the last ``keep`` positions of left-padded ``seqs``."""
        ids, mask = self._left_pad(seqs)
        # Positions count real tokens only, so padding never shifts a row's positions.
        positions = (mask.cumsum(dim=-1) - 1).clamp_min(0)
        kwargs: dict[str, Any] = {"logits_to_keep": keep} if self._keeps_logits else {}
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=False,
                **kwargs,
            )
        return out.logits[:, -keep:, :].float()

    def _score_waves(self, prompts: list[list[int]]) -> list[int]:
        """Wave 1 for each prompt sharing at least half its tokens with another prompt of the
        call that comes before it in token order (and that is in wave 0), else wave 0."""
        waves = [0] * len(prompts)
        if self._prefix is None or not self._fast_prefill or len(prompts) < 2:
            return waves
        order = sorted(range(len(prompts)), key=lambda i: prompts[i])
        leader: list[int] | None = None
        for i in order:
            p = prompts[i]
            if leader is not None:
                n = min(len(p), len(leader))
                common = next((j for j in range(n) if p[j] != leader[j]), n)
                if common >= max(self._prefix.min_tokens, len(p) // 2):
                    waves[i] = 1
                    continue
            leader = p
        return waves

    def _last_logits(self, seqs: list[list[int]], keep: bool = True) -> torch.Tensor:
        """Float32 logits of the last token of each of ``seqs`` (rows in order).

        All but the last token of each prompt go through :meth:`_prefill` (prefix store,
        right-padded causal prefill), so prompts that repeat stored prefixes only run their new
        tokens; then one step runs every row's last token. ``keep=False`` leaves the prompts
        out of the store (prompts no later prompt is expected to repeat). Falls back to a plain left-padded
        forward pass where the own prefill is unavailable.
        """
        items = [_GenItem(-1, None, s) for s in seqs]  # type: ignore[arg-type]
        width = max(len(s) for s in seqs)
        with torch.inference_mode():
            cache = self._prefill(items, width, keep) if min(len(s) for s in seqs) > 1 else None
            if cache is None:
                return self._forward_tail(seqs, 1)[:, -1, :]
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for row, seq in enumerate(seqs):
                mask[row, width - len(seq) :] = 1
            last = torch.tensor([[s[-1]] for s in seqs], dtype=torch.long)
            positions = torch.tensor([[len(s) - 1] for s in seqs], dtype=torch.long)
            out = self.model(
                input_ids=last.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                past_key_values=cache,
                use_cache=True,
                **self._keep_one,
            )
        return out.logits[:, -1, :].float()

    def _score_first_batch(self, batch: list[_ScoreRow], keep: bool) -> list[list[float]]:
        """One forward pass; softmax over each request's labels' (distinct) first tokens."""
        logits = self._last_logits([r.prompt for r in batch], keep)
        out = []
        for row, lg in zip(batch, logits, strict=True):
            out.append(lg[row.label_ids].softmax(dim=0).tolist())
        return out

    def _score_multi_batch(self, batch: list[_ScoreRow]) -> list[float]:
        """Sum of label-token log-probs for each prompt+label row."""
        longest = max(len(r.label_ids) for r in batch)
        logp = self._forward_tail([r.prompt + r.label_ids for r in batch], longest + 1).log_softmax(
            dim=-1
        )
        out = []
        for b, row in enumerate(batch):
            n = len(row.label_ids)
            # Label token t (0-based) sits at tail position keep-n+t; its predictor one before.
            start = logp.shape[1] - n - 1
            pred = logp[b, start : start + n, :]
            targets = torch.tensor(row.label_ids, device=pred.device)[:, None]
            out.append(float(pred.gather(1, targets).sum()))
        return out


def _all_done(results: list[_T | None]) -> list[_T]:
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:  # every path above fills its slot; this guards against silent drops
        raise RuntimeError(f"engine produced no result for requests {missing}")
    return results  # type: ignore[return-value]


def _check_params(p: SamplingParams) -> str | None:
    if p.max_new_tokens < 1:
        return f"max_new_tokens must be >= 1, got {p.max_new_tokens}"
    if p.temperature < 0:
        return f"temperature must be >= 0, got {p.temperature}"
    if not 0 < p.top_p <= 1:
        return f"top_p must be in (0, 1], got {p.top_p}"
    if p.top_k < 0:
        return f"top_k must be >= 0, got {p.top_k}"
    if p.repetition_penalty <= 0:
        return f"repetition_penalty must be > 0, got {p.repetition_penalty}"
    return None


def _error_completion(request_id: str, prompt_tokens: int, message: str) -> Completion:
    return Completion(request_id, "", prompt_tokens, 0, "error", error=message)


def _error_scores(request_id: str, prompt_tokens: int, message: str) -> LabelScores:
    return LabelScores(request_id, (), "", prompt_tokens, error=message)


def _label_scores(req: ScoreRequest, probs: list[float], prompt_tokens: int) -> LabelScores:
    best = max(range(len(probs)), key=probs.__getitem__)
    return LabelScores(req.id, tuple(probs), req.labels[best], prompt_tokens)
