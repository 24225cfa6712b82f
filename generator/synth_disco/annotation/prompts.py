"""The annotation prompt: natural text, rendered from sandboxed Jinja templates.

Two layouts (``annotation.layout``), both with the shared instructions as the system message:

* ``window``, most shared first so the engine's prefix reuse covers as much as possible: the
  user message holds the earlier comments, then the target comment between unmistakable
  markers, then the dimension with its label set, then the annotator, then how to answer. Tasks
  on the same comment and dimension share everything up to the annotator line, so each extra
  annotator costs only its last few tokens.
* ``thread``: the user message holds the dimension with its label set, the annotator and how
  to answer (the head), then the discussion from its first comment up to the target (one
  segment per comment), then a one-line question naming the target (the last comment shown).
  Every label of a (discussion, annotator, dimension) reads a prefix of the same text, so an
  engine with ``score_threads`` runs the discussion once for all of them; the head is the same
  for every discussion, so an engine's prefix reuse serves it too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from synth_disco.annotation.tasks import Task
from synth_disco.recipe.schema import AnnotationConfig, Dimension

BASE_INSTRUCTIONS = (
    "You annotate comments from an online discussion for a research dataset. Each request "
    "shows some earlier comments for context and one target comment. Judge only the target "
    "comment, using the earlier comments to understand it, and answer with one of the labels "
    "offered."
)

# The thread layout says how to read the discussion in its head, next to the discussion.
THREAD_BASE_INSTRUCTIONS = "You annotate comments from an online discussion for a research dataset."

SYSTEM_TEMPLATE = """{{ base }}
{%- if instructions %}

{{ instructions }}
{%- endif %}"""

# Pieces both layouts share, so that they word the task the same way.
DIMENSION_BLOCK = """\
Dimension: {{ dimension.name }}
{%- if dimension.instructions %}
{{ dimension.instructions }}
{%- endif %}
{% if dimension.level == "ordinal" %}Labels (an ordered scale, lowest first):{% else %}Labels:{% endif %}
{%- if dimension.described %}
{%- for l in dimension.labels %}
- {{ l.label }}{% if l.description %}: {{ l.description }}{% endif %}
{%- endfor %}
{%- else %} {{ dimension.labels | map(attribute="label") | join(", ") }}
{%- endif %}
"""

ANNOTATOR_LINE = """\
You are the annotator {{ annotator.name }}.\
{% if annotator.description %} {{ annotator.description }}{% endif %}
"""

ANSWER_RULE = """\
{% if method == "generate" and rationale -%}
Answer with exactly one label from the list on the first line, then one or two sentences on why.
{%- else -%}
Answer with exactly one label from the list and nothing else.
{%- endif %}"""

USER_TEMPLATE = (
    """\
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

"""
    + DIMENSION_BLOCK
    + "\n"
    + ANNOTATOR_LINE
    + ANSWER_RULE
)

THREAD_HEAD_TEMPLATE = (
    DIMENSION_BLOCK
    + ANNOTATOR_LINE
    + """Below is a discussion, oldest comment first. Label only its last comment, \
using the earlier ones to understand it. \
"""
    + ANSWER_RULE
    + "\n\n"
)

THREAD_SEGMENT_TEMPLATE = """\
[{{ c.position }}] {{ c.author }}{{ c.role_note }}:
{{ c.text }}

"""

# Short on purpose: the one part of a thread-layout prompt that is not shared with other labels.
THREAD_QUESTION_TEMPLATE = """\
Your label for comment [{{ target.position }}]:"""

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
        self._head = env.from_string(THREAD_HEAD_TEMPLATE)
        self._segment = env.from_string(THREAD_SEGMENT_TEMPLATE)
        self._question = env.from_string(THREAD_QUESTION_TEMPLATE)
        self._segments: dict[tuple[Any, ...], str] = {}  # rendered thread segment per comment
        self._heads: dict[tuple[str, ...], str] = {}  # per (annotator, dimension)
        self._questions: dict[tuple[Any, ...], str] = {}  # per target position and author
        self.system_text = self._system.render(
            base=THREAD_BASE_INSTRUCTIONS if cfg.layout == "thread" else BASE_INSTRUCTIONS,
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
            "described": any(dim.descriptions.get(label) for label in dim.labels),
        }

    def labels(self, dimension: str) -> tuple[str, ...]:
        return tuple(self.cfg.dimensions[dimension].labels)

    def messages(self, task: Task, context: Sequence[Any] | None = None) -> list[dict[str, str]]:
        """The chat messages of ``task``; ``context`` overrides the task's context comments."""
        ctx = task.context if context is None else context
        if self.cfg.layout == "thread":
            body = "".join(self.thread_segment(c) for c in (*ctx, task.target))
            user = self.thread_head(task) + body + self.thread_question(task)
        else:
            user = self._user.render(
                context=[_view(c) for c in ctx],
                target=_view(task.target),
                annotator=_annotator(task),
                dimension=self._dimensions[task.dimension],
                method=self.cfg.method,
                rationale=self.cfg.rationale,
            ).strip()
        return [
            {"role": "system", "content": self.system_text},
            {"role": "user", "content": user},
        ]

    # -- thread layout: the user message is head + segments up to the target + question

    def thread_head(self, task: Task) -> str:
        key = (task.annotator.id, task.annotator.name, task.annotator.description, task.dimension)
        return _remembered(
            self._heads,
            key,
            10_000,
            lambda: self._head.render(
                dimension=self._dimensions[task.dimension],
                annotator=_annotator(task),
                method=self.cfg.method,
                rationale=self.cfg.rationale,
            ),
        )

    def thread_segment(self, comment: Any) -> str:
        key = (comment.comment_id, comment.index, comment.author, comment.role, comment.text)
        # Bounded by a shard's comments in practice; by the limit all the same.
        return _remembered(
            self._segments, key, 100_000, lambda: self._segment.render(c=_view(comment))
        )

    def thread_question(self, task: Task) -> str:
        t = task.target
        key = (t.index, t.author, t.role)  # all a question may name; never the comment's text
        return _remembered(
            self._questions, key, 10_000, lambda: self._question.render(target=_view(t))
        )


def _remembered(cache: dict[Any, str], key: Any, limit: int, render: Callable[[], str]) -> str:
    """``cache[key]``, rendered on first use; kept while the cache holds fewer than ``limit``."""
    text = cache.get(key)
    if text is None:
        text = render()
        if len(cache) < limit:
            cache[key] = text
    return text


def _view(c: Any) -> dict[str, Any]:
    return {
        "position": c.index + 1,
        "author": c.author or "unknown",
        "role": c.role,
        "role_note": ROLE_NOTES.get(c.role, f" ({c.role})"),
        "text": c.text.strip(),
    }


def _annotator(task: Task) -> dict[str, str]:
    return {
        "id": task.annotator.id,
        "name": task.annotator.name,
        "description": task.annotator.description.strip(),
    }
