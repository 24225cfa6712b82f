"""A loopback OpenAI-compatible server (vLLM's dialect) for the ``openai`` engine's tests.

Standard library only. Replies are derived from the request, so tests can predict them:

- chat text is the words ``seed<seed>``, the last message's words and ``end``; ``max_tokens``
  counts words (cut with finish_reason "length"), stop strings cut the text and are named in
  vLLM's ``stop_reason``; usage counts words;
- a chat request with ``logprobs`` answers one token with top log-probs over ``TOP_TOKENS``,
  the favourite (probability 0.6) named by a trailing ``[X]`` in the last message, else "2";
- ``/tokenize`` and ``/v1/completions`` (prompt log-probs) use one token per character
  (id = ``ord(c)``) and the chat template ``<|role|>content ... <|assistant|>``. A prompt token
  has log-prob ``char_logprob(c)``, except the characters of ``favour`` ending a prompt, which
  get ``FAVOURED_LOGPROB`` each.

Faults are queued per path with ``fail_next(path, Fault(...), ...)`` (429 with Retry-After, 500,
a dropped connection, a slow reply...) or set for every request with ``always``. Every request is
recorded in ``hits`` with its arrival time (``time.monotonic``); ``max_in_flight`` is the most
requests the server held at once.
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MODELS = "/v1/models"
TOKENIZE = "/tokenize"

TOP_TOKENS = ("2", "1", "3", "Hello")
TOP_PROBS = (0.6, 0.2, 0.1, 0.05)  # the rest (0.05) is left to tokens not listed
FAVOURED_LOGPROB = -0.05


def char_logprob(c: str) -> float:
    """Log-prob of an ordinary prompt character in the fake model."""
    return -1.0 - 0.1 * (ord(c) % 5)


@dataclass(frozen=True)
class Fault:
    """One injected failure: an error status (with headers; ``echo_auth`` puts the request's
    Authorization header in the body, as careless servers do), a dropped connection, or a
    delay before the normal answer."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    message: str = "injected fault"
    echo_auth: bool = False
    drop: bool = False
    sleep: float = 0.0


@dataclass(frozen=True)
class Hit:
    """One request as the server received it."""

    t: float
    method: str
    path: str
    body: Any
    auth: str | None


def dead_url() -> str:
    """A loopback URL where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class OpenAIServer:
    """The server; a context manager. Attributes may be changed between requests."""

    def __init__(
        self,
        model: str = "test-model",
        *,
        max_model_len: int | None = 4096,
        api_key: str | None = None,
        delay_s: float = 0.0,
        logprobs: bool = True,
        tokenize: bool = True,
        prompt_logprobs: bool = True,
        favour: str = "",
    ) -> None:
        self.model = model
        self.max_model_len = max_model_len
        self.api_key = api_key
        self.delay_s = delay_s
        self.logprobs = logprobs
        self.tokenize = tokenize
        self.prompt_logprobs = prompt_logprobs
        self.favour = favour
        self.always: Fault | None = None
        self.hits: list[Hit] = []
        self.errors: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._faults: dict[str, deque[Fault]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._httpd = _Listener(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> OpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def fail_next(self, path: str, *faults: Fault) -> None:
        """The next requests to ``path`` meet these faults, one each, in order."""
        with self._lock:
            self._faults[path].extend(faults)

    def hits_to(self, path: str) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if h.path == path]

    # ------------------------------------------------------------------ called by the handler

    def _record(self, hit: Hit) -> Fault | None:
        with self._lock:
            self.hits.append(hit)
            queue = self._faults.get(hit.path)
            return queue.popleft() if queue else self.always

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def models(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": self.model,
            "object": "model",
            "owned_by": "vllm",
            "root": "org/" + self.model,
        }
        if self.max_model_len is not None:
            entry["max_model_len"] = self.max_model_len
        return {"object": "list", "data": [entry]}

    def chat(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("model") != self.model:
            return 404, _error(f"The model `{body.get('model')}` does not exist.", 404)
        messages = body["messages"]
        prompt_words = sum(len(m["content"].split()) for m in messages)
        max_tokens = int(body.get("max_tokens", 16))
        if self.max_model_len is not None and prompt_words + max_tokens > self.max_model_len:
            return 400, _error(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {prompt_words + max_tokens} tokens.",
                400,
            )
        last = messages[-1]["content"]
        if body.get("logprobs"):
            return 200, self._scored(body, last, prompt_words)
        words = [f"seed{body.get('seed')}", *last.split(), "end"]
        full, cut = " ".join(words), " ".join(words[:max_tokens])
        hits = [(full.find(s), s) for s in body.get("stop") or [] if s and s in full]
        hits = [(i, s) for i, s in hits if i < len(cut)]
        if hits:
            i, s = min(hits)
            text, finish, stop_reason = full[:i], "stop", s
        elif len(words) > max_tokens:
            text, finish, stop_reason = cut, "length", None
        else:
            text, finish, stop_reason = full, "stop", None
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": stop_reason,
        }
        return 200, _answer(self.model, choice, prompt_words, len(text.split()))

    def _scored(self, body: dict[str, Any], last: str, prompt_words: int) -> dict[str, Any]:
        m = re.search(r"\[(\w+)\]$", last.strip())
        fav = m.group(1) if m else TOP_TOKENS[0]
        tokens = [fav, *[t for t in TOP_TOKENS if t != fav]][: len(TOP_PROBS)]
        top = [
            {"token": t, "logprob": math.log(p), "bytes": list(t.encode())}
            for t, p in zip(tokens, TOP_PROBS, strict=True)
        ][: int(body.get("top_logprobs") or 1)]
        logprobs = {"content": [{**top[0], "top_logprobs": top}]} if self.logprobs else None
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": fav},
            "logprobs": logprobs,
            "finish_reason": "length",
            "stop_reason": None,
        }
        return _answer(self.model, choice, prompt_words, 1)

    def tokens(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not self.tokenize:
            return 404, {"detail": "Not Found"}
        if "messages" in body:
            text = template(body["messages"], body.get("add_generation_prompt", True))
        else:
            text = body["prompt"]
        ids = [ord(c) for c in text]
        return 200, {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids}

    def completions(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not self.prompt_logprobs:
            return 404, {"detail": "Not Found"}
        prompts = body["prompt"]
        if prompts and isinstance(prompts[0], int):
            prompts = [prompts]
        choices = []
        for i, ids in enumerate(prompts):
            text = "".join(chr(t) for t in ids)
            tail = (
                len(text) - len(self.favour) if self.favour and text.endswith(self.favour) else None
            )
            rows: list[Any] = [None]
            for pos in range(1, len(ids)):
                lp = (
                    FAVOURED_LOGPROB
                    if tail is not None and pos >= tail
                    else char_logprob(text[pos])
                )
                rows.append({str(ids[pos]): {"logprob": lp, "rank": 1, "decoded_token": text[pos]}})
            choices.append(
                {
                    "index": i,
                    "text": text + "x",
                    "logprobs": None,
                    "finish_reason": "length",
                    "stop_reason": None,
                    "prompt_logprobs": rows,
                }
            )
        total = sum(len(p) for p in prompts)
        return 200, {
            "id": "cmpl-test",
            "object": "text_completion",
            "model": self.model,
            "choices": choices,
            "usage": {"prompt_tokens": total, "completion_tokens": len(prompts)},
        }


class _Listener(ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops bursts of connections (SYN retried after 1 s)
    daemon_threads = True


def template(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The fake chat template."""
    text = "".join(f"<|{m['role']}|>{m['content']}" for m in messages)
    return text + ("<|assistant|>" if add_generation_prompt else "")


def _error(message: str, code: int) -> dict[str, Any]:
    return {"object": "error", "message": message, "type": "BadRequestError", "code": code}


def _answer(
    model: str, choice: dict[str, Any], prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _handler_for(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def _handle(self, method: str) -> None:
            server._enter()
            try:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                auth = self.headers.get("Authorization")
                fault = server._record(Hit(time.monotonic(), method, self.path, body, auth))
                if server.delay_s:
                    time.sleep(server.delay_s)
                if server.api_key is not None and auth != f"Bearer {server.api_key}":
                    given = (auth or "").removeprefix("Bearer ")
                    msg = f"Incorrect API key provided: {given}"
                    return self._json(
                        401, {"error": {"message": msg, "type": "invalid_request_error"}}
                    )
                if fault is not None:
                    if fault.drop:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    time.sleep(fault.sleep)
                    if fault.status is not None:
                        msg = fault.message + (f" (auth: {auth})" if fault.echo_auth else "")
                        return self._json(fault.status, _error(msg, fault.status), fault.headers)
                status, answer = self._route(method, body)
                self._json(status, answer)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)
            except Exception as exc:  # a bug in the stub: make the test fail loudly
                server.errors.append(f"{type(exc).__name__}: {exc}")
                self._json(599, {"detail": "stub crashed"})
            finally:
                server._leave()

        def _route(self, method: str, body: Any) -> tuple[int, Any]:
            if method == "GET" and self.path == MODELS:
                return 200, server.models()
            if method == "POST" and self.path == CHAT:
                return server.chat(body)
            if method == "POST" and self.path == TOKENIZE:
                return server.tokens(body)
            if method == "POST" and self.path == COMPLETIONS:
                return server.completions(body)
            return 404, {"detail": "Not Found"}

        def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    return Handler
