"""HTTP to the replicas of one model: least-loaded choice, retries with backoff, a hidden key.

:class:`ServerPool` sends one request at a time per call of :meth:`ServerPool.call`, at most
``max_in_flight`` open over all replicas. Failures are sorted into two kinds. Transient ones
(408, 409, 425, 429, 5xx, timeouts, refused or dropped connections) are retried with
exponential backoff and jitter, honouring ``Retry-After``; a refused connection moves to
another replica at once, without spending a retry (the request never reached a server). A
request that still fails after ``max_retries`` raises
:class:`~synth_disco.engines.openai.errors.Exhausted`, which the engine turns into a failed
result. Any other answer (401/403, 404, 400, 413, 422, a redirect) raises
:class:`~synth_disco.engines.openai.errors.EndpointError` at once, naming the server, the
status and the likely fix.

The API key is sent only in the ``Authorization`` header and masked (``***``) out of every
message this module writes, even where a server echoes it back. Redirects are not followed: a
redirected POST would lose its body, so the message names the new address instead.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any

try:  # huggingface_hub >= 1 installs httpx's successor under this name
    import httpx2 as httpx
except ImportError:  # pragma: no cover - environments with the original httpx
    import httpx  # type: ignore[no-redef]

from synth_disco.engines.openai.config import OpenAIConfig, shown
from synth_disco.engines.openai.errors import EndpointError, Exhausted

log = logging.getLogger(__name__)

# Statuses worth another attempt: rate limits, conflicts, "too early", server errors.
TRANSIENT = frozenset({408, 409, 425, 429})
_SERVER_MESSAGE_CHARS = 300


class Secret:
    """Holds the API key; its repr never shows it."""

    def __init__(self, value: str | None) -> None:
        self._value = value

    def reveal(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "<hidden>" if self._value else "<none>"


def read_key(config: OpenAIConfig) -> Secret:
    """The key in the environment variable ``config.api_key_env`` (none without one)."""
    if config.api_key_env is None:
        return Secret(None)
    key = os.environ.get(config.api_key_env, "").strip()
    if not key:
        raise EndpointError(
            f"the environment variable {config.api_key_env} (api_key_env) is not set; it "
            "should hold the API key of the openai server"
        )
    return Secret(key)


@dataclass
class Replica:
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


class ServerPool:
    """The replicas of ``config`` and the HTTP client that reaches them.

    Create it on the event loop that will use it (its client and semaphore belong to that
    loop); :meth:`aclose` closes the client.
    """

    def __init__(self, config: OpenAIConfig, key: Secret) -> None:
        self.config = config
        self._key = key
        self.replicas = [Replica(i, root, shown(root)) for i, root in enumerate(config.urls())]
        self._rng = random.Random(config.retry_seed)  # backoff jitter only; no global RNG
        self._turn = 0  # round-robin position among equally loaded replicas
        self.counts = {"requests": 0, "retries": 0, "failed": 0}
        headers = {"Accept": "application/json"}
        if key.reveal():
            headers["Authorization"] = f"Bearer {key.reveal()}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s, pool=None),
            limits=httpx.Limits(
                max_connections=config.max_in_flight,
                max_keepalive_connections=config.max_in_flight,
            ),
            follow_redirects=False,  # a redirected POST would lose its body; say so instead
        )
        self._slots = asyncio.Semaphore(config.max_in_flight)

    async def aclose(self) -> None:
        await self._client.aclose()

    def where(self) -> str:
        """The servers, as messages name them."""
        names = [r.shown for r in self.replicas]
        return names[0] if len(names) == 1 else "[" + ", ".join(names) + "]"

    def redact(self, text: str) -> str:
        """``text`` with the API key masked."""
        key = self._key.reveal()
        return text.replace(key, "***") if key else text

    async def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        replica: Replica | None = None,
        missing: tuple[int, ...] = (),
    ) -> Any:
        """The JSON answer to one request, retrying transient failures.

        ``replica`` pins the request to one server (the load-time checks); otherwise each
        attempt goes to the least-loaded replica, avoiding the last one that failed. A status
        in ``missing`` means the server lacks the endpoint: the answer is None. Raises
        :class:`EndpointError` on an unrecoverable answer and :class:`Exhausted` when the
        retries run out.
        """
        self.counts["requests"] += 1
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
                elif status in TRANSIENT or status >= 500:
                    said = server_message(resp, self.redact)
                    outcome.reason = f"{rep.shown}{path} answered {status}{said}"
                    outcome.retry_after = retry_after(resp.headers.get("retry-after"))
                else:
                    raise self._unrecoverable(rep, path, body, resp)
            avoid = {rep.index}
            if outcome.refused:
                now = time.monotonic()
                rep.down_until = now + self.config.replica_cooldown_s
                rep.refused += 1
                refused.add(rep.index)
                others = [
                    r for r in self.replicas if r.index not in refused and r.down_until <= now
                ]
                if replica is None and others:
                    log.info(
                        "openai engine: %s; sending the request to another replica", outcome.reason
                    )
                    avoid = set(refused)
                    continue  # the request never reached a server: no retry spent
            refused.clear()
            attempt += 1
            reason = self.redact(outcome.reason)
            if attempt > self.config.max_retries:
                raise Exhausted(f"{reason} (gave up after {attempt} attempts)")
            wait = self.delay(attempt, outcome.retry_after)
            self.counts["retries"] += 1
            log.info("openai engine: %s; retry %d in %.2fs", reason, attempt, wait)
            await asyncio.sleep(wait)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter; never shorter than the server's Retry-After."""
        cfg = self.config
        base = min(
            cfg.backoff_max_s, cfg.backoff_initial_s * cfg.backoff_multiplier ** (attempt - 1)
        )
        wait = base * (1.0 - cfg.jitter * self._rng.random())
        if retry_after is not None:
            asked = min(retry_after, cfg.max_retry_after_s)
            wait = max(wait, asked + cfg.jitter * self._rng.random() * cfg.backoff_initial_s)
        return wait

    async def _send(self, rep: Replica, method: str, path: str, body: Any) -> _Attempt:
        try:
            return _Attempt(await self._client.request(method, rep.root + path, json=body))
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return _Attempt(reason=f"cannot connect to {rep.shown} ({describe(exc)})", refused=True)
        except httpx.TimeoutException as exc:
            return _Attempt(
                reason=f"{rep.shown}{path} did not answer in time ({describe(exc)}, "
                f"timeout_s={self.config.timeout_s:g})"
            )
        except httpx.TransportError as exc:  # dropped connection, broken protocol
            return _Attempt(reason=f"connection to {rep.shown} failed ({describe(exc)})")

    def _pick(self, avoid: set[int]) -> Replica:
        """Least-loaded replica that is up, round robin among equals; ``avoid`` if possible."""
        now = time.monotonic()
        pool = [r for r in self.replicas if r.index not in avoid] or self.replicas
        up = [r for r in pool if r.down_until <= now]
        if not up:  # every candidate refused lately: the one that rested longest goes first
            return min(pool, key=lambda r: r.down_until)
        self._turn += 1
        n = len(self.replicas)
        return min(up, key=lambda r: (r.in_flight, (r.index - self._turn) % n))

    def _unrecoverable(
        self, rep: Replica, path: str, body: dict[str, Any] | None, resp: httpx.Response
    ) -> EndpointError:
        status = resp.status_code
        said = server_message(resp, self.redact)
        if status in (401, 403):
            hint = (
                f"check the API key in ${self.config.api_key_env}"
                if self.config.api_key_env
                else "the server wants an API key: set api_key_env to the variable that holds it"
            )
        elif status == 404:
            model = (body or {}).get("model", self.config.model)
            hint = f"is model {model!r} served there, and base_url the server's root?"
        elif 300 <= status < 400:
            where = resp.headers.get("location", "elsewhere")
            hint = f"the server redirects to {where}: put that address in base_url"
        elif status in (400, 413, 422):
            hint = "the server rejected the request (a prompt longer than the model's context?)"
        else:
            hint = "the server refused the request"
        message = f"{rep.shown}{path} answered {status}{said}: {hint}"
        return EndpointError(self.redact(message), status=status)


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def server_message(resp: httpx.Response, redact: Any) -> str:
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


def retry_after(value: str | None) -> float | None:
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
