"""The ``openai`` engine: chat completions and label scores from an OpenAI-compatible server.

The server batches, so the engine keeps many requests in flight: ``generate`` and ``score``
send every request of a call at once (at most ``max_in_flight`` open at a time, spread over
the replicas by :mod:`~synth_disco.engines.openai.transport`) and return results in request
order. The caller sees plain synchronous methods; the requests run on a private event loop
(:mod:`~synth_disco.engines.openai.loop`).

Loading lists ``/v1/models`` on every replica: the model must be served (by its id, or by its
``root`` when the server serves it under an alias), and the id the server reports becomes the
engine's ``model_id``, which records carry. Each completion also carries the ``model`` the
server named in its answer (a hosted API names the dated snapshot that answered).

Reproducibility: each request sends its own ``seed``. Whether the same seed gives the same
text again is up to the server: vLLM honours per-request seeds, but its batching can still
change the numerics (which requests share a batch, prefix-cache hits), so sampled text is
reproducible only on a server that honours ``seed`` and batches deterministically. Greedy
decoding (``temperature: 0``) is reproducible on vLLM with the same model, version and
hardware; hosted APIs promise at most "best effort". :data:`REPRODUCIBILITY` (the registry's
sentence) says this on the dataset card.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from synth_disco.engines.base import (
    Capabilities,
    ChatRequest,
    Completion,
    EngineConfig,
    FinishReason,
    LabelScores,
    ScoreRequest,
)
from synth_disco.engines.common import error_completion
from synth_disco.engines.openai.config import OpenAIConfig
from synth_disco.engines.openai.errors import ContextUnknownError, EndpointError, Exhausted
from synth_disco.engines.openai.loop import LoopThread, gather_or_raise
from synth_disco.engines.openai.scoring import CHAT_PATH, MALFORMED, LabelScorer
from synth_disco.engines.openai.tokens import ServerTokenizer
from synth_disco.engines.openai.transport import Replica, Secret, ServerPool, read_key
from synth_disco.engines.registry import ENGINES
from synth_disco.engines.sampling import check_params

log = logging.getLogger(__name__)

# What the dataset card says about this engine's reproducibility (the registry holds it).
REPRODUCIBILITY = ENGINES["openai"].reproducibility

MODELS_PATH = "/v1/models"


def load(config: EngineConfig) -> OpenAIEngine:
    """The registry's entry point for ``engine: openai``: connect to the server(s), read the
    key, check the model is served."""
    return OpenAIEngine(OpenAIConfig.from_engine_config(config))


class OpenAIEngine:
    """The :class:`~synth_disco.engines.base.Engine` for OpenAI-compatible servers.

    ``model_id`` is the model id the server reported; ``revision`` is always ``None`` (a
    server does not say which checkpoint revision it runs).
    """

    revision: str | None = None
    capabilities = Capabilities()  # seeds are sent, but only the server can honour them

    def __init__(self, config: OpenAIConfig) -> None:
        self.config = config
        key = read_key(config)
        self._closed = False
        self._owned_by: str | None = None
        self._root: str | None = None
        self._max_model_len: int | None = None
        self.model_id = config.model
        self._served = config.model  # the id sent in requests
        self._loop = LoopThread(f"openai-engine-{id(self):x}")
        self._pool: ServerPool | None = None
        try:
            self._pool = self._loop.run(_make_pool(config, key))
            self._tokenizer = ServerTokenizer(self._pool, lambda: self._served)
            self._scorer = LabelScorer(
                self._pool, self._tokenizer, lambda: self._served, config.top_logprobs
            )
            self._loop.run(self._open())
        except BaseException:
            self._shutdown()
            raise

    def __repr__(self) -> str:
        return (
            f"OpenAIEngine(model={self.model_id!r}, replicas={len(self.config.urls())}, "
            f"max_in_flight={self.config.max_in_flight})"
        )

    @property
    def pool(self) -> ServerPool:
        """The replicas and the HTTP client (for statistics and tests)."""
        assert self._pool is not None
        return self._pool

    # ------------------------------------------------------------------ the Engine methods

    @property
    def max_context(self) -> int:
        """Longest prompt + reply, from the ``max_model_len`` the server lists (vLLM does).

        Raises :class:`ContextUnknownError` when the server does not say; the annotation
        stage then leaves prompt length to the server.
        """
        if self._max_model_len is None:
            raise ContextUnknownError(
                f"{self.pool.where()} does not report the context length of {self.model_id!r}",
                exit_code=1,
            )
        return self._max_model_len

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        """One completion per request, in request order; all requests are sent at once.

        A request that fails transiently after every retry gets an error completion; an
        answer no retry can fix raises :class:`EndpointError`.
        """
        self._check_open()
        if not requests:
            return []
        return self._loop.run(gather_or_raise([self._generate_one(r) for r in requests]))

    def score(self, requests: list[ScoreRequest]) -> list[LabelScores]:
        """Probability of each label as the reply, from the server's log-probabilities (see
        :mod:`~synth_disco.engines.openai.scoring`)."""
        self._check_open()
        if not requests:
            return []
        return self._loop.run(gather_or_raise([self._scorer.score_one(r) for r in requests]))

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens of ``messages`` as the server templates them (its ``/tokenize``), or
        an upper bound from their bytes where the server has no ``/tokenize``."""
        self._check_open()
        return self._loop.run(self._tokenizer.count(messages))

    def engine_info(self) -> dict[str, Any]:
        """What to record about the engine: the model as the server reported it (no URLs, no key)."""
        return {
            "engine": "openai",
            "name": self.model_id,
            "revision": None,
            "root": self._root,
            "owned_by": self._owned_by,
            "max_model_len": self._max_model_len,
            "replicas": len(self.config.urls()),
            "reproducibility": REPRODUCIBILITY,
        }

    def stats(self) -> dict[str, Any]:
        """Requests sent, retries made, requests that failed; answers and refusals per replica."""
        return {
            **self.pool.counts,
            "answered": [r.answered for r in self.pool.replicas],
            "refused": [r.refused for r in self.pool.replicas],
        }

    def close(self) -> None:
        """Close the HTTP client and stop the engine's thread; the engine cannot be used after."""
        if not self._closed:
            self._shutdown()

    # ------------------------------------------------------------------ loading

    async def _open(self) -> None:
        pool = self.pool
        listings = await asyncio.gather(
            *(self._list_models(r) for r in pool.replicas), return_exceptions=True
        )
        for err in listings:  # an unrecoverable answer from any replica stops the load
            if isinstance(err, BaseException) and not isinstance(err, Exhausted):
                raise err
        reached = [
            (r, m) for r, m in zip(pool.replicas, listings, strict=True) if isinstance(m, list)
        ]
        if not reached:
            reasons = "; ".join(str(e) for e in listings)
            raise EndpointError(
                f"cannot reach the openai server at {pool.where()}: {reasons}. "
                "Is the server running and base_url right?",
                exit_code=1,
            )
        for rep, err in zip(pool.replicas, listings, strict=True):
            if isinstance(err, Exhausted):
                rep.down_until = time.monotonic() + self.config.replica_cooldown_s
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
            owner = entry.get("owned_by")
            self._owned_by = owner if isinstance(owner, str) else None
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
            len(pool.replicas),
            self._max_model_len if self._max_model_len is not None else "not reported",
        )

    async def _list_models(self, rep: Replica) -> list[dict[str, Any]]:
        answer = await self.pool.call("GET", MODELS_PATH, None, replica=rep)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list):
            raise EndpointError(
                f"{rep.shown}{MODELS_PATH} did not list models (is base_url an "
                "OpenAI-compatible server?)"
            )
        return [m for m in data if isinstance(m, dict) and "id" in m]

    def _find_model(self, rep: Replica, models: list[dict[str, Any]]) -> dict[str, Any]:
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
        problem = check_params(req.params)
        if problem is not None:
            return error_completion(req.id, 0, problem)
        try:
            answer = await self.pool.call("POST", CHAT_PATH, self._chat_body(req))
        except Exhausted as exc:
            self.pool.counts["failed"] += 1
            return error_completion(req.id, 0, str(exc))
        try:
            return self._completion(req, answer)
        except MALFORMED as exc:
            self.pool.counts["failed"] += 1
            return error_completion(req.id, 0, f"malformed answer from the server ({exc!r})")

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
        reported = answer.get("model")
        model = reported if isinstance(reported, str) and reported else self.model_id
        reason = choice.get("finish_reason")
        finish: FinishReason
        if reason == "length":
            finish = "length"
        elif reason == "stop":
            # vLLM names the stop string that matched; a token id or nothing means end of sequence.
            stop_reason = choice.get("stop_reason")
            finish = "stop" if isinstance(stop_reason, str) and stop_reason else "eos"
        else:
            self.pool.counts["failed"] += 1
            return error_completion(
                req.id, prompt_tokens, f"the server ended the reply with finish_reason {reason!r}"
            )
        # A server that leaves the stop string in the text: cut it as the other engines do.
        hits = [text.find(s) for s in req.params.stop if s and s in text]
        if hits:
            text, finish = text[: min(hits)], "stop"
        return Completion(req.id, text, prompt_tokens, completion_tokens, finish, model=model)

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("engine is closed")

    def _shutdown(self) -> None:
        self._closed = True
        try:
            if self._pool is not None:  # absent when loading failed early
                self._loop.run(self._pool.aclose())
        finally:
            self._loop.stop()


async def _make_pool(config: OpenAIConfig, key: Secret) -> ServerPool:
    """The pool, created on the engine's loop (its client and semaphore belong to it)."""
    return ServerPool(config, key)
