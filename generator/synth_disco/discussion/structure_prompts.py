"""Prompts of the deliberation structures, rendered from sandboxed Jinja templates.

The built-in templates are files in ``templates/`` (and ``templates/combination/`` for the
combination presets), written for synth-disco; a recipe may replace each one under
``discussion.templates`` (``agent_system``, ``agent_turn``, ``combiner_system``,
``combiner_turn``, ``auto_instructions``), and give its own ``task`` and ``combination``:

- ``task`` (``discussion.task``, and ``discussion.moderator.task`` for the combiner): the task,
  a template of the post (``post.title``, ``post.text``, ``post.author``, ``post.id``); by
  default the post's title and text, so the post pool is the task pool.
- an agent gets ``agent_system`` (who it is: ``agent.name``, ``agent.persona``,
  ``agent.instructions``; the discussion ``context``) and ``agent_turn`` (the ``task``, then
  ``previous``: the responses it is shown, rendered by the combination; empty when it is
  shown none).
- ``combination``: how earlier responses are shown. A preset name (``default``, ``chain``,
  ``debate``, ``critique``, ``vote``) or a template of your own; it receives ``responses``
  (each with ``label``, ``text``, ``author``, ``cycle``, ``position``, ``slot``, ``own``),
  the ``task``, ``moderator`` (whether the reader is the combiner), ``structure`` and
  ``cycles``. The default is ``debate`` for a debate and ``default`` otherwise, for the agents
  (``discussion.combination``) and for the combiner (``discussion.moderator.combination``).
- the combiner gets ``combiner_system`` (its ``moderator.name``, ``persona`` and
  ``instructions``, which `auto` has the model write) and ``combiner_turn`` (its ``task`` and
  ``combined``: the last cycle's responses, rendered by its combination).
- ``auto_instructions``: the prompt (one user message) with which the model writes the
  combiner's instructions from its ``task``.

As in the forum, the stable part of an agent's prompt (who it is) comes first and the part
that grows (the responses it is shown) last.

What a response was made from is published as in the forum (``records.Prompt``, the
``prompts`` config): the rendered system message and the sources of the templates its user
message is rendered from (``agent_prompt``, ``combiner_prompt``). An agent's system message
says who it is, so each agent has a prompt of its own; the combiner's holds its instructions
(the model's, under `auto`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from synth_disco.discussion.prompts import builtin_template, recipe_text, render
from synth_disco.discussion.structures import Shown, has_combiner, writes_instructions
from synth_disco.recipe.schema import DiscussionConfig
from synth_disco.recipe.templates import combination_presets, is_preset_name
from synth_disco.records import Post, Prompt

# Template name -> its built-in file.
BUILTIN = {
    "task": "task.j2",
    "agent_system": "agent_system.j2",
    "agent_turn": "agent_turn.j2",
    "combiner_system": "combiner_system.j2",
    "combiner_turn": "combiner_turn.j2",
    "auto_instructions": "auto_instructions.j2",
}


def default_combination(cfg: DiscussionConfig) -> str:
    return "debate" if cfg.structure == "debate" else "default"


def combination_source(value: object, default: str) -> tuple[str, str]:
    """(name shown in the card, template source) of a `combination` setting: a preset's file,
    or the recipe's own template."""
    text = recipe_text(value)
    if text is None or is_preset_name(text):
        name = (text or default).strip()
        return f"combination: {name}", combination_presets()[name]
    return "combination: custom", text


def templates_for_structure(cfg: DiscussionConfig) -> dict[str, str]:
    """Template name -> the exact source a structured discussion with ``cfg`` renders it from.

    Names: ``task``, ``agent_system``, ``agent_turn``, ``combination``; with a combiner
    ``combiner_task`` (when it has its own task), ``combiner_system``, ``combiner_turn``,
    ``combiner_combination``, and ``auto_instructions`` when the model writes its
    instructions."""
    custom = cfg.templates
    out = {
        "task": recipe_text(cfg.task) or builtin_template(BUILTIN["task"]),
        "agent_system": recipe_text(custom.agent_system)
        or builtin_template(BUILTIN["agent_system"]),
        "agent_turn": recipe_text(custom.agent_turn) or builtin_template(BUILTIN["agent_turn"]),
        "combination": combination_source(cfg.combination, default_combination(cfg))[1],
    }
    if has_combiner(cfg):
        mod = cfg.moderator
        assert mod is not None
        if recipe_text(mod.task):
            out["combiner_task"] = recipe_text(mod.task) or ""
        out["combiner_system"] = recipe_text(custom.combiner_system) or builtin_template(
            BUILTIN["combiner_system"]
        )
        out["combiner_turn"] = recipe_text(custom.combiner_turn) or builtin_template(
            BUILTIN["combiner_turn"]
        )
        out["combiner_combination"] = combination_source(mod.combination, default_combination(cfg))[
            1
        ]
        if writes_instructions(cfg):
            out["auto_instructions"] = recipe_text(custom.auto_instructions) or builtin_template(
                BUILTIN["auto_instructions"]
            )
    return out


def card_names(cfg: DiscussionConfig) -> dict[str, str]:
    """Template name -> the name the card shows it under (presets by their preset name)."""
    names = {k: k for k in templates_for_structure(cfg)}
    names["combination"] = (
        "agents' " + combination_source(cfg.combination, default_combination(cfg))[0]
    )
    if "combiner_combination" in names and cfg.moderator is not None:
        names["combiner_combination"] = (
            "combiner's "
            + combination_source(cfg.moderator.combination, default_combination(cfg))[0]
        )
    return names


def render_task(source: str, post: Post) -> str:
    """The task text of a post."""
    return render(
        source,
        post={"id": post.id, "title": post.title, "text": post.op.text, "author": post.op.author},
    )


def render_combination(
    source: str,
    shown: Sequence[Shown],
    *,
    task: str,
    moderator: bool,
    structure: str,
    cycles: int,
) -> str:
    """The block that shows earlier responses; empty when there are none."""
    if not shown:
        return ""
    return render(
        source,
        responses=[s.as_context() for s in shown],
        task=task,
        moderator=moderator,
        structure=structure,
        cycles=cycles,
    )


def agent_system(
    templates: dict[str, str], *, context: str, agent: dict[str, Any], structure: str
) -> str:
    """An agent's system message: who it is (the same in every cycle)."""
    return render(templates["agent_system"], context=context, agent=agent, structure=structure)


def combiner_system(
    templates: dict[str, str], *, context: str, moderator: dict[str, Any], task: str
) -> str:
    """The combiner's system message: who it is and its instructions."""
    return render(templates["combiner_system"], context=context, moderator=moderator, task=task)


def agent_prompt(
    templates: dict[str, str], *, context: str, agent: dict[str, Any], structure: str
) -> Prompt:
    """The prompt an agent's responses are made from (role ``participant``), as the forum's
    ``DiscussionState.prompt`` publishes a speaker's: its system message, and the templates its
    user message is rendered from (the task from the post, the turn, the combination of the
    responses it is shown)."""
    system = agent_system(templates, context=context, agent=agent, structure=structure)
    return Prompt("participant", system, _sources(templates, "task", "agent_turn", "combination"))


def combiner_prompt(
    templates: dict[str, str], *, context: str, moderator: dict[str, Any], task: str
) -> Prompt:
    """The prompt the combiner's final response is made from (role ``moderator``): its system
    message (its instructions included) and its user message's templates; the task template
    is its own (``combiner_task``) when it has one."""
    system = combiner_system(templates, context=context, moderator=moderator, task=task)
    task_name = "combiner_task" if "combiner_task" in templates else "task"
    sources = _sources(templates, task_name, "combiner_turn", "combiner_combination")
    return Prompt("moderator", system, sources)


def _sources(templates: dict[str, str], *names: str) -> tuple[tuple[str, str], ...]:
    """(name, source) of the named templates, in the order given."""
    return tuple((n, templates[n]) for n in names)


def agent_messages(
    templates: dict[str, str],
    *,
    system: str,
    agent: dict[str, Any],
    task: str,
    shown: Sequence[Shown],
    structure: str,
    cycle: int,
    cycles: int,
) -> list[dict[str, str]]:
    """The chat messages of one agent's answer; ``system`` is its :func:`agent_system`
    message, the same in every cycle (rendered once per agent by the caller)."""
    previous = render_combination(
        templates["combination"],
        shown,
        task=task,
        moderator=False,
        structure=structure,
        cycles=cycles,
    )
    user = render(
        templates["agent_turn"],
        task=task,
        previous=previous,
        agent=agent,
        cycle=cycle,
        cycles=cycles,
        structure=structure,
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def combiner_messages(
    templates: dict[str, str],
    *,
    context: str,
    moderator: dict[str, Any],
    task: str,
    shown: Sequence[Shown],
    structure: str,
    cycles: int,
) -> list[dict[str, str]]:
    """The chat messages of the combiner's final response."""
    combined = render_combination(
        templates["combiner_combination"],
        shown,
        task=task,
        moderator=True,
        structure=structure,
        cycles=cycles,
    )
    system = combiner_system(templates, context=context, moderator=moderator, task=task)
    user = render(templates["combiner_turn"], task=task, combined=combined, moderator=moderator)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def instruction_messages(
    templates: dict[str, str], *, task: str, moderator: dict[str, Any]
) -> list[dict[str, str]]:
    """The prompt with which the model writes the combiner's instructions (`auto`)."""
    user = render(templates["auto_instructions"], task=task, moderator=moderator)
    return [{"role": "user", "content": user}]
