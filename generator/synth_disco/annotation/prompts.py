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
from importlib.resources import files
from typing import Any

from jinja2 import DictLoader, StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from synth_disco.annotation.tasks import Task
from synth_disco.recipe.schema import AnnotationConfig, Dimension
from synth_disco.records import Prompt

TEMPLATES = files("synth_disco.annotation") / "templates"

# Template files by role; names starting with "_" are pieces the others include.
SYSTEM = "system.j2"  # the system message of both layouts
WINDOW = "window.j2"  # the window layout's user message; the recipe may replace it
THREAD_HEAD = "thread_head.j2"
THREAD_SEGMENT = "thread_segment.j2"
THREAD_QUESTION = "thread_question.j2"
PIECES = ("_dimension.j2", "_annotator.j2", "_answer_rule.j2")


def builtin_template(name: str) -> str:
    """The source text of a built-in annotation template."""
    return (TEMPLATES / name).read_text(encoding="utf-8")


def templates_used(cfg: AnnotationConfig, window_override: str | None = None) -> dict[str, str]:
    """Every annotation template ``cfg`` renders, name -> exact source (for the card).

    ``window_override`` is the recipe's ``discussion.templates.annotation``, which replaces the
    window layout's user message.
    """
    if cfg.layout == "thread":
        names = [SYSTEM, THREAD_HEAD, THREAD_SEGMENT, THREAD_QUESTION, *PIECES]
        return {n: builtin_template(n) for n in names}
    used = {SYSTEM: builtin_template(SYSTEM)}
    if window_override is not None:
        used["annotation (set by the recipe)"] = window_override
    else:
        used[WINDOW] = builtin_template(WINDOW)
    if window_override is None or "{% include" in window_override:
        used.update({n: builtin_template(n) for n in PIECES})
    return used


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
        # Built-in templates are read from the package; a recipe's template may include the
        # pieces (dimension block, annotator line, answer rule) by name as they do.
        sources = {n: builtin_template(n) for n in (*PIECES, SYSTEM, WINDOW)}
        sources.update(
            {n: builtin_template(n) for n in (THREAD_HEAD, THREAD_SEGMENT, THREAD_QUESTION)}
        )
        env = ImmutableSandboxedEnvironment(
            loader=DictLoader(sources),
            undefined=StrictUndefined,
            keep_trailing_newline=True,  # the pieces end in the newlines the prompts need
            autoescape=False,
        )
        self.cfg = cfg
        self._system = (
            env.from_string(system_template) if system_template else env.get_template(SYSTEM)
        )
        self._user = env.from_string(user_template) if user_template else env.get_template(WINDOW)
        self._head = env.get_template(THREAD_HEAD)
        self._segment = env.get_template(THREAD_SEGMENT)
        self._question = env.get_template(THREAD_QUESTION)
        self._segments: dict[tuple[Any, ...], str] = {}  # rendered thread segment per comment
        self._heads: dict[tuple[str, ...], str] = {}  # per (annotator, dimension)
        self._questions: dict[tuple[Any, ...], str] = {}  # per target position and author
        self.system_text = self._system.render(
            layout=cfg.layout,
            instructions=text_value(cfg.instructions, "annotation.instructions").strip(),
        ).strip()
        self._dimensions = {
            name: self._dimension_vars(name, dim) for name, dim in cfg.dimensions.items()
        }
        # What every label of this run is made from (the ``prompts`` config's row).
        self.prompt = Prompt(
            "annotator", self.system_text, tuple(templates_used(cfg, user_template).items())
        )

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
