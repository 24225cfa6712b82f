"""The ``openai`` engine: any OpenAI-compatible server (``vllm serve``, SGLang, TGI, llama.cpp's
server, hosted APIs), one server or a list of replicas.

The server batches, so the engine keeps many requests in flight: ``generate`` and ``score``
send every request of a call at once (at most ``max_in_flight`` open at a time, spread over the
replicas, least-loaded first) and return results in request order. The caller sees a plain
synchronous method: the requests run on an asyncio loop in a private thread that lives as long
as the engine, so the engine works the same from scripts, from other threads and from code that
is already inside a running event loop.

Failures are sorted into two kinds. Transient ones (429, 5xx, timeouts, refused or dropped
connections) are retried with exponential backoff and jitter, honouring ``Retry-After``; a
refused connection moves to another replica at once. A request that still fails after
``max_retries`` becomes a failed result (``finish_reason="error"``), never an exception, so a
build journals it and ``--retry-failed`` can redo it. Answers no retry can fix (401/403, 404
model not found, 400 bad request or context too long) raise :class:`EndpointError` at once,
naming the server and the status, so a build stops early with one message.

The API key is read from the environment variable named by ``api_key_env`` when the engine
loads. It is sent only in the ``Authorization`` header and is masked out of every message the
engine writes (errors, failed results, log lines), even where a server echoes it back.

Scores: ``score`` asks for one reply token with its top log-probs (``top_logprobs``, 20 by
default) and renormalises over the labels, as the transformers engine renormalises over the
labels' first tokens. A listed token counts for the label it spells, else for the labels it
begins (leading whitespace aside). A label absent from the list cannot be read from the
server, only bounded: it gets the floor, ten times less likely than the least likely listed
token (or the probability left outside the list, if that is less); a request where no label
is listed fails instead of returning a uniform guess. Labels that share their first token
(known from the server's ``/tokenize``) are scored whole: each label's tokens appended to the
templated prompt go to ``/v1/completions`` with ``echo`` and vLLM's ``prompt_logprobs``, and
the sums of their log-probs are renormalised. A server without ``/tokenize`` has its labels
scored by first token, matched as text.

Reproducibility: each request sends its own ``seed``. Whether the same seed gives the same
text again is up to the server: vLLM honours per-request seeds, but its batching can still
change the numerics (which requests share a batch, prefix-cache hits), so sampled text is
reproducible only on a server that honours ``seed`` and batches deterministically. Greedy
decoding (``temperature: 0``) is reproducible on vLLM with the same model, version and
hardware; hosted APIs promise at most "best effort". ``engine_info()["reproducibility"]`` says
this in one sentence for the dataset card.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

try:  # huggingface_hub >= 1 installs httpx's successor under this name
    import httpx2 as httpx
except ImportError:  # pragma: no cover - environments with the original httpx
    import httpx  # type: ignore[no-redef]

from synth_disco.engines.base import (
    ChatRequest,
    Completion,
    FinishReason,
    LabelScores,
    SamplingParams,
    ScoreRequest,
)
from synth_disco.errors import SynthDiscoError

log = logging.getLogger(__name__)

_T = TypeVar("_T")

REPRODUCIBILITY = (
    "Each request sent its own seed to an OpenAI-compatible server; sampled replies repeat "
    "only where the server honours per-request seeds and batches deterministically, greedy "
    "replies repeat on vLLM with the same model, version and hardware."
)

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
MODELS_PATH = "/v1/models"
TOKENIZE_PATH = "/tokenize"  # vLLM and SGLang serve it at the root, not under /v1

# A label missing from the server's top log-probs gets this much less than the least likely
# token listed (ln 10: ten times less likely), or the unlisted mass if that is smaller.
FLOOR_MARGIN = math.log(10.0)
# Template tokens per message assumed by the byte bound of count_tokens (no /tokenize).
BYTE_BOUND_PER_MESSAGE = 8
_SERVER_MESSAGE_CHARS = 300


# --------------------------------------------------------------------------------- errors


class OpenAIConfigError(SynthDiscoError):
    """An ``openai`` engine setting is invalid."""

    exit_code = 2


class EndpointError(SynthDiscoError):
    """The server answered what no retry can fix, or could not be reached when loading.

    ``status`` is the HTTP status (``None`` when the server was not reached); exit code 2
    for answers that mean the recipe or the environment is wrong (auth, model, request), 1
    for a server that is down.
    """

    exit_code = 2

    def __init__(self, message: str, *, status: int | None = None, exit_code: int = 2) -> None:
        super().__init__(message)
        self.status = status
        self.exit_code = exit_code


class ScoreUnsupportedError(EndpointError):
    """The server gives no log-probabilities, so the ``score`` method cannot work with it."""


class ContextUnknownError(EndpointError):
    """The server does not report the model's context length (``max_model_len``)."""


class _Exhausted(Exception):
    """A request failed transiently more than ``max_retries`` times; the text says why."""


# --------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class OpenAIConfig:
    """Settings of the ``openai`` engine.

    ``base_url`` is a server root (``http://host:8000``; a trailing ``/v1`` is accepted and
    dropped) or a list of replicas serving the same model. ``api_key_env`` names the
    environment variable that holds the key; the key itself is never part of the config.
    """

    base_url: str | list[str]
    model: str
    api_key_env: str | None = None
    max_in_flight: int = 64  # requests open at once, over all replicas
    timeout_s: float = 600.0  # per attempt; a long reply from a busy server takes minutes
    connect_timeout_s: float = 10.0
    max_retries: int = 6  # transient failures retried per request before it fails
    backoff_initial_s: float = 1.0
    backoff_multiplier: float = 2.0
    backoff_max_s: float = 60.0
    jitter: float = 0.5  # up to this fraction of each backoff delay is drawn at random
    max_retry_after_s: float = 300.0  # longer Retry-After values are cut to this
    replica_cooldown_s: float = 30.0  # a replica that refused a connection rests this long
    top_logprobs: int = 20  # first-token candidates asked for when scoring labels
    retry_seed: int = 0  # seeds the engine's private jitter generator

    def __post_init__(self) -> None:
        problems: list[str] = []
        urls = self.urls()
        if not urls:
            problems.append("base_url: give at least one server URL")
        for url in urls:
            if not re.match(r"^https?://[^/\s]+", url):
                problems.append(f"base_url: {url!r} is not an http(s) URL")
        if not isinstance(self.model, str) or not self.model.strip():
            problems.append("model: name the model the server serves")
        if self.api_key_env is not None and not re.fullmatch(
            r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env
        ):
            problems.append(
                f"api_key_env: {self.api_key_env!r} is not an environment variable name "
                "(name the variable that holds the key, not the key)"
            )
        checks = (
            ("max_in_flight", self.max_in_flight >= 1, ">= 1"),
            ("timeout_s", self.timeout_s > 0, "> 0"),
            ("connect_timeout_s", self.connect_timeout_s > 0, "> 0"),
            ("max_retries", self.max_retries >= 0, ">= 0"),
            ("backoff_initial_s", self.backoff_initial_s >= 0, ">= 0"),
            ("backoff_multiplier", self.backoff_multiplier >= 1, ">= 1"),
            ("backoff_max_s", self.backoff_max_s >= 0, ">= 0"),
            ("jitter", 0 <= self.jitter <= 1, "between 0 and 1"),
            ("max_retry_after_s", self.max_retry_after_s >= 0, ">= 0"),
            ("replica_cooldown_s", self.replica_cooldown_s >= 0, ">= 0"),
            ("top_logprobs", 1 <= self.top_logprobs <= 20, "between 1 and 20"),
        )
        for name, ok, rule in checks:
            if not ok:
                problems.append(f"{name}: must be {rule}, got {getattr(self, name)!r}")
        if problems:
            raise OpenAIConfigError("openai engine: " + "; ".join(problems))

    def urls(self) -> list[str]:
        """The server roots, without trailing ``/`` or ``/v1``."""
        raw = [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)
        return [_server_root(u) for u in raw if isinstance(u, str) and u.strip()]


def _server_root(url: str) -> str:
    root = url.strip().rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def _shown(url: str) -> str:
    """The URL as messages show it: no user:password part."""
    return re.sub(r"^(https?://)[^@/]*@", r"\1", url)


def load(config: OpenAIConfig) -> OpenAIEngine:
    """Connect to the server(s) of ``config``: read the key, check the model is served."""
    return OpenAIEngine(config)


# --------------------------------------------------------------------------------- plumbing


class _Secret:
    """Holds the API key; its repr never shows it."""

    def __init__(self, value: str | None) -> None:
        self._value = value

    def reveal(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "<hidden>" if self._value else "<none>"


class _LoopThread:
    """An asyncio event loop running in a private daemon thread; ``run`` waits for a coroutine.

    One loop for the engine's whole life, so the HTTP client's connections are reused from
    call to call, and callers inside their own running loop are not disturbed.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("the openai engine cannot be called from its own event loop")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. Ctrl-C in the caller: stop the requests still open
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        if not self.thread.is_alive():
            self.loop.close()


@dataclass
class _Replica:
    """One server of the pool and what the scheduler knows about it."""

    index: int
    root: str
    shown: str
    in_flight: int = 0
    down_until: float = 0.0  # monotonic time before which it is not picked (refused a connection)
    answered: int = 0  # 2xx answers, for stats
    refused: int = 0  # connections refused, for stats


@dataclass
class _Attempt:
    """What one HTTP attempt gave: an answer, or the reason it failed transiently."""

    response: httpx.Response | None = None
    reason: str = ""
    retry_after: float | None = None
    refused: bool = False  # the connection was never made: safe to send elsewhere at once


# --------------------------------------------------------------------------------- engine


class OpenAIEngine:
    """Chat completions and label scores from an OpenAI-compatible server (see module doc).

    ``model_id`` is the model id the server reported; ``revision`` is always ``None`` (a
    server does not say which checkpoint revision it runs).
    """

    revision: str | None = None

    def __init__(self, config: OpenAIConfig) -> None:
        self.config = config
        self._key = _Secret(_read_key(config))
        self._replicas = [_Replica(i, root, _shown(root)) for i, root in enumerate(config.urls())]
        self._rng = random.Random(config.retry_seed)  # backoff jitter only; no global RNG
        self._turn = 0  # round-robin position among equally loaded replicas
        self._closed = False
        self._stats = {"requests": 0, "retries": 0, "failed": 0}
        self._tokenize_ok: bool | None = None  # unknown until the first /tokenize call
        self._label_ids: dict[str, asyncio.Future[Any]] = {}  # label -> its /tokenize answer
        self._owned_by: str | None = None
        self._root: str | None = None
        self._max_model_len: int | None = None
        self.model_id = config.model
        self._served = config.model  # the id sent in requests
        self._loop = _LoopThread(f"openai-engine-{id(self):x}")
        try:
            self._loop.run(self._open())
        except BaseException:
            self._shutdown()
            raise

    def __repr__(self) -> str:
        return (
            f"OpenAIEngine(model={self.model_id!r}, replicas={len(self._replicas)}, "
            f"max_in_flight={self.config.max_in_flight})"
        )

    # ------------------------------------------------------------------ public surface

    @property
    def max_context(self) -> int:
        """Longest prompt + reply, from the ``max_model_len`` the server lists (vLLM does).

        Raises :class:`ContextUnknownError` when the server does not say; the annotation
        stage then leaves prompt length to the server.
        """
        if self._max_model_len is None:
            raise ContextUnknownError(
                f"{self._where()} does not report the context length of {self.model_id!r}",
                exit_code=1,
            )
        return self._max_model_len

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        """One completion per request, in request order; all requests are sent at once."""
        self._check_open()
        if not requests:
            return []
        return self._loop.run(self._all([self._generate_one(r) for r in requests]))

    def score(self, requests: list[ScoreRequest]) -> list[LabelScores]:
        """Probability of each label as the reply, from the server's log-probabilities.

        Labels whose first tokens differ (or any labels, when the server cannot tokenize)
        are scored by the first reply token's top log-probs, renormalised over the labels;
        labels sharing a first token are scored by the sum of their tokens' prompt
        log-probs (vLLM's ``prompt_logprobs``). Raises :class:`ScoreUnsupportedError` when
        the server gives no log-probs.
        """
        self._check_open()
        if not requests:
            return []
        return self._loop.run(self._all([self._score_one(r) for r in requests]))

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens of ``messages`` as the server templates them (its ``/tokenize``).

        A server without ``/tokenize`` gets an upper bound instead: the UTF-8 bytes of the
        messages plus ``BYTE_BOUND_PER_MESSAGE`` per message for the template (a byte-level
        or byte-fallback tokenizer never makes a token of less than one byte).
        """
        self._check_open()
        return self._loop.run(self._count(messages))

    def engine_info(self) -> dict[str, Any]:
        """What to record about the engine: the model as the server reported it (no URLs, no key)."""
        return {
            "engine": "openai",
            "name": self.model_id,
            "revision": None,
            "root": self._root,
            "owned_by": self._owned_by,
            "max_model_len": self._max_model_len,
            "replicas": len(self._replicas),
            "reproducibility": REPRODUCIBILITY,
        }

    def stats(self) -> dict[str, Any]:
        """Requests sent, retries made, requests that failed; answers and refusals per replica."""
        return {
            **self._stats,
            "answered": [r.answered for r in self._replicas],
            "refused": [r.refused for r in self._replicas],
        }

    def close(self) -> None:
        """Close the HTTP client and stop the engine's thread; the engine cannot be used after."""
        if not self._closed:
            self._shutdown()

    # ------------------------------------------------------------------ loading

    async def _open(self) -> None:
        cfg = self.config
        headers = {"Accept": "application/json"}
        key = self._key.reveal()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(cfg.timeout_s, connect=cfg.connect_timeout_s, pool=None),
            limits=httpx.Limits(
                max_connections=cfg.max_in_flight, max_keepalive_connections=cfg.max_in_flight
            ),
            follow_redirects=False,  # a redirected POST would lose its body; say so instead
        )
        self._slots = asyncio.Semaphore(cfg.max_in_flight)
        listings = await asyncio.gather(
            *(self._list_models(r) for r in self._replicas), return_exceptions=True
        )
        for err in listings:  # an unrecoverable answer from any replica stops the load
            if isinstance(err, BaseException) and not isinstance(err, _Exhausted):
                raise err
        reached = [
            (r, m) for r, m in zip(self._replicas, listings, strict=True) if isinstance(m, list)
        ]
        if not reached:
            reasons = "; ".join(str(e) for e in listings)
            raise EndpointError(
                f"cannot reach the openai server at {self._where()}: {reasons}. "
                "Is the server running and base_url right?",
                exit_code=1,
            )
        for rep, err in zip(self._replicas, listings, strict=True):
            if isinstance(err, _Exhausted):
                rep.down_until = time.monotonic() + cfg.replica_cooldown_s
                log.warning(
                    "openai engine: replica %s is not answering (%s); using the others",
                    rep.shown,
                    err,
                )
        lengths = []
        for rep, models in reached:
            entry = self._find_model(rep, models)
            lengths.append(entry.get("max_model_len"))
            self._served = str(entry["id"])
            self._owned_by = (
                entry.get("owned_by") if isinstance(entry.get("owned_by"), str) else None
            )
            root = entry.get("root")
            # The root is a Hub id or a path on the server; record only the former.
            if isinstance(root, str) and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", root) and root != ".":
                self._root = root
        self.model_id = self._served
        known = [n for n in lengths if isinstance(n, int) and n > 0]
        self._max_model_len = min(known) if known else None
        log.info(
            "openai engine: model %s on %d replica(s), context %s",
            self.model_id,
            len(self._replicas),
            self._max_model_len if self._max_model_len is not None else "not reported",
        )

    async def _list_models(self, rep: _Replica) -> list[dict[str, Any]]:
        answer = await self._call("GET", MODELS_PATH, None, replica=rep)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list):
            raise EndpointError(
                f"{rep.shown}{MODELS_PATH} did not list models (is base_url an "
                "OpenAI-compatible server?)"
            )
        return [m for m in data if isinstance(m, dict) and "id" in m]

    def _find_model(self, rep: _Replica, models: list[dict[str, Any]]) -> dict[str, Any]:
        want = self.config.model
        exact = [m for m in models if m["id"] == want]
        if exact:
            return exact[0]
        by_root = [m for m in models if m.get("root") == want]
        if len(by_root) == 1:  # vllm serve REPO --served-model-name ALIAS: the recipe named REPO
            log.info("openai engine: %s serves %s as %r", rep.shown, want, by_root[0]["id"])
            return by_root[0]
        offered = ", ".join(repr(str(m["id"])) for m in models) or "none"
        raise EndpointError(
            f"model {want!r} is not served by {rep.shown}; the server offers: {offered}",
            status=404,
        )

    # ------------------------------------------------------------------ generation

    async def _generate_one(self, req: ChatRequest) -> Completion:
        problem = _check_params(req.params)
        if problem is not None:
            return _error_completion(req.id, problem)
        try:
            answer = await self._call("POST", CHAT_PATH, self._chat_body(req))
        except _Exhausted as exc:
            self._stats["failed"] += 1
            return _error_completion(req.id, str(exc))
        try:
            return self._completion(req, answer)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            self._stats["failed"] += 1
            return _error_completion(req.id, f"malformed answer from the server ({exc!r})")

    def _chat_body(self, req: ChatRequest) -> dict[str, Any]:
        p = req.params
        body: dict[str, Any] = {
            "model": self._served,
            "messages": [{"role": m["role"], "content": m["content"]} for m in req.messages],
            "max_tokens": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "seed": req.seed,
        }
        if p.stop:
            body["stop"] = list(p.stop)
        # vLLM reads these from the body; others may reject unknown keys, so only when needed.
        if p.top_k > 0:
            body["top_k"] = p.top_k
        if p.repetition_penalty != 1.0:
            body["repetition_penalty"] = p.repetition_penalty
        return body

    def _completion(self, req: ChatRequest, answer: dict[str, Any]) -> Completion:
        choice = answer["choices"][0]
        text = (choice.get("message") or {}).get("content") or ""
        usage = answer.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        reason = choice.get("finish_reason")
        finish: FinishReason
        if reason == "length":
            finish = "length"
        elif reason == "stop":
            # vLLM names the stop string that matched; a token id or nothing means end of sequence.
            stop_reason = choice.get("stop_reason")
            finish = "stop" if isinstance(stop_reason, str) and stop_reason else "eos"
        else:
            self._stats["failed"] += 1
            return _error_completion(
                req.id, f"the server ended the reply with finish_reason {reason!r}", prompt_tokens
            )
        # A server that leaves the stop string in the text: cut it as the other engines do.
        hits = [text.find(s) for s in req.params.stop if s and s in text]
        if hits:
            text, finish = text[: min(hits)], "stop"
        return Completion(req.id, text, prompt_tokens, completion_tokens, finish)

    # ------------------------------------------------------------------ scoring

    async def _score_one(self, req: ScoreRequest) -> LabelScores:
        if not req.labels:
            return _error_scores(req.id, "no labels to score")
        if any(not lab for lab in req.labels):
            return _error_scores(req.id, "an empty label cannot be scored")
        try:
            ids = [await self._label_tokens(lab) for lab in req.labels]
            if all(x is not None for x in ids):
                firsts = [x[0] for x in ids if x]
                if len(firsts) == len(ids) and len(set(firsts)) < len(firsts):
                    return await self._score_sequences(req, ids)  # type: ignore[arg-type]
            return await self._score_first(req)
        except _Exhausted as exc:
            return _error_scores(req.id, str(exc))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            return _error_scores(req.id, f"malformed answer from the server ({exc!r})")

    async def _score_first(self, req: ScoreRequest) -> LabelScores:
        """Softmax over the labels of the first reply token's top log-probs."""
        body = {
            "model": self._served,
            "messages": [{"role": m["role"], "content": m["content"]} for m in req.messages],
            "max_tokens": 1,
            "temperature": 0.0,
            "seed": 0,
            "logprobs": True,
            "top_logprobs": self.config.top_logprobs,
        }
        answer = await self._call("POST", CHAT_PATH, body)
        choice = answer["choices"][0]
        prompt_tokens = int((answer.get("usage") or {}).get("prompt_tokens") or 0)
        logprobs = choice.get("logprobs")
        content = logprobs.get("content") if isinstance(logprobs, dict) else None
        if not content:
            raise ScoreUnsupportedError(
                f"{self._where()} returned no log-probabilities for {self.model_id!r} "
                "(logprobs: true, top_logprobs), so labels cannot be scored; use "
                "`method: generate` in the annotation settings instead"
            )
        first = content[0]
        entries = first.get("top_logprobs") or [first]
        lps = _label_logprobs(entries, req.labels)
        if lps is None:
            shown = ", ".join(repr(e.get("token")) for e in entries[:5])
            return _error_scores(
                req.id,
                f"none of the labels is among the server's top {len(entries)} first tokens "
                f"(most likely: {shown})",
                prompt_tokens,
            )
        return _label_scores(req, _softmax(lps), prompt_tokens)

    async def _score_sequences(self, req: ScoreRequest, label_ids: list[list[int]]) -> LabelScores:
        """Sum of each label's token log-probs after the prompt (labels sharing a first token)."""
        prompt = await self._tokenize({"messages": req.messages, "add_generation_prompt": True})
        unsupported = ScoreUnsupportedError(
            f"labels {list(req.labels)} share their first token, and {self._where()} gives no "
            "prompt log-probabilities (/tokenize and /v1/completions with prompt_logprobs, as "
            "vLLM serves) to score whole labels; use labels that start differently or "
            "`method: generate`"
        )
        if prompt is None:
            raise unsupported
        prompt_ids = [int(t) for t in prompt["tokens"]]
        body = {
            "model": self._served,
            "prompt": [prompt_ids + ids for ids in label_ids],
            "max_tokens": 1,
            "temperature": 0.0,
            "seed": 0,
            "echo": True,
            "logprobs": 1,
            "prompt_logprobs": 1,
        }
        answer = await self._call("POST", COMPLETIONS_PATH, body, missing=(404, 405, 501))
        if answer is None:
            raise unsupported
        choices = sorted(answer["choices"], key=lambda c: int(c.get("index", 0)))
        if len(choices) != len(label_ids):
            raise ValueError(f"{len(choices)} choices for {len(label_ids)} prompts")
        sums = []
        for choice, ids in zip(choices, label_ids, strict=True):
            lp = _sequence_logprob(choice, len(prompt_ids), ids)
            if lp is None:
                raise unsupported
            sums.append(lp)
        return _label_scores(req, _softmax(sums), len(prompt_ids))

    async def _label_tokens(self, label: str) -> list[int] | None:
        """Token ids of a label, or None when the server cannot tokenize.

        Every score request repeats its label set, and a call sends all requests at once:
        one shared task per label asks the server once; a failed one is forgotten.
        """
        task = self._label_ids.get(label)
        if task is None:
            task = asyncio.ensure_future(
                self._tokenize({"prompt": label, "add_special_tokens": False})
            )
            self._label_ids[label] = task

            def forget(done: asyncio.Future[Any], label: str = label) -> None:
                if done.cancelled() or done.exception() is not None:
                    self._label_ids.pop(label, None)

            task.add_done_callback(forget)
        answer = await asyncio.shield(task)
        return None if answer is None else [int(t) for t in answer["tokens"]]

    # ------------------------------------------------------------------ tokens

    async def _count(self, messages: list[dict[str, str]]) -> int:
        try:
            answer = await self._tokenize({"messages": messages, "add_generation_prompt": True})
        except _Exhausted as exc:
            log.warning("openai engine: counting tokens by bytes, /tokenize failed: %s", exc)
            answer = None
        if answer is not None:
            return int(answer.get("count", len(answer["tokens"])))
        return _byte_bound(messages)

    async def _tokenize(self, fields: dict[str, Any]) -> dict[str, Any] | None:
        """The server's ``/tokenize`` answer, or None when it has no such endpoint."""
        if self._tokenize_ok is False:
            return None
        # 400/422 too: servers with a /tokenize of another shape (llama.cpp) reject vLLM's fields.
        answer = await self._call(
            "POST",
            TOKENIZE_PATH,
            {"model": self._served, **fields},
            missing=(400, 404, 405, 422, 501),
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("tokens"), list):
            if self._tokenize_ok is None:
                log.info(
                    "openai engine: %s has no /tokenize; token counts are upper bounds from "
                    "byte lengths, labels are scored by their first token",
                    self._where(),
                )
            self._tokenize_ok = False
            return None
        self._tokenize_ok = True
        return answer

    # ------------------------------------------------------------------ HTTP with retries

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        replica: _Replica | None = None,
        missing: tuple[int, ...] = (),
    ) -> Any:
        """The JSON answer to one request, retrying transient failures.

        ``replica`` pins the request to one server (the load-time checks); otherwise each
        attempt goes to the least-loaded replica, avoiding the last one that failed.
        A status in ``missing`` means the server lacks the endpoint: the answer is None. Raises
        :class:`EndpointError` on an unrecoverable answer and :class:`_Exhausted` when the
        retries run out.
        """
        self._stats["requests"] += 1
        attempt = 0
        avoid: set[int] = set()
        refused: set[int] = set()  # replicas that refused a connection since the last attempt
        while True:
            async with self._slots:
                rep = replica or self._pick(avoid)
                rep.in_flight += 1
                try:
                    outcome = await self._send(rep, method, path, body)
                finally:
                    rep.in_flight -= 1
            resp = outcome.response
            if resp is not None:
                status = resp.status_code
                if 200 <= status < 300:
                    try:
                        answer = resp.json()
                    except ValueError:
                        outcome.reason = (
                            f"{rep.shown}{path} answered {status} with a body that is not JSON"
                        )
                    else:
                        rep.answered += 1
                        return answer
                elif status in missing:
                    return None
                elif status in (408, 409, 425, 429) or status >= 500:
                    outcome.reason = (
                        f"{rep.shown}{path} answered {status}{_server_message(resp, self._redact)}"
                    )
                    outcome.retry_after = _retry_after(resp.headers.get("retry-after"))
                else:
                    raise self._unrecoverable(rep, path, resp)
            avoid = {rep.index}
            if outcome.refused:
                now = time.monotonic()
                rep.down_until = now + self.config.replica_cooldown_s
                rep.refused += 1
                refused.add(rep.index)
                others = [
                    r for r in self._replicas if r.index not in refused and r.down_until <= now
                ]
                if replica is None and others:
                    log.info(
                        "openai engine: %s; sending the request to another replica", outcome.reason
                    )
                    avoid = set(refused)
                    continue  # the request never reached a server: no retry spent
            refused.clear()
            attempt += 1
            reason = self._redact(outcome.reason)
            if attempt > self.config.max_retries:
                raise _Exhausted(f"{reason} (gave up after {attempt} attempts)")
            delay = self._delay(attempt, outcome.retry_after)
            self._stats["retries"] += 1
            log.info("openai engine: %s; retry %d in %.2fs", reason, attempt, delay)
            await asyncio.sleep(delay)

    async def _send(self, rep: _Replica, method: str, path: str, body: Any) -> _Attempt:
        try:
            return _Attempt(await self._client.request(method, rep.root + path, json=body))
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return _Attempt(
                reason=f"cannot connect to {rep.shown} ({_describe(exc)})", refused=True
            )
        except httpx.TimeoutException as exc:
            return _Attempt(
                reason=f"{rep.shown}{path} did not answer in time ({_describe(exc)}, "
                f"timeout_s={self.config.timeout_s:g})"
            )
        except httpx.TransportError as exc:  # dropped connection, broken protocol
            return _Attempt(reason=f"connection to {rep.shown} failed ({_describe(exc)})")

    def _pick(self, avoid: set[int]) -> _Replica:
        """Least-loaded replica that is up, round robin among equals; ``avoid`` if possible."""
        now = time.monotonic()
        pool = [r for r in self._replicas if r.index not in avoid] or self._replicas
        up = [r for r in pool if r.down_until <= now]
        if not up:  # every candidate refused lately: the one that rested longest goes first
            return min(pool, key=lambda r: r.down_until)
        self._turn += 1
        n = len(self._replicas)
        return min(up, key=lambda r: (r.in_flight, (r.index - self._turn) % n))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter; never shorter than the server's Retry-After."""
        cfg = self.config
        base = min(
            cfg.backoff_max_s, cfg.backoff_initial_s * cfg.backoff_multiplier ** (attempt - 1)
        )
        delay = base * (1.0 - cfg.jitter * self._rng.random())
        if retry_after is not None:
            wait = min(retry_after, cfg.max_retry_after_s)
            delay = max(delay, wait + cfg.jitter * self._rng.random() * cfg.backoff_initial_s)
        return delay

    def _unrecoverable(self, rep: _Replica, path: str, resp: httpx.Response) -> EndpointError:
        status = resp.status_code
        said = _server_message(resp, self._redact)
        if status in (401, 403):
            hint = (
                f"check the API key in ${self.config.api_key_env}"
                if self.config.api_key_env
                else "the server wants an API key: set api_key_env to the variable that holds it"
            )
        elif status == 404:
            hint = f"is model {self._served!r} served there, and base_url the server's root?"
        elif 300 <= status < 400:
            where = resp.headers.get("location", "elsewhere")
            hint = f"the server redirects to {where}: put that address in base_url"
        elif status in (400, 413, 422):
            hint = "the server rejected the request (a prompt longer than the model's context?)"
        else:
            hint = "the server refused the request"
        message = f"{rep.shown}{path} answered {status}{said}: {hint}"
        return EndpointError(self._redact(message), status=status)

    def _redact(self, text: str) -> str:
        key = self._key.reveal()
        return text.replace(key, "***") if key else text

    def _where(self) -> str:
        shown = [r.shown for r in self._replicas]
        return shown[0] if len(shown) == 1 else "[" + ", ".join(shown) + "]"

    # ------------------------------------------------------------------ helpers

    async def _all(self, coros: Sequence[Coroutine[Any, Any, _T]]) -> list[_T]:
        """Run coroutines concurrently; the first exception cancels the rest and is raised."""
        tasks = [asyncio.ensure_future(c) for c in coros]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            pending = [t for t in tasks if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        # Read every exception (asyncio warns about unread ones); raise the first in order.
        errors = [t.exception() for t in tasks if not t.cancelled()]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return [t.result() for t in tasks]

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("engine is closed")

    def _shutdown(self) -> None:
        self._closed = True
        try:
            client = getattr(self, "_client", None)  # absent when loading failed early
            if client is not None:
                self._loop.run(client.aclose())
        finally:
            self._loop.stop()


# --------------------------------------------------------------------------------- functions


def _read_key(config: OpenAIConfig) -> str | None:
    if config.api_key_env is None:
        return None
    key = os.environ.get(config.api_key_env, "").strip()
    if not key:
        raise EndpointError(
            f"the environment variable {config.api_key_env} (api_key_env) is not set; it "
            "should hold the API key of the openai server"
        )
    return key


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _server_message(resp: httpx.Response, redact: Any) -> str:
    """``": <message>"`` from an error body (OpenAI, vLLM or plain text), or ``""``."""
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    message: Any = body
    if isinstance(body, dict):
        err = body.get("error")
        message = (
            err.get("message")
            if isinstance(err, dict)
            else err or body.get("message") or body.get("detail")
        )
    text = " ".join(str(message or "").split())[:_SERVER_MESSAGE_CHARS]
    return f": {redact(text)}" if text else ""


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _label_logprobs(entries: list[dict[str, Any]], labels: Sequence[str]) -> list[float] | None:
    """Each label's first-token log-prob from the top candidates, None if no label is there.

    A candidate token belongs to the label it spells exactly, else to every label it begins
    (leading whitespace ignored unless the label has some); a label takes its best candidate.
    Labels no candidate reaches get the floor: ``FLOOR_MARGIN`` below the least likely
    candidate, or the log of the probability left outside the candidates if that is lower.
    """
    best = [-math.inf] * len(labels)
    seen: list[float] = []
    for entry in entries:
        token, lp = entry.get("token"), entry.get("logprob")
        if not isinstance(token, str) or not isinstance(lp, (int, float)) or math.isnan(lp):
            continue
        lp = max(float(lp), -1e4)  # some servers write -9999 or -inf for "impossible"
        seen.append(lp)
        variants = {token, token.lstrip()} - {""}
        exact = [j for j, lab in enumerate(labels) if lab in variants]
        owners = exact or [
            j
            for j, lab in enumerate(labels)
            if (v := token if lab[:1].isspace() else token.lstrip()) and lab.startswith(v)
        ]
        for j in owners:
            best[j] = max(best[j], lp)
    if all(b == -math.inf for b in best):
        return None
    floor = min(seen) - FLOOR_MARGIN
    rest = 1.0 - sum(math.exp(lp) for lp in seen)
    if rest > 0:
        floor = min(floor, math.log(rest))
    return [b if b > -math.inf else floor for b in best]


def _sequence_logprob(choice: dict[str, Any], start: int, ids: list[int]) -> float | None:
    """Sum of the log-probs of tokens ``ids`` at prompt positions ``start...``, or None.

    Reads vLLM's ``prompt_logprobs`` (one ``{token_id: {"logprob": ...}}`` per prompt
    position) or, failing that, the legacy ``logprobs.token_logprobs`` that ``echo`` fills.
    """
    positions = range(start, start + len(ids))
    rows = choice.get("prompt_logprobs")
    if isinstance(rows, list) and len(rows) >= start + len(ids):
        total = 0.0
        for pos, tok in zip(positions, ids, strict=True):
            row = rows[pos] or {}
            item = row.get(str(tok), row.get(tok)) if isinstance(row, dict) else None
            value = item.get("logprob") if isinstance(item, dict) else item
            if not isinstance(value, (int, float)):
                return None
            total += float(value)
        return total
    legacy = (choice.get("logprobs") or {}).get("token_logprobs")
    if isinstance(legacy, list) and len(legacy) >= start + len(ids):
        values = [legacy[pos] for pos in positions]
        if all(isinstance(v, (int, float)) for v in values):
            return float(sum(values))
    return None


def _softmax(logprobs: list[float]) -> list[float]:
    top = max(logprobs)
    exps = [math.exp(lp - top) for lp in logprobs]
    total = sum(exps)
    return [e / total for e in exps]


def _byte_bound(messages: list[dict[str, str]]) -> int:
    return (
        sum(
            len(str(m.get("content", "")).encode("utf-8")) + BYTE_BOUND_PER_MESSAGE
            for m in messages
        )
        + BYTE_BOUND_PER_MESSAGE
    )


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


def _error_completion(request_id: str, message: str, prompt_tokens: int = 0) -> Completion:
    return Completion(request_id, "", prompt_tokens, 0, "error", error=message)


def _error_scores(request_id: str, message: str, prompt_tokens: int = 0) -> LabelScores:
    return LabelScores(request_id, (), "", prompt_tokens, error=message)


def _label_scores(req: ScoreRequest, probs: list[float], prompt_tokens: int) -> LabelScores:
    best = max(range(len(probs)), key=probs.__getitem__)
    return LabelScores(req.id, tuple(probs), req.labels[best], prompt_tokens)
