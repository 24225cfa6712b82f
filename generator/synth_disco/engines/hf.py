"""The transformers engine: batched chat generation and label scoring with any causal LM.

How a batch is made: requests are templated and tokenised, grouped by the settings that
``generate`` can only take per batch (``max_new_tokens``, ``repetition_penalty``, ``stop``),
sorted by prompt length, and cut into left-padded batches bounded by ``max_batch_size`` rows and
``max_batch_tokens`` padded tokens (prompt + new tokens). Temperature, top-k and top-p are
applied per row, so requests that differ only in those still share a batch.

Per-request seeded sampling: ``generate`` runs greedy (``do_sample=False``) with a logits
processor (:class:`SeededSampler`) that, per row, applies temperature, top-k and top-p and then
adds Gumbel noise derived from a counter-based hash of (request seed, decoding step, token id).
The argmax of logits plus Gumbel noise is an exact sample from the softmax, and the noise of a
row never depends on the other rows, so a request's text is a function of its seed and prompt
alone (up to floating-point differences between batch shapes, which are nil in practice in
float32 on CPU and can flip rare near-ties in bfloat16 on GPU).

Continuous batching (``generate_batch``) is deliberately not used: in transformers 5.23 it
drops stop strings and repetition penalty, has a single global sampling seed, and with sdpa
builds a dense mask over the whole cache. It could only serve greedy requests without stop
strings on CUDA with a flash-attention kernel, which is not what discussion generation asks for.

CUDA out-of-memory (and any other failure) in a batch halves the batch and retries, down to a
single request, which then gets ``finish_reason="error"``; the others go on.
"""

from __future__ import annotations

import gc
import inspect
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
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
)
from synth_disco.engines.errors import EngineLoadError

log = logging.getLogger(__name__)

_MASK32 = 0xFFFFFFFF
_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------
# Counter-based randomness: a 32-bit integer hash evaluated with int64 torch ops (or Python
# ints). Exact, device-independent in its integer part, and free of any generator state.


def _mul32(x: Any, c: int) -> Any:
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32`` without overflowing int64."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: Any) -> Any:
    """A well-mixing bijection on 32-bit values (Wellons' "lowbias32")."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32  # constant < 2**31: the product fits in int64
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def seed_key(seed: int) -> int:
    """Fold an arbitrary Python int seed into a 32-bit hash key."""
    s = seed & 0xFFFFFFFFFFFFFFFF
    return _mix32((s & _MASK32) ^ _mix32(((s >> 32) ^ 0x5BD1E995) & _MASK32))


class SeededSampler(LogitsProcessor):
    """Per-row temperature / top-k / top-p, then Gumbel noise keyed by (seed, step, token).

    Rows with temperature 0 are left untouched (greedy). ``prompt_len`` is the padded prompt
    length of the batch, so ``step`` counts generated tokens and is the same for a request
    whatever batch it is in.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        temperature: Sequence[float],
        top_k: Sequence[int],
        top_p: Sequence[float],
        prompt_len: int,
        vocab_size: int,
        device: torch.device,
    ) -> None:
        self.prompt_len = prompt_len
        self.keys = torch.tensor([seed_key(s) for s in seeds], dtype=torch.int64, device=device)
        temp = torch.tensor(temperature, dtype=torch.float32, device=device)
        self.sampled = temp > 0
        self.all_sampled = bool(self.sampled.all())
        self.inv_temp = torch.where(self.sampled, 1.0 / temp.clamp_min(1e-6), 1.0)[:, None]
        v = vocab_size
        ks = [min(k, v) if k > 0 else v for k in top_k]
        self.uniform_k = ks[0] if len(set(ks)) == 1 and ks[0] < v else None
        self.has_top_k = any(k < v for k in ks)
        self.top_k = torch.tensor(ks, dtype=torch.int64, device=device)[:, None]
        self.has_top_p = any(p < 1.0 for p in top_p)
        # p >= 1 keeps everything; 2.0 stays above any rounding of a cumulative sum.
        ps = [p if p < 1.0 else 2.0 for p in top_p]
        self.top_p = torch.tensor(ps, dtype=torch.float32, device=device)[:, None]
        self.vocab_hash = _mix32(torch.arange(v, dtype=torch.int64, device=device))[None, :]

    def gumbel(self, step: int, width: int) -> torch.Tensor:
        """Standard Gumbel noise of shape (rows, width) for decoding step ``step``."""
        base = _mix32(self.keys ^ _mul32(step + 1, 0x9E3779B9))[:, None]
        h = _mix32(base ^ self.vocab_hash[:, :width])
        # 24 random bits -> uniform in (0, 1), exact in float32.
        u = ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
        return -torch.log(-torch.log(u))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not bool(self.sampled.any()):
            return scores
        step = input_ids.shape[1] - self.prompt_len
        x = scores.float() * self.inv_temp
        if self.has_top_p or (self.has_top_k and self.uniform_k is None):
            x = self._filter_sorted(x)
        elif self.has_top_k:
            kth = torch.topk(x, self.uniform_k, dim=-1).values[:, -1:]
            x = x.masked_fill(x < kth, -math.inf)
        width = x.shape[-1]
        if width > self.vocab_hash.shape[-1]:  # padded logits wider than the tokenizer vocab
            self.vocab_hash = _mix32(torch.arange(width, dtype=torch.int64, device=x.device))[None]
        x = x + self.gumbel(step, width)
        if self.all_sampled:
            return x
        return torch.where(self.sampled[:, None], x, scores.float())

    def _filter_sorted(self, x: torch.Tensor) -> torch.Tensor:
        """Top-k then top-p (nucleus) masking with per-row k and p, via one sort."""
        vals, idx = torch.sort(x, dim=-1, descending=True, stable=True)
        positions = torch.arange(x.shape[-1], device=x.device)[None, :]
        remove = positions >= self.top_k
        if self.has_top_p:
            probs = vals.masked_fill(remove, -math.inf).softmax(dim=-1)
            higher = probs.cumsum(dim=-1) - probs  # mass of strictly better tokens
            remove = remove | (higher >= self.top_p)
        remove = torch.zeros_like(remove).scatter_(1, idx, remove)
        return x.masked_fill(remove, -math.inf)


# --------------------------------------------------------------------------------------------


@dataclass
class _GenItem:
    index: int
    request: ChatRequest
    ids: list[int]


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
    ) -> None:
        """Load ``model`` (hub id or local path); ``model_id`` is the name kept for records
        (defaults to ``model``). Raises :class:`EngineLoadError` when it cannot be loaded."""
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
        self._closed = False
        self._load(model, revision, dtype, device, device_map, trust_remote_code, chat_template)

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
        self._keeps_logits = "logits_to_keep" in inspect.signature(lm.forward).parameters
        self._keep_one = {"logits_to_keep": 1} if self._keeps_logits else {}
        # Right-padded prefill (see _prefill); switched off for good if the model rejects it.
        self._fast_prefill = True

    def _find_max_context(self) -> int:
        cfg = self.model.config
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
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

    def close(self) -> None:
        """Release the model and its memory; the engine cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        del self.model
        self._stop_criteria.clear()
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

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    # ---------------------------------------------------------------- batching

    def _chunks(self, items: list[_T], length: Callable[[_T], int]) -> Iterator[list[_T]]:
        """Cut length-sorted ``items`` into batches within the row and padded-token limits."""
        caps = [c for c in (self.max_batch_tokens, self._oom_token_cap) if c]
        token_cap = min(caps) if caps else None
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
        for i, req in enumerate(requests):
            p = req.params
            problem = _check_params(p)
            ids: list[int] = []
            if problem is None:
                try:
                    ids = self._encode(req.messages)
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
        return [r for r in results if r is not None]

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

    def _prefill(self, items: list[_GenItem], width: int) -> DynamicCache | None:
        """KV cache of every prompt but its last token, laid out as left padding would.

        A left-padded prefill needs an explicit attention mask, which keeps SDPA off its causal
        kernels (about 2x slower on long prompts). Right padding needs no mask: causal attention
        never lets a real token see the padding after it. So the prompts minus their last token
        run right-padded, and each row's cache is then rotated so its real entries end at the
        right edge; ``generate`` masks the rotated-in padding and processes the last token.
        Only for plain full-attention caches; anything else (or a batch without padding)
        returns None and ``generate`` prefills as usual.
        """
        lengths = [len(it.ids) for it in items]
        if not self._fast_prefill or width < 2 or min(lengths) == max(lengths):
            return None
        cut = width - 1
        ids = torch.full((len(items), cut), self._pad_id, dtype=torch.long)
        for row, it in enumerate(items):
            ids[row, : len(it.ids) - 1] = torch.tensor(it.ids[:-1], dtype=torch.long)
        try:
            out = self.model(input_ids=ids.to(self.device), use_cache=True, **self._keep_one)
            cache = out.past_key_values
            if type(cache) is not DynamicCache or any(
                type(layer) is not DynamicLayer for layer in cache.layers
            ):
                raise TypeError(f"{type(cache).__name__} is not a plain full-attention cache")
            pads = torch.tensor([width - n for n in lengths], device=self.device)
            source = (torch.arange(cut, device=self.device)[None, :] - pads[:, None]) % cut
            for layer in cache.layers:
                index = source[:, None, :, None].expand_as(layer.keys)
                layer.keys = layer.keys.gather(2, index)
                layer.values = layer.values.gather(2, index.expand_as(layer.values))
            return cache
        except Exception as exc:
            if _is_oom(exc):
                raise
            self._fast_prefill = False
            log.info("right-padded prefill unavailable for this model (%s)", _short(exc))
            return None

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
        for i, req in enumerate(requests):
            prompt: list[int] = []
            try:
                if not req.labels:
                    raise ValueError("no labels to score")
                prompt = self._encode(req.messages)
                labels = [
                    self.tokenizer(lab, add_special_tokens=False)["input_ids"] for lab in req.labels
                ]
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

        def run_first(batch: list[_ScoreRow]) -> None:
            for row, probs in zip(batch, self._score_first_batch(batch), strict=True):
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

            rows.sort(key=lambda r: (length(r), r.index, r.label))
            for batch in self._chunks(rows, length):
                self._run_halving(batch, run, fail, padded)

        for i, lps in logprobs.items():
            if results[i] is None and all(lp is not None for lp in lps):
                probs = torch.tensor(lps, dtype=torch.float64).softmax(dim=0).tolist()
                results[i] = _label_scores(requests[i], probs, prompt_lens[i])
        return [r for r in results if r is not None]

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

    def _score_first_batch(self, batch: list[_ScoreRow]) -> list[list[float]]:
        """One forward pass; softmax over each request's labels' (distinct) first tokens."""
        logits = self._forward_tail([r.prompt for r in batch], 1)[:, -1, :]
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
