"""Prompt templates as recipes give them: the sandbox they render in, and the check that a
recipe's template renders before a run relies on it.

Every prompt is a sandboxed Jinja template in which an undefined name is an error (not an empty
string). ``sample_context`` holds, for each kind of template a recipe may set, the variables the
prompt builders pass, with sample values: a template that renders with them renders in a run,
and one naming anything else is refused at validation time instead of failing mid-run.
"""

from __future__ import annotations

import re
from importlib.resources import files
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from synth_disco.recipe.schema_walk import suggest

# The keys of ``discussion.templates``.
TEMPLATE_KINDS = (
    "system",
    "turn",
    "moderator_system",
    "annotation",
    "agent_system",
    "agent_turn",
    "combiner_system",
    "combiner_turn",
    "auto_instructions",
)
# A `combination` (``discussion.combination``, ``discussion.moderator.combination``) that is one
# word names a preset; anything else is a template of its own.
_PRESET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_COMBINATIONS = ("discussion", "templates", "combination")


def combination_presets() -> dict[str, str]:
    """Preset name -> template source, for the `combination` of deliberation structures. The
    presets are files of the discussion package (read as package data: the recipe layer does
    not import the discussion code)."""
    folder = files("synth_disco").joinpath(*_COMBINATIONS)
    return {
        p.name.removesuffix(".j2"): p.read_text(encoding="utf-8")
        for p in sorted(folder.iterdir(), key=lambda p: p.name)
        if p.name.endswith(".j2")
    }


def is_preset_name(value: str) -> bool:
    """Whether a `combination` value is meant as a preset name (one word), not a template."""
    return bool(_PRESET_NAME.match(value.strip()))


def _response(label: str, author: str, text: str, slot: int, own: bool) -> dict[str, Any]:
    return {
        "label": label,
        "author": author,
        "text": text,
        "cycle": 1,
        "position": slot,
        "slot": slot,
        "own": own,
    }


def sample_context(kind: str) -> dict[str, Any]:
    """The variables a prompt template of ``kind`` is rendered with, with sample values.

    These are what the prompt builders pass (``discussion/prompts.py`` for ``system``,
    ``moderator_system`` and ``turn``; ``discussion/structure_prompts.py`` for the
    deliberation structures' ``task``, ``combination``, ``agent_*``, ``combiner_*`` and
    ``auto_instructions``; ``annotation/prompts.py`` for ``annotation``; tests hold them to
    the same names).
    """
    if kind in ("system", "moderator_system"):
        return {"context": "A forum about local news."}
    if kind == "turn":
        op = {"author": "OP", "role": "op", "text": "The original post."}
        reply = {"author": "amber_owl17", "role": "user", "text": "A first reply."}
        return {
            "title": "A sample thread",
            "op": op,
            "seed_comments": [{"author": "early_bird", "role": "seed", "text": "A seed reply."}],
            "comments": [reply],
            "omitted": 2,
            "speaker": {
                "name": "quiet_heron42",
                "role": "user",
                "persona": "Age: 41. Current employment: nurse.",
                "instructions": "Write as this person would.",
            },
            "parent": reply,
            "on_demand": False,
            "no_intervention": "NO INTERVENTION",
        }
    if kind == "task":
        return {
            "post": {
                "id": "post-1",
                "title": "A sample thread",
                "text": "The original post.",
                "author": "OP",
            }
        }
    agent = {
        "name": "quiet_heron42",
        "label": "Participant 1",
        "persona": "Age: 41. Current employment: nurse.",
        "instructions": "Write as this person would.",
        "slot": 0,
    }
    moderator = {
        "name": "Moderator",
        "persona": "A careful editor.",
        "instructions": "Combine the answers fairly.",
    }
    task = "Should the town square be closed to cars on Saturdays?"
    if kind == "combination":
        return {
            "responses": [
                _response("Participant 1", "quiet_heron42", "A first answer.", 0, True),
                _response("Participant 2", "amber_owl17", "A second answer.", 1, False),
            ],
            "task": task,
            "moderator": False,
            "structure": "chain",
            "cycles": 1,
        }
    if kind == "agent_system":
        return {"context": "A town hall.", "agent": agent, "structure": "chain"}
    if kind == "agent_turn":
        return {
            "task": task,
            "previous": "Others answered before you.",
            "agent": agent,
            "cycle": 1,
            "cycles": 2,
            "structure": "chain",
        }
    if kind == "combiner_system":
        return {"context": "A town hall.", "moderator": moderator, "task": task}
    if kind == "combiner_turn":
        return {
            "task": task,
            "combined": "The participants answered as follows.",
            "moderator": moderator,
        }
    if kind == "auto_instructions":
        return {"task": task, "moderator": moderator}
    if kind == "annotation":

        def view(position: int, author: str, role: str, text: str) -> dict[str, Any]:
            note = {"op": " (original post)", "moderator": " (moderator)"}.get(role, "")
            return {
                "position": position,
                "author": author,
                "role": role,
                "role_note": note,
                "text": text,
            }

        return {
            "context": [view(1, "OP", "op", "The original post.")],
            "target": view(2, "amber_owl17", "user", "A first reply."),
            "annotator": {"id": "a1", "name": "careful_rater", "description": "A careful rater."},
            "dimension": {
                "name": "toxicity",
                "level": "ordinal",
                "instructions": "1 = not toxic, 5 = very toxic.",
                "labels": [{"label": str(i), "description": ""} for i in range(1, 6)],
                "described": False,  # whether any label has a description
            },
            "method": "score",
            "rationale": False,
        }
    raise ValueError(kind)


def _builtin_piece(name: str) -> str | None:
    # The annotation templates' shared pieces (``_dimension.j2``, ...), which a recipe's
    # annotation template may include as the built-in ones do. Read as package data: the
    # recipe layer does not import the annotation code.
    path = files("synth_disco") / "annotation" / "templates" / name
    return path.read_text(encoding="utf-8") if name.startswith("_") and path.is_file() else None


def template_environment() -> SandboxedEnvironment:
    """The Jinja environment recipe templates render in: sandboxed, undefined names fail
    (as in the prompt builders), and only the built-in annotation pieces can be included."""
    return SandboxedEnvironment(
        loader=jinja2.FunctionLoader(_builtin_piece),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )


def _chat_template_environment() -> SandboxedEnvironment:
    # Tokenizer chat templates are rendered by transformers with loop controls enabled.
    return SandboxedEnvironment(
        undefined=jinja2.StrictUndefined, extensions=["jinja2.ext.loopcontrols"]
    )


def check_template(env: SandboxedEnvironment, source: str, kind: str) -> str | None:
    """None if ``source`` renders with the sample context of ``kind``; else the reason."""
    if kind == "chat_template":
        # Rendered by the tokenizer with its own variables: the syntax is what we can check.
        env = _chat_template_environment()
    try:
        tpl = env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        return f"template syntax error (template line {e.lineno}): {e.message}"
    if kind == "chat_template":
        return None
    try:
        tpl.render(**sample_context(kind))
    except jinja2.UndefinedError as e:
        names = sorted(sample_context(kind))
        m = re.match(r"'(\w+)' is undefined", e.message or "")
        hint = suggest(m.group(1), names) if m else ""
        return f"template does not render: {e.message}{hint} (available: {', '.join(names)})"
    except jinja2.TemplateError as e:
        return f"template does not render: {e}"
    except Exception as e:  # a template can raise anything (e.g. a division by zero)
        return f"template does not render: {type(e).__name__}: {e}"
    return None
