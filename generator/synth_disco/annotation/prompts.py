"""The annotation prompt: natural text, rendered from sandboxed Jinja templates.

Layout, most shared first so the engine's prefix reuse covers as much as possible: the system
message holds the shared instructions (the same for every task of a run); the user message holds
the earlier comments, then the target comment between unmistakable markers, then the dimension
with its label set, then the annotator, then how to answer. Tasks on the same comment and
dimension share everything up to the annotator line, so each extra annotator costs only its
last few tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from synth_disco.annotation.tasks import Task
from synth_disco.recipe import AnnotationConfig, Dimension

BASE_INSTRUCTIONS = (
    "You annotate comments from an online discussion for a research dataset. Each request "
    "shows some earlier comments for context and one target comment. Judge only the target "
    "comment, using the earlier comments to understand it, and answer with one of the labels "
    "offered."
)

SYSTEM_TEMPLATE = """{{ base }}
{%- if instructions %}

{{ instructions }}
{%- endif %}"""

USER_TEMPLATE = """\
{% if context -%}
Earlier comments in the discussion (context only, do not annotate these):
{% for c in context %}
[{{ c.position }}] {{ c.author }}{{ c.role_note }}:
{{ c.text }}
{% endfor %}
{% else -%}
No earlier comments are shown.

{% endif -%}
>>>>> TARGET COMMENT TO ANNOTATE: [{{ target.position }}] {{ target.author }}{{ target.role_note }} <<<<<
{{ target.text }}
>>>>> END OF TARGET COMMENT <<<<<

Dimension: {{ dimension.name }}
{%- if dimension.instructions %}
{{ dimension.instructions }}
{%- endif %}
{% if dimension.level == "ordinal" %}Labels (an ordered scale, lowest first):{% else %}Labels:{% endif %}
{%- for l in dimension.labels %}
- {{ l.label }}{% if l.description %}: {{ l.description }}{% endif %}
{%- endfor %}

You are the annotator {{ annotator.name }}.{% if annotator.description %} {{ annotator.description }}{% endif %}
{% if method == "generate" and rationale -%}
Answer with exactly one label from the list on the first line, then one or two sentences on why.
{%- else -%}
Answer with exactly one label from the list and nothing else.
{%- endif %}"""

ROLE_NOTES = {"op": " (original post)", "seed": "", "moderator": " (moderator)", "user": ""}


def text_value(value: Any, where: str) -> str:
    """A recipe text field as a string; file references must have been resolved by the loader."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise TypeError(f"{where}: file reference was not resolved to text before annotation")


class PromptBuilder:
    """Renders the messages of annotation tasks; templates are compiled once per run."""

    def __init__(
        self,
        cfg: AnnotationConfig,
        *,
        system_template: str | None = None,
        user_template: str | None = None,
    ):
        env = ImmutableSandboxedEnvironment(
            undefined=StrictUndefined, keep_trailing_newline=False, autoescape=False
        )
        self.cfg = cfg
        self._system = env.from_string(system_template or SYSTEM_TEMPLATE)
        self._user = env.from_string(user_template or USER_TEMPLATE)
        self._system_text = self._system.render(
            base=BASE_INSTRUCTIONS,
            instructions=text_value(cfg.instructions, "annotation.instructions").strip(),
        ).strip()
        self._dimensions = {
            name: self._dimension_vars(name, dim) for name, dim in cfg.dimensions.items()
        }

    @staticmethod
    def _dimension_vars(name: str, dim: Dimension) -> dict[str, Any]:
        return {
            "name": name,
            "level": dim.level,
            "instructions": text_value(
                dim.instructions, f"annotation.dimensions.{name}.instructions"
            ).strip(),
            "labels": [
                {"label": label, "description": dim.descriptions.get(label, "")}
                for label in dim.labels
            ],
        }

    def labels(self, dimension: str) -> tuple[str, ...]:
        return tuple(self.cfg.dimensions[dimension].labels)

    def messages(self, task: Task, context: Sequence[Any] | None = None) -> list[dict[str, str]]:
        """The chat messages of ``task``; ``context`` overrides the task's context comments."""
        ctx = task.context if context is None else context

        def view(c: Any) -> dict[str, Any]:
            return {
                "position": c.index + 1,
                "author": c.author or "unknown",
                "role": c.role,
                "role_note": ROLE_NOTES.get(c.role, f" ({c.role})"),
                "text": c.text.strip(),
            }

        user = self._user.render(
            context=[view(c) for c in ctx],
            target=view(task.target),
            annotator={
                "id": task.annotator.id,
                "name": task.annotator.name,
                "description": task.annotator.description.strip(),
            },
            dimension=self._dimensions[task.dimension],
            method=self.cfg.method,
            rationale=self.cfg.rationale,
        ).strip()
        return [
            {"role": "system", "content": self._system_text},
            {"role": "user", "content": user},
        ]
