"""Settings of the ``openai`` engine, and the checks a recipe's ``base_url`` / ``api_key_env`` pass.

The recipe names a handful of these (the keys the registry lists for ``openai``); the rest are
for the Python API and tests. The API key itself is never a setting: ``api_key_env`` names the
environment variable that holds it, read when the engine loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from synth_disco.engines.base import EngineConfig
from synth_disco.errors import SynthDiscoError

_URL = re.compile(r"^https?://[^/\s]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class OpenAIConfigError(SynthDiscoError):
    """An ``openai`` engine setting is invalid."""

    exit_code = 2


def url_problem(url: object) -> str | None:
    """Why ``url`` cannot be a server root, or None. Credentials in a URL are refused: the
    URL is copied into the run directory and the dataset card, a key must stay out of both."""
    if not isinstance(url, str) or not _URL.match(url.strip()):
        return f"{url!r} is not an http(s) URL (like http://host:8000)"
    if re.match(r"^https?://[^/]*@", url.strip()):
        return (
            "a URL with credentials (user:password@) would be copied into the run and the "
            "dataset; put the key in an environment variable named by api_key_env"
        )
    return None


def env_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name an environment variable, or None. A value that looks like a
    key is refused with a hint: the recipe must name the variable, never hold the key."""
    if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
        # The value is not repeated: it may be the key itself, pasted in by mistake.
        return (
            "this is not an environment variable name (name the variable that holds the "
            "key, like OPENAI_API_KEY, never the key itself)"
        )
    return None


@dataclass(frozen=True)
class OpenAIConfig:
    """Settings of the ``openai`` engine.

    ``base_url`` is a server root (``http://host:8000``; a trailing ``/v1`` is accepted and
    dropped) or a list of replicas serving the same model. ``api_key_env`` names the
    environment variable that holds the key; the key itself is never part of the config.
    """

    base_url: str | list[str] | tuple[str, ...]
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
            if (why := url_problem(url)) is not None:
                problems.append(f"base_url: {why}")
        if not isinstance(self.model, str) or not self.model.strip():
            problems.append("model: name the model the server serves")
        if self.api_key_env is not None and (why := env_name_problem(self.api_key_env)):
            problems.append(f"api_key_env: {why}")
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

    @classmethod
    def from_engine_config(cls, config: EngineConfig) -> OpenAIConfig:
        """The settings in a registry :class:`EngineConfig`: ``None`` keeps the default here."""
        if not config.base_url:
            raise OpenAIConfigError("openai engine: base_url: give the server's URL")
        mine = {f.name for f in fields(cls)}
        given: dict[str, Any] = {
            f.name: getattr(config, f.name)
            for f in fields(config)
            if f.name in mine and getattr(config, f.name) is not None
        }
        given["base_url"] = list(config.base_url)
        return cls(**given)

    def urls(self) -> list[str]:
        """The server roots, without trailing ``/`` or ``/v1``."""
        raw = [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)
        return [server_root(u) for u in raw if isinstance(u, str) and u.strip()]


def server_root(url: str) -> str:
    """``url`` without a trailing ``/`` or ``/v1``."""
    root = url.strip().rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def shown(url: str) -> str:
    """The URL as messages show it: no user:password part."""
    return re.sub(r"^(https?://)[^@/]*@", r"\1", url)
