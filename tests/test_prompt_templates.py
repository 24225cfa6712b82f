"""Every prompt is a template the recipe can override, and the override is what the model sees."""

from __future__ import annotations

from pathlib import Path

from fakes import FakeEngine
from synth_disco.annotation.prompts import PromptBuilder, builtin_template, templates_used
from synth_disco.pipeline.build import build

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke.yaml"


class RecordingEngine(FakeEngine):
    def __init__(self) -> None:
        super().__init__()
        self.scored: list = []

    def score(self, requests):
        self.scored.extend(requests)
        return super().score(requests)


def test_recipe_annotation_template_reaches_the_annotator(tmp_path):
    engine = RecordingEngine()
    template = "RATE {{ target.text }} ON {{ dimension.name }} AS {{ annotator.name }}"
    build(
        SMOKE,
        [f"discussion.templates.annotation={template}", "annotation.layout=window"],
        out=tmp_path / "run",
        engine_loader=lambda cfg: engine,
    )
    users = [r.messages[-1]["content"] for r in engine.scored]
    assert users, "nothing was annotated"
    assert all(u.startswith("RATE ") and " AS rater_" in u for u in users)


def test_without_override_the_builtin_window_template_is_used(tmp_path):
    engine = RecordingEngine()
    build(SMOKE, ["annotation.layout=window"], out=tmp_path / "run", engine_loader=lambda c: engine)
    assert all(
        ">>>>> TARGET COMMENT TO ANNOTATE" in r.messages[-1]["content"] for r in engine.scored
    )


def test_templates_used_names_exactly_the_rendered_sources():
    from synth_disco.recipe.schema import AnnotationConfig

    base = {"annotators": {"pool": "a"}, "dimensions": {"t": {"scale": [1, 2]}}}
    window = AnnotationConfig.model_validate({**base, "layout": "window"})
    thread = AnnotationConfig.model_validate({**base, "layout": "thread"})
    assert templates_used(window)["window.j2"] == builtin_template("window.j2")
    assert "thread_head.j2" not in templates_used(window)
    assert set(templates_used(thread)) >= {"system.j2", "thread_head.j2", "thread_question.j2"}
    custom = templates_used(window, "X {{ target.text }}")
    assert custom["annotation (set by the recipe)"] == "X {{ target.text }}"
    assert "window.j2" not in custom
    # The builder renders exactly these sources: a custom template's text is the user message.
    assert PromptBuilder(window, user_template="X").system_text.startswith("You annotate")
