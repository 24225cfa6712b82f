"""The prompts as the card prints them: every prompt template the run renders, verbatim
(``prompt_templates``), and the instruction texts they are rendered with (``_instructions``);
``_text`` shows a recipe text or the file it was read from."""

from __future__ import annotations

import json
from typing import Any

from synth_disco.annotation.prompts import templates_used as annotation_templates
from synth_disco.dataset.portable import portable_model_id
from synth_disco.discussion.templates_used import templates_used as discussion_templates
from synth_disco.recipe.overrides import sets_under
from synth_disco.recipe.schema import AUTO_INSTRUCTIONS, FileRef, Recipe


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, FileRef):
        return f"(read from {portable_model_id(value.file)})"
    return str(value)


def prompt_templates(recipe: Recipe) -> list[tuple[str, str]]:
    """(name, Jinja source) of every prompt template the run renders: the recipe's own where
    it sets one, synth-disco's built-in otherwise. The card prints each verbatim. The sources
    come from the code that renders them (``discussion.templates_used.templates_used`` and
    ``annotation.prompts.templates_used``), so the card cannot list a template nothing uses.
    Templates a factor level patches in are shown with the patches under Experimental design.
    """
    out = list(discussion_templates(recipe).items())
    if recipe.annotation is not None:
        override = _text(recipe.discussion.templates.annotation) or None
        out += [
            (f"annotation: {name}", source)
            for name, source in annotation_templates(recipe.annotation, override).items()
        ]
    return out


def _instructions(recipe: Recipe) -> list[dict[str, str]]:
    """The instruction texts the prompts are rendered with: (title, note, text) blocks."""
    d = recipe.discussion
    blocks = [
        {
            "title": "Participant instructions",
            "text": _text(d.instructions),
            "note": "" if _text(d.instructions) else "None given.",
        },
    ]
    if _text(d.context):
        blocks.append({"title": "Discussion context", "text": _text(d.context), "note": ""})
    if d.moderator is not None:
        m = d.moderator
        persona = m.persona if isinstance(m.persona, str) else json.dumps(m.persona)
        if m.role == "combiner":
            auto = m.instructions == AUTO_INSTRUCTIONS
            note = "Combiner: writes each structure's final response from its last cycle" + (
                "; its instructions were written by the model from the task, once per "
                "discussion (column `moderator_instructions`)"
                if auto
                else ""
            )
            blocks.append(
                {
                    "title": f"Moderator `{m.name}` (combiner)",
                    "note": note + (f"; persona: {persona}" if persona else ""),
                    "text": "" if auto else _text(m.instructions),
                }
            )
        else:
            blocks.append(
                {
                    "title": f"Moderator `{m.name}`",
                    "note": f"Policy `{m.policy}`"
                    + (f" (every {m.k} comments)" if m.policy == "every_k" else "")
                    + (f"; persona: {persona}" if persona else ""),
                    "text": _text(m.instructions),
                }
            )
    elif any(
        sets_under(p, ("discussion", "moderator"))
        for levels in recipe.factors.values()
        for p in levels.values()
    ):
        blocks.append(
            {
                "title": "Moderator",
                "text": "",
                "note": "Set per factor level: see the patches under Experimental design.",
            }
        )
    if recipe.annotation is not None and _text(recipe.annotation.instructions):
        blocks.append(
            {
                "title": "Annotator instructions",
                "text": _text(recipe.annotation.instructions),
                "note": "",
            }
        )
    return blocks
