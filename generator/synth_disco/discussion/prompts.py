"""Prompt building: natural text, rendered from sandboxed Jinja templates.

The layout keeps the stable part first (forum rules in the system message, then the OP, then
the transcript) and the speaker-specific part last, so prefix caches can reuse earlier turns.
The OP and any seed comments are always shown; then the last ``context_window`` comments.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

NO_INTERVENTION = "NO INTERVENTION"


@lru_cache(maxsize=8)
def builtin_template(name: str) -> str:
    return resources.files("synth_disco.templates").joinpath(name).read_text(encoding="utf-8")


@lru_cache(maxsize=64)
def _compile(source: str):
    env = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=False)
    return env.from_string(source)


def render(source: str, **context: Any) -> str:
    """Render a template in a sandbox; undefined variables are errors, not empty strings."""
    return _compile(source).render(**context).strip()


@dataclass(frozen=True)
class Speaker:
    name: str
    role: str  # "user" | "moderator"
    persona: str
    instructions: str


@dataclass(frozen=True)
class Shown:
    """A comment as the speaker sees it."""

    author: str
    role: str
    text: str


def build_messages(
    *,
    system_template: str,
    turn_template: str,
    context: str,
    title: str,
    op: Shown,
    seed_comments: list[Shown],
    visible: list[Shown],
    omitted: int,
    speaker: Speaker,
    parent: Shown | None,
    on_demand: bool = False,
) -> list[dict[str, str]]:
    system = render(system_template, context=context)
    user = render(
        turn_template,
        title=title,
        op=op,
        seed_comments=seed_comments,
        comments=visible,
        omitted=omitted,
        speaker=speaker,
        parent=parent,
        on_demand=on_demand,
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
