"""Prompt building: natural text, rendered from sandboxed Jinja templates.

Every discussion prompt is a template: the built-in ones are files in ``templates/`` next to
this module, and a recipe may replace any of them under ``discussion.templates``:

- ``system``: the system message of every participant turn;
- ``moderator_system``: the system message of the moderator's turns (by default the ``system``
  in use, so a recipe that rewrites the forum rules rewrites them for everyone);
- ``turn``: the user message of every turn, the moderator's included (it has the speaker's
  role, and ``on_demand`` when the moderator may decline with ``no_intervention``).

``templates_for`` says which text each of them is for a discussion config, and is what the
discussion renders from; ``templates_used.templates_used`` gives them for a whole recipe.

The layout keeps the stable part first (forum rules in the system message, then the OP, then
the transcript) and the speaker-specific part last, so prefix caches can reuse earlier turns.
The OP and any seed comments are always shown; then the last ``context_window`` comments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from jinja2 import Template

from synth_disco.recipe.schema import DiscussionConfig
from synth_disco.recipe.templates import template_environment

# What an on_demand moderator answers when the discussion needs no intervention.
NO_INTERVENTION = "NO INTERVENTION"


@lru_cache(maxsize=8)
def builtin_template(name: str) -> str:
    """The text of a built-in template file (``system.j2``, ``turn.j2``)."""
    path = resources.files("synth_disco.discussion") / "templates" / name
    return path.read_text(encoding="utf-8")


def templates_for(cfg: DiscussionConfig) -> dict[str, str]:
    """Template name -> the exact source a discussion with ``cfg`` renders it from
    (``moderator_system`` only when the discussion has a moderator)."""
    custom = cfg.templates
    system = recipe_text(custom.system) or builtin_template("system.j2")
    out = {"system": system, "turn": recipe_text(custom.turn) or builtin_template("turn.j2")}
    if cfg.moderator is not None:
        out["moderator_system"] = recipe_text(custom.moderator_system) or system
    return out


def recipe_text(source: object) -> str | None:
    """A recipe text field's text, or None when it is unset or empty (the loader has replaced
    ``{file: ...}`` references by their text)."""
    return source if isinstance(source, str) and source else None


@lru_cache(maxsize=64)
def _compile(source: str) -> Template:
    return template_environment().from_string(source)


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
    templates: Mapping[str, str],
    *,
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
    """The chat messages of one turn, rendered from ``templates`` (``templates_for``)."""
    system_name = "moderator_system" if speaker.role == "moderator" else "system"
    system = render(templates[system_name], context=context)
    user = render(
        templates["turn"],
        title=title,
        op=op,
        seed_comments=seed_comments,
        comments=visible,
        omitted=omitted,
        speaker=speaker,
        parent=parent,
        on_demand=on_demand,
        no_intervention=NO_INTERVENTION,
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
