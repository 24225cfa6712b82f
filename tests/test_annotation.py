"""The annotate stage: tasks, prompts, answer parsing, batching, resume, aggregates, imports."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth_disco.annotation import aggregate
from synth_disco.annotation.aggregate import write_aggregates
from synth_disco.annotation.existing import annotate_existing
from synth_disco.annotation.parse import parse_answer
from synth_disco.annotation.prompts import PromptBuilder
from synth_disco.annotation.stage import run_annotation_stage
from synth_disco.annotation.syndisco_import import read_syndisco_dir
from synth_disco.annotation.tasks import (
    AnnotationError,
    assign_annotators,
    build_tasks,
    comments_table,
)
from synth_disco.engines.base import (
    Capabilities,
    ChatRequest,
    Completion,
    LabelScores,
    ScoreRequest,
)
from synth_disco.recipe.schema import AnnotationConfig, Recipe
from synth_disco.records import Comment, Persona
from synth_disco.seeds import derive_seed
from synth_disco.store import schemas
from synth_disco.store.run_dir import RunStore

# ------------------------------------------------------------------------------- fixtures


class SimulatedCrash(BaseException):
    """Stands for the process dying mid-stage (not caught by ``except Exception``)."""


@dataclass
class FakeEngine:
    """Label scores and answers that depend only on the request (never on its batch).

    ``answer(request, attempt_seed)`` gives generated text; ``crash_after`` raises
    SimulatedCrash on that engine call (1-based), before answering it.
    """

    answer: object = None
    crash_after: int | None = None
    model_id: str = "fake"
    revision: str | None = None
    calls: list[list] = field(default_factory=list)

    def _tick(self, reqs: list) -> None:
        if self.crash_after is not None and len(self.calls) + 1 >= self.crash_after:
            raise SimulatedCrash()
        self.calls.append(list(reqs))

    def score(self, requests: list[ScoreRequest]) -> list[LabelScores]:
        self._tick(requests)
        out = []
        for r in requests:
            raw = [derive_seed(r.id, r.messages[-1]["content"], lab) % 1000 + 1 for lab in r.labels]
            probs = tuple(x / sum(raw) for x in raw)
            best = max(range(len(probs)), key=probs.__getitem__)
            out.append(LabelScores(r.id, probs, r.labels[best], prompt_tokens=10))
        return out

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        self._tick(requests)
        out = []
        for r in requests:
            text = self.answer(r) if callable(self.answer) else str(r.seed % 5 + 1)
            out.append(Completion(r.id, text, 10, 2, "eos"))
        return out

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return sum(len(m["content"].encode()) for m in messages)

    @property
    def max_context(self) -> int:
        return 100_000

    def close(self) -> None:
        pass


ANNOTATORS = [
    Persona(id=f"a{i}", name=f"Annotator {i}", description=f"Annotator persona {i}.")
    for i in range(5)
]


def make_cfg(**kw) -> AnnotationConfig:
    base = {
        "annotators": {"pool": "annotators", "per_comment": 3},
        "context_window": 2,
        "dimensions": {
            "toxicity": {
                "scale": [1, 2, 3, 4, 5],
                "descriptions": {"1": "not toxic", "5": "very toxic"},
                "instructions": "How toxic is the comment?",
            },
            "stance": {"categories": ["agree", "disagree", "neutral"]},
        },
    }
    if kw.get("layout") == "thread":
        del base["context_window"]  # every earlier comment is in view
    base.update(kw)
    return AnnotationConfig.model_validate(base)


def make_comments(n_discussions: int = 3, per: int = 5, prefix: str = "d") -> list[Comment]:
    out = []
    for d in range(n_discussions):
        did = f"{prefix}{d}"
        for i in range(per):
            role = "op" if i == 0 else ("moderator" if i == 3 else "user")
            text = f"Comment {i} of {did}: cities should {'ban' if i % 2 else 'keep'} cars."
            out.append(
                Comment(did, f"{did}-c{i}", i, None, f"user{i}", role, None, None, text, text, "m")
            )
    return out


def shard_tables(comments: list[Comment], per_shard: int = 2) -> dict[int, pa.Table]:
    ids = list(dict.fromkeys(c.discussion_id for c in comments))
    return {
        s: comments_table([c for c in comments if c.discussion_id in ids[i : i + per_shard]])
        for s, i in enumerate(range(0, len(ids), per_shard))
    }


def run(tmp: Path, cfg, engine, shards_tables, **kw):
    store = RunStore(tmp)
    result = run_annotation_stage(
        store, shards_tables, sorted(shards_tables), cfg, ANNOTATORS, engine,
        model_name="fake-model", seed=kw.pop("seed", 11), **kw,
    )  # fmt: skip
    return store, result


def all_rows(store: RunStore) -> list[dict]:
    return [
        r
        for p in store.shard_files("annotate", "annotations")
        for r in pq.read_table(p).to_pylist()
    ]


# ------------------------------------------------------------------------------- tasks, prompts


def test_three_annotators_two_dimensions_gives_exactly_that_many_linked_rows(tmp_path):
    comments = make_comments()
    cfg = make_cfg()
    store, result = run(tmp_path, cfg, FakeEngine(), shard_tables(comments))
    rows = all_rows(store)
    annotated = [c for c in comments if c.role in ("user", "moderator")]
    assert len(rows) == len(annotated) * 3 * 2
    by_id = {c.comment_id: c for c in comments}
    for r in rows:
        assert by_id[r["comment_id"]].discussion_id == r["discussion_id"]
        assert r["annotator_id"] in {a.id for a in ANNOTATORS}
        assert r["annotator_persona"] == f"Annotator persona {r['annotator_id'][1:]}."
        assert r["model"] == "fake-model" and r["method"] == "score" and r["status"] == "ok"
    per_comment = Counter((r["comment_id"], r["dimension"]) for r in rows)
    assert set(per_comment.values()) == {3}
    # Each (comment, annotator, dimension) appears once.
    assert len({(r["comment_id"], r["annotator_id"], r["dimension"]) for r in rows}) == len(rows)
    assert pq.read_table(store.shard_files("annotate", "annotations")[0]).schema.equals(
        schemas.ANNOTATIONS
    )
    assert result.shards_done == 2 and result.finished == len(rows)


def test_roles_follow_include_flags():
    comments = make_comments(1, 5)
    roles = lambda cfg: {t.target.role for t in build_tasks(comments, cfg, ANNOTATORS, 1)}  # noqa: E731
    assert roles(make_cfg()) == {"user", "moderator"}
    assert roles(make_cfg(include_moderator=False)) == {"user"}
    assert roles(make_cfg(include_seed=True)) == {"op", "user", "moderator"}


def test_annotator_assignment_is_seeded_deterministic_and_varies():
    picks = {c: tuple(p.id for p in assign_annotators(c, ANNOTATORS, 2, 7)) for c in "abcdefgh"}
    again = {c: tuple(p.id for p in assign_annotators(c, ANNOTATORS, 2, 7)) for c in "abcdefgh"}
    assert picks == again
    assert len(set(picks.values())) > 1  # not the same two annotators for everyone
    assert [p.id for p in assign_annotators("x", ANNOTATORS, "all", 7)] == [
        a.id for a in ANNOTATORS
    ]
    with pytest.raises(AnnotationError, match="only 5"):
        assign_annotators("x", ANNOTATORS, 6, 7)


def test_prompt_shows_context_then_marked_target_then_labels():
    comments = make_comments(2, 5)
    cfg = make_cfg(context_window=2)
    task = next(t for t in build_tasks(comments, cfg, ANNOTATORS, 1) if t.id.startswith("d1-c4|"))
    system, user = PromptBuilder(cfg).messages(task)
    text = user["content"]
    # The OP stays pinned, then the last `context_window` comments before the target.
    assert [c.comment_id for c in task.context] == ["d1-c0", "d1-c2", "d1-c3"]
    assert "Comment 0 of d1" in text
    assert "Comment 2 of d1" in text and "Comment 3 of d1" in text
    assert "Comment 1 of d1" not in text and "of d0" not in text  # window and discussion
    start, end = text.index("TARGET COMMENT TO ANNOTATE"), text.index("END OF TARGET COMMENT")
    assert "Comment 4 of d1" in text[start:end]
    assert text.index("Comment 3 of d1") < start < end < text.index("- 1: not toxic")
    assert "(moderator)" in text  # roles are named
    assert "{" not in text and "\\n" not in text  # natural text, no JSON scaffolding
    # The shared instructions come first and are the same for every task.
    other = PromptBuilder(cfg).messages(build_tasks(comments, cfg, ANNOTATORS, 1)[0])[0]
    assert system == other


def test_label_lists_are_inline_unless_a_label_is_described():
    comments = make_comments(1, 2)
    cfg = make_cfg()
    prompts = PromptBuilder(cfg)
    by_dim = {t.dimension: t for t in build_tasks(comments, cfg, ANNOTATORS, 1)}
    described = prompts.messages(by_dim["toxicity"])[1]["content"]
    plain = prompts.messages(by_dim["stance"])[1]["content"]
    assert "- 1: not toxic\n- 2\n" in described and "- 5: very toxic" in described
    assert "Labels: agree, disagree, neutral\n" in plain and "- agree" not in plain


def test_thread_layout_shows_the_whole_discussion_then_asks_about_its_last_comment():
    comments = make_comments(2, 5)
    cfg = make_cfg(layout="thread")
    tasks = build_tasks(comments, cfg, ANNOTATORS, 1)
    task = next(t for t in tasks if t.id.startswith("d1-c4|"))
    assert [c.comment_id for c in task.context] == [f"d1-c{i}" for i in range(4)]
    prompts = PromptBuilder(cfg)
    system, user = prompts.messages(task)
    text = user["content"]
    at = [text.index(f"Comment {i} of d1") for i in range(5)]
    assert at == sorted(at) and "of d0" not in text
    # Dimension, labels and annotator come first (shared by all of a discussion's labels),
    # the one-line question naming the target comes last.
    assert text.index("- 1: not toxic") < text.index(task.annotator.name) < at[0]
    assert text.endswith(prompts.thread_question(task))
    question = prompts.thread_question(task)
    assert "[5]" in question and text.count(question) == 1 and "\n" not in question
    # Each label's prompt extends the previous comment's by exactly one segment.
    earlier = next(t for t in tasks if t.id == task.id.replace("d1-c4", "d1-c2"))
    head = prompts.messages(earlier)[1]["content"].removesuffix(prompts.thread_question(earlier))
    assert text.startswith(head)
    assert system == prompts.messages(earlier)[0]


def test_thread_layout_and_context_window_are_exclusive():
    with pytest.raises(ValueError, match="context_window applies to layout: window only"):
        AnnotationConfig.model_validate(
            {"layout": "thread", "context_window": 2, "dimensions": {"t": {"scale": [1, 2]}}}
        )


def test_thread_is_the_default_layout_unless_the_recipe_asks_for_a_window():
    dims = {"t": {"scale": [1, 2]}}
    assert AnnotationConfig.model_validate({"dimensions": dims}).layout == "thread"
    # context_window only means something for window: setting it alone keeps window, as
    # every recipe written when window was the default expects.
    implied = AnnotationConfig.model_validate({"context_window": 2, "dimensions": dims})
    assert (implied.layout, implied.context_window) == ("window", 2)
    # A whole config dumped with its defaults (manifest.json) validates again unchanged.
    for cfg in (AnnotationConfig.model_validate({"dimensions": dims}), implied):
        assert AnnotationConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_a_recipes_own_window_template_keeps_the_window_layout():
    raw = {
        "name": "t",
        "models": {"m": {"engine": "tiny", "model": "tiny"}},
        "personas": {"users": {"inline": [{"username": "a"}]}},
        "posts": {"inline": [{"title": "t", "text": "x"}]},
        "discussion": {"templates": {"annotation": "{{ target.text }}"}},
        "annotation": {"dimensions": {"t": {"scale": [1, 2]}}},
    }
    assert Recipe.model_validate(raw).annotation.layout == "window"
    raw["annotation"]["layout"] = "thread"
    assert Recipe.model_validate(raw).annotation.layout == "thread"
    del raw["discussion"]
    del raw["annotation"]["layout"]
    assert Recipe.model_validate(raw).annotation.layout == "thread"


def test_prompt_templates_are_sandboxed():
    cfg = make_cfg()
    evil = "{{ target.__class__.__mro__[1].__subclasses__() }}"
    task = build_tasks(make_comments(1, 3), cfg, ANNOTATORS, 1)[0]
    from jinja2.exceptions import SecurityError

    with pytest.raises(SecurityError):
        PromptBuilder(cfg, user_template=evil).messages(task)


def test_context_is_trimmed_to_fit_the_model(tmp_path):
    class Small(FakeEngine):
        @property
        def max_context(self) -> int:
            return 1400

    comments = make_comments(1, 5)
    comments = [
        c if c.index < 3 else Comment(**{**c.to_dict(), "text": c.text + " x" * 200})
        for c in comments
    ]
    engine = Small()
    run(tmp_path, make_cfg(context_window=4), engine, {0: comments_table(comments)})
    for req in (r for call in engine.calls for r in call):
        assert engine.count_tokens(req.messages) <= 1400 - 16
        assert "TARGET COMMENT" in req.messages[-1]["content"]


# ------------------------------------------------------------------------------- parsing

S = ["1", "2", "3", "4", "5"]
C = ["toxic", "not toxic", "unsure"]
Y = ["yes", "no"]


@pytest.mark.parametrize(
    ("answer", "labels", "expected"),
    [
        # good
        ("3", S, "3"),
        ("Label: 3", S, "3"),
        ("3 - because it insults the poster", S, "3"),
        ("**3**", S, "3"),
        ("**Rating:** 4\nIt is rude.", S, "4"),
        ("`2`", S, "2"),
        ('"5"', S, "5"),
        ("toxicity: 4", S, "4"),
        ("Final answer: 5", S, "5"),
        ("1. Not toxic at all", S, "1"),
        ("Toxic", C, "toxic"),
        ("NOT TOXIC - it is polite", C, "not toxic"),
        ("Category: unsure", C, "unsure"),
        ("No, it is fine.", Y, "no"),
        ("Yes, no doubt about it.", Y, "yes"),
        # borderline, accepted
        ("3/5 since it is rude", S, "3"),
        ("3 out of 5", S, "3"),
        ("I would rate this a 3.", S, "3"),
        ("On a scale of 1 to 5, I'd say 4.", S, "4"),
        ("My answer is 2 because it is calm", S, "2"),
        ("This comment is not toxic.", C, "not toxic"),
        ("(3)", S, "3"),
        # bad or ambiguous: refused
        ("", S, None),
        ("I cannot rate this comment", S, None),
        ("7", S, None),
        ("0", S, None),
        ("10", S, None),
        ("3.5", S, None),
        ("3 or 4", S, None),
        ("2-3", S, None),
        ("3, 4", S, None),
        ("Maybe 2, maybe 3", S, None),
        ("The comment deserves 3. Not 4.", S, None),
        ("toxic or not toxic", C, None),
        ("yes and no", Y, None),
        ("very toxic indeed", ["mild", "severe"], None),
    ],
)
def test_parse_answer(answer, labels, expected):
    parsed = parse_answer(answer, labels, "toxicity")
    assert parsed.label == expected, parsed
    assert (parsed.error is None) == (expected is not None)


def test_parse_answer_keeps_rationale():
    assert parse_answer("3 - because it insults", S).rationale == "because it insults"
    assert parse_answer("Label: toxic\nIt calls people names.", C).rationale == (
        "It calls people names."
    )


# ------------------------------------------------------------------------------- methods


def test_thread_layout_generate_method_asks_each_label_on_its_thread_prompt(tmp_path):
    cfg = make_cfg(layout="thread", method="generate")
    engine = FakeEngine()
    store, result = run(tmp_path, cfg, engine, shard_tables(make_comments(2, 4)))
    assert len(all_rows(store)) == 2 * 3 * 3 * 2  # (stance answers fail to parse: no matter)
    prompts = PromptBuilder(cfg)
    tasks = {t.id: t for t in build_tasks(make_comments(2, 4), cfg, ANNOTATORS, 11)}
    for req in (r for call in engine.calls for r in call):
        task = tasks[req.id]
        assert req.messages == prompts.messages(task)
        assert req.messages[1]["content"].endswith(prompts.thread_question(task))


def test_score_method_gives_normalised_distributions_with_argmax_label(tmp_path):
    class Unnormalised(FakeEngine):
        def score(self, requests):  # an engine's rounding must not leak into the rows
            return [
                LabelScores(s.id, tuple(p * 1.01 for p in s.probs), s.label)
                for s in super().score(requests)
            ]

    store, _ = run(tmp_path, make_cfg(), Unnormalised(), shard_tables(make_comments()))
    cfg = make_cfg()
    for r in all_rows(store):
        labels = [s["label"] for s in r["scores"]]
        probs = [s["prob"] for s in r["scores"]]
        assert labels == cfg.dimensions[r["dimension"]].labels
        assert math.isclose(sum(probs), 1.0, abs_tol=1e-9)
        assert r["label"] == labels[max(range(len(probs)), key=probs.__getitem__)]
        assert r["raw_text"] == "" and r["attempts"] == 1


def test_generate_method_batches_parses_and_one_hot_scores(tmp_path):
    engine = FakeEngine(answer=lambda r: f"Label: {r.seed % 3 + 1}\nbecause.")
    cfg = make_cfg(method="generate", rationale=True)
    comments = make_comments()
    store, result = run(tmp_path, cfg, engine, shard_tables(comments, per_shard=3), max_batch=16)
    rows = all_rows(store)
    assert rows and all(r["method"] == "generate" for r in rows)
    tox = [r for r in rows if r["dimension"] == "toxicity"]
    assert all(r["status"] == "ok" and r["raw_text"].startswith("Label:") for r in tox)
    for r in tox:
        assert {s["label"]: s["prob"] for s in r["scores"]}[r["label"]] == 1.0
        assert sum(s["prob"] for s in r["scores"]) == 1.0
    # Batched: every call but the last of the shard carries max_batch requests.
    assert max(len(c) for c in engine.calls) == 16
    assert result.engine_calls == len(engine.calls) < len(rows)


def test_unparseable_answers_are_retried_with_new_seeds_then_kept_as_failed(tmp_path):
    def answer(r: ChatRequest) -> str:
        if "Dimension: stance" in r.messages[-1]["content"]:
            return "I refuse to choose."
        return "meh" if r.params.temperature == 0 else "4"  # the warmer retry succeeds

    engine = FakeEngine(answer=answer)
    cfg = make_cfg(method="generate", max_retries=2)
    store, result = run(tmp_path, cfg, engine, {0: comments_table(make_comments(1, 3))})
    rows = all_rows(store)
    stance = [r for r in rows if r["dimension"] == "stance"]
    tox = [r for r in rows if r["dimension"] == "toxicity"]
    assert stance and all(
        r["status"] == "failed" and r["label"] is None and r["raw_text"] == "I refuse to choose."
        and r["attempts"] == 3 and r["scores"] == []
        for r in stance
    )  # fmt: skip
    assert tox and all(
        r["status"] == "ok" and r["label"] == "4" and r["attempts"] == 2 for r in tox
    )
    assert result.failed == len(stance)
    seeds: dict[str, set[int]] = {}
    for call in engine.calls:
        for r in call:
            seeds.setdefault(r.id, set()).add(r.seed)
    assert all(len(s) == 3 for tid, s in seeds.items() if tid.endswith("|stance"))


def test_engine_errors_become_failed_rows_not_lost(tmp_path):
    class Broken(FakeEngine):
        def score(self, requests):
            self._tick(requests)
            return [LabelScores(r.id, (), "", error="prompt too long") for r in requests]

    store, _ = run(
        tmp_path, make_cfg(max_retries=1), Broken(), {0: comments_table(make_comments(1, 3))}
    )
    rows = all_rows(store)
    assert len(rows) == 2 * 3 * 2
    assert all(r["status"] == "failed" and "prompt too long" in r["raw_text"] for r in rows)


# ------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("method", ["score", "generate"])
@pytest.mark.parametrize("crash_at", [1, 2, 4])
def test_crash_and_resume_equals_uninterrupted_run(tmp_path, method, crash_at):
    cfg = make_cfg(method=method, max_retries=1)
    answer = lambda r: "junk" if r.seed % 4 == 0 else str(r.seed % 5 + 1)  # noqa: E731
    shards = shard_tables(make_comments(4, 5))
    ref_store, _ = run(tmp_path / "ref", cfg, FakeEngine(answer=answer), shards, max_batch=7)
    with pytest.raises(SimulatedCrash):
        run(
            tmp_path / "run",
            cfg,
            FakeEngine(answer=answer, crash_after=crash_at),
            shards,
            max_batch=7,
        )
    journal = list(RunStore(tmp_path / "run").read_journal("annotate", 0))
    if method == "score":  # every call before the crash was journaled, nothing after it
        assert len(journal) == (crash_at - 1) * 7
    store, result = run(tmp_path / "run", cfg, FakeEngine(answer=answer), shards, max_batch=7)
    assert result.resumed > 0 or crash_at == 1
    assert all_rows(store) == all_rows(ref_store)
    for s in shards:
        ids = [r["task"] for r in store.read_journal("annotate", s)]
        assert len(ids) == len(set(ids))  # nothing was asked twice
    again, res2 = run(
        tmp_path / "run", cfg, FakeEngine(crash_after=1), shards
    )  # all done: no calls
    assert res2.shards_already == len(shards) and res2.engine_calls == 0


def test_sigkill_in_a_real_process_then_resume(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_annotation import FakeEngine, make_cfg, make_comments, shard_tables, run
        from pathlib import Path
        run(Path(sys.argv[1]), make_cfg(), FakeEngine(), shard_tables(make_comments(4, 5)), max_batch=5)
        """
    )
    env = {**os.environ, "SYNTH_DISCO_KILL_AT": "annotate.step:3"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "run")], env=env, timeout=120
    )
    assert proc.returncode == -9
    assert not RunStore(tmp_path / "run").is_done("annotate", 0)
    env.pop("SYNTH_DISCO_KILL_AT")
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "run")], env=env, timeout=120
    )
    assert proc.returncode == 0
    ref, _ = run(tmp_path / "ref", make_cfg(), FakeEngine(), shard_tables(make_comments(4, 5)))
    assert all_rows(RunStore(tmp_path / "run")) == all_rows(ref)


def test_should_stop_between_calls_then_continue(tmp_path):
    shards = shard_tables(make_comments(2, 5), per_shard=2)
    engine = FakeEngine()
    store, result = run(
        tmp_path,
        make_cfg(),
        engine,
        shards,
        max_batch=4,
        should_stop=lambda: len(engine.calls) >= 2,
    )
    assert result.stopped and len(engine.calls) == 2 and not store.is_done("annotate", 0)
    store, result = run(tmp_path, make_cfg(), FakeEngine(), shards, max_batch=4)
    assert not result.stopped and result.resumed == 8 and store.is_done("annotate", 0)


def test_a_shard_locked_by_another_process_is_skipped(tmp_path):
    store = RunStore(tmp_path)
    with store.lock_shard("annotate", 0) as held:
        assert held
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_run_in_child, args=(tmp_path, q))
        p.start()
        p.join(60)
        assert q.get(timeout=5) == 1
    assert not store.is_done("annotate", 0)


def _run_in_child(root, q):
    _, result = run(root, make_cfg(), FakeEngine(), {0: comments_table(make_comments(1, 3))})
    q.put(result.shards_skipped)


def test_stale_journal_records_are_not_reused(tmp_path):
    comments = make_comments(1, 3)
    store, _ = run(tmp_path, make_cfg(), FakeEngine(), {0: comments_table(comments)})
    store.reopen_shard("annotate", 0)  # e.g. the discussion was re-run upstream with new text
    changed = [Comment(**{**c.to_dict(), "text": c.text + " (edited)"}) for c in comments]
    engine = FakeEngine()
    _, result = run(tmp_path, make_cfg(), engine, {0: comments_table(changed)})
    assert result.resumed == 0 and result.finished == 2 * 3 * 2


def test_new_settings_on_the_same_comments_reannotate_only_what_is_new(tmp_path):
    comments = {0: comments_table(make_comments(1, 3))}
    one = {"toxicity": {"scale": [1, 2, 3]}}
    two = {**one, "civility": {"categories": ["civil", "uncivil"]}}
    run(tmp_path, make_cfg(dimensions=one), FakeEngine(), comments)
    engine = FakeEngine()
    store, result = run(tmp_path, make_cfg(dimensions=two), engine, comments)
    assert result.shards_done == 1 and result.resumed == 2 * 3
    assert all(r.id.endswith("|civility") for call in engine.calls for r in call)
    assert Counter(r["dimension"] for r in all_rows(store)) == {"toxicity": 6, "civility": 6}


def test_retry_failed_asks_again_for_failed_labels_only(tmp_path):
    cfg = make_cfg(method="generate", max_retries=0)
    comments = {0: comments_table(make_comments(1, 3))}
    store, r1 = run(
        tmp_path, cfg, FakeEngine(answer=lambda r: "x" if "stance" in r.id else "2"), comments
    )
    assert r1.failed == 6
    engine = FakeEngine(answer=lambda r: "agree" if "stance" in r.id else "5")
    store, r2 = run(tmp_path, cfg, engine, comments, retry_failed=True)
    assert r2.finished == 6 and r2.resumed == 6
    rows = all_rows(store)
    assert len(rows) == 12 and all(r["status"] == "ok" for r in rows)
    assert {r["label"] for r in rows if r["dimension"] == "toxicity"} == {"2"}  # kept


# ------------------------------------------------------------------------------- aggregates


def test_aggregate_mean_majority_and_agreement(tmp_path):
    cfg = make_cfg()
    rows = [
        {"comment_id": "c1", "discussion_id": "d", "annotator_id": "a", "dimension": "toxicity", "label": "1", "status": "ok"},
        {"comment_id": "c1", "discussion_id": "d", "annotator_id": "b", "dimension": "toxicity", "label": "2", "status": "ok"},
        {"comment_id": "c1", "discussion_id": "d", "annotator_id": "c", "dimension": "toxicity", "label": "2", "status": "ok"},
        {"comment_id": "c2", "discussion_id": "d", "annotator_id": "a", "dimension": "toxicity", "label": "5", "status": "ok"},
        {"comment_id": "c2", "discussion_id": "d", "annotator_id": "b", "dimension": "toxicity", "label": "4", "status": "ok"},
        {"comment_id": "c2", "discussion_id": "d", "annotator_id": "c", "dimension": "toxicity", "label": None, "status": "failed"},
        {"comment_id": "c1", "discussion_id": "d", "annotator_id": "a", "dimension": "stance", "label": "agree", "status": "ok"},
        {"comment_id": "c1", "discussion_id": "d", "annotator_id": "b", "dimension": "stance", "label": "agree", "status": "ok"},
        {"comment_id": "c2", "discussion_id": "d", "annotator_id": "a", "dimension": "stance", "label": "disagree", "status": "ok"},
        {"comment_id": "c2", "discussion_id": "d", "annotator_id": "b", "dimension": "stance", "label": "disagree", "status": "ok"},
    ]  # fmt: skip
    per, agreement = aggregate(pa.Table.from_pylist(rows), cfg)
    got = {(r["comment_id"], r["dimension"]): r for r in per}
    assert got[("c1", "toxicity")]["mean"] == pytest.approx(5 / 3)
    assert got[("c1", "toxicity")]["majority"] == "2" and got[("c1", "toxicity")]["n"] == 3
    assert got[("c2", "toxicity")]["majority"] == "4"  # tie 4/5: lowest on the scale
    assert got[("c2", "toxicity")]["n"] == 2  # the failed label does not count
    assert got[("c1", "stance")]["mean"] is None
    assert agreement["stance"] == {
        "alpha": 1.0, "level": "nominal", "n_items": 2, "n_comments": 2, "n_labels": 4,
        "n_annotators": 2,
        # two comments: half the resamples hold one comment only, where alpha is undefined
        "alpha_low": None, "alpha_high": None, "bootstrap_samples": 0,
    }  # fmt: skip
    assert agreement["toxicity"]["level"] == "ordinal" and agreement["toxicity"]["n_items"] == 2
    # Ordinal alpha by hand. Unit c1 has 1,2,2 (weight 1/(3-1)), c2 has 5,4 (weight 1):
    # o12 = o21 = 2/2, o22 = 2/2, o45 = o54 = 1; marginals n1=1, n2=2, n4=1, n5=1; n=5.
    n = {"1": 1, "2": 2, "4": 1, "5": 1}
    order = ["1", "2", "3", "4", "5"]

    def d2(c, k):
        i, j = sorted((order.index(c), order.index(k)))
        return (sum(n.get(order[g], 0) for g in range(i, j + 1)) - (n[c] + n[k]) / 2) ** 2

    d_o = (2 * d2("1", "2") + 2 * d2("4", "5")) / 5
    pairs = [(c, k) for c in n for k in n if c != k]
    d_e = sum(n[c] * n[k] * d2(c, k) for c, k in pairs) / (5 * 4)
    assert agreement["toxicity"]["alpha"] == pytest.approx(1 - d_o / d_e, abs=1e-6)


def test_write_aggregates_writes_the_files_the_card_reads(tmp_path):
    cfg = make_cfg()
    store, _ = run(tmp_path, cfg, FakeEngine(), shard_tables(make_comments()))
    agreement = write_aggregates(store, cfg)
    assert json.loads((tmp_path / "agreement.json").read_text()) == agreement
    assert set(agreement) == {"toxicity", "stance"}
    table = pq.read_table(tmp_path / "annotations_aggregate.parquet")
    n_comments = sum(1 for c in make_comments() if c.role in ("user", "moderator"))
    assert table.num_rows == n_comments * 2
    assert set(table.column("n").to_pylist()) == {3}


# ------------------------------------------------------------------------------- SynDisco import

SD21 = {
    "timestamp": "25-06-01-12-00",
    "logs": [
        {"name": "alice", "text": "Should we ban cars?", "model": "hardcoded", "prompt": ""},
        {"name": "bob", "text": "A seed reply.", "model": "hardcoded", "prompt": ""},
        {"name": "carol", "text": '"No way."', "model": "llama", "prompt": '{"type": "user"}'},
        {"name": "dave", "text": "   ", "model": "llama", "prompt": '{"type": "user"}'},
        {"name": "bob", "text": "Yes, please.", "model": "llama", "prompt": '{"type": "user"}'},
    ],
}
SD21_ANNOTATION = {
    "timestamp": "25-06-01-12-05",
    "logs": [{"name": "carol", "text": "toxicity: 1", "model": "llama",
              "prompt": '{"context": "", "instructions": "", "type": "annotator", "persona": {}}'}],
}  # fmt: skip
SD20 = {
    "id": "6f1c2d7e-0000-4000-8000-000000000001",
    "timestamp": "24-10-01-09-30",
    "users": ["alice", "bob"],
    "moderator": "mod",
    "user_prompts": ["..."],
    "moderator_prompt": "...",
    "ctx_length": 3,
    "logs": [
        {"name": "alice", "text": "Is remote work here to stay?", "model": "hardcoded"},
        {"name": "bob", "text": "Sure.", "model": "qwen"},
        {"name": "mod", "text": "", "model": "qwen"},
        {"name": "alice", "text": "Not for everyone.", "model": "qwen"},
        {"name": "mod", "text": "Please stay civil.", "model": "qwen"},
    ],
}
SD20_ANNOTATION = {"conv_id": SD20["id"], "timestamp": "x", "annotator_model": "m",
                   "annotator_prompt": "p", "ctx_length": 2, "logs": [["Sure.", "toxicity=1"]]}  # fmt: skip


def write_syndisco(folder: Path) -> Path:
    (folder / "annotations").mkdir(parents=True)
    (folder / "a.json").write_text(json.dumps(SD21, indent=4))
    (folder / "b.json").write_text(json.dumps(SD20, indent=4))
    (folder / "annotations" / "c.json").write_text(json.dumps(SD21_ANNOTATION))
    (folder / "annotations" / "d.json").write_text(json.dumps(SD20_ANNOTATION))
    (folder / "notes.json").write_text("[1, 2]")
    return folder


def test_syndisco_import_reads_both_formats(tmp_path):
    result = read_syndisco_dir(write_syndisco(tmp_path / "sd"))
    assert len(result.discussions) == 2
    assert sorted(result.formats.values()) == ["2.0.x", "2.1+"]
    assert len(result.skipped) == 3  # two annotation files and one unrelated JSON file
    d21, d20 = result.discussions
    assert d20 == SD20["id"] and d21.startswith("syndisco-")
    a = [c for c in result.comments if c.discussion_id == d21]
    assert [c.role for c in a] == ["op", "seed", "user", "user"]  # the blank entry is dropped
    assert [c.index for c in a] == [0, 1, 2, 3]
    assert a[2].text == '"No way."' and a[2].model == "llama" and a[0].model is None
    b = [c for c in result.comments if c.discussion_id == d20]
    assert [(c.author, c.role) for c in b] == [
        ("alice", "op"), ("bob", "user"), ("alice", "user"), ("mod", "moderator"),
    ]  # fmt: skip
    assert result.empty_entries == 2
    assert len({c.comment_id for c in result.comments}) == len(result.comments)
    # Stable ids: the same file elsewhere, under another name, gets the same id.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "zzz.json").write_text(json.dumps(SD21, indent=4))
    assert read_syndisco_dir(tmp_path / "elsewhere").discussions == [d21]


# ------------------------------------------------------------------------------- annotate existing


def loaded(tmp_path: Path, **annotation) -> SimpleNamespace:
    recipe = Recipe.model_validate(
        {
            "name": "annot-test",
            "seed": 5,
            "models": {"m": {"engine": "tiny", "model": "tiny"}},
            "personas": {"annotators": {"inline": [a.to_dict() for a in ANNOTATORS]}},
            "posts": {"inline": ["x"]},
            "annotation": make_cfg(**annotation).model_dump(),
            "output": {"shard_size": 2},
        }
    )
    return SimpleNamespace(
        recipe=recipe, personas=lambda pool: list(ANNOTATORS), display_path="r.yaml"
    )


def test_annotate_existing_syndisco_dir(tmp_path):
    src = write_syndisco(tmp_path / "sd")
    out = annotate_existing(src, loaded(tmp_path), engine=FakeEngine())
    assert out == tmp_path / "sd-annotated"
    store = RunStore(out)
    rows = all_rows(store)
    comments = pq.read_table(store.shard_files("discuss", "comments")[0]).to_pylist()
    ids = {c["comment_id"] for c in comments}
    users = [c for c in comments if c["role"] in ("user", "moderator")]
    assert len(rows) == len(users) * 3 * 2 and {r["comment_id"] for r in rows} <= ids
    assert (out / "agreement.json").exists() and (out / "annotations_aggregate.parquet").exists()
    facts = json.loads((out / "import.json").read_text())
    assert (
        facts["kind"] == "syndisco"
        and facts["discussions"] == 2
        and str(tmp_path) not in json.dumps(facts)
    )
    # Running it again resumes (nothing left to do) and gives the same labels.
    assert annotate_existing(src, loaded(tmp_path), engine=FakeEngine(crash_after=1)) == out
    assert all_rows(store) == rows


def test_annotate_existing_dataset_folder_and_run_dir(tmp_path):
    comments = make_comments(5, 4)
    ds = tmp_path / "ds"
    (ds / "data" / "comments").mkdir(parents=True)
    t = comments_table(comments)
    pq.write_table(t.slice(0, 7), ds / "data" / "comments" / "train-00000-of-00002.parquet")
    pq.write_table(t.slice(7), ds / "data" / "comments" / "train-00001-of-00002.parquet")
    out = annotate_existing(ds, loaded(tmp_path), engine=FakeEngine())
    store = RunStore(out)
    assert [i.members for i in store.done_shards("discuss")] == [["d0", "d1"], ["d2", "d3"], ["d4"]]
    rows = all_rows(store)
    assert len(rows) == 5 * 3 * 3 * 2  # 3 annotated comments (2 users, 1 moderator) each
    # The annotated run directory is itself a run directory: annotate it in place with
    # another recipe; its discuss shards are used as they are.
    store_again = annotate_existing(
        out, loaded(tmp_path, include_moderator=False), engine=FakeEngine()
    )
    assert store_again == out
    with pytest.raises(AnnotationError, match="no `annotation`"):
        annotate_existing(
            ds,
            SimpleNamespace(
                recipe=loaded(tmp_path).recipe.model_copy(update={"annotation": None}),
                display_path="r.yaml",
            ),
        )


def test_annotate_existing_rejects_unknown_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnnotationError, match="nothing to annotate"):
        annotate_existing(tmp_path / "empty", loaded(tmp_path), engine=FakeEngine())
    with pytest.raises(FileNotFoundError):
        annotate_existing(tmp_path / "missing", loaded(tmp_path), engine=FakeEngine())


# ------------------------------------------------------------------------------- the tiny model


@pytest.fixture(scope="module")
def tiny_engine():
    from synth_disco.engines.base import EngineConfig
    from synth_disco.engines.registry import load_engine

    engine = load_engine(EngineConfig("tiny", engine="tiny"))
    yield engine
    engine.close()


def test_tiny_model_score_method_end_to_end(tmp_path, tiny_engine):
    cfg = make_cfg(context_window=1)
    shards = shard_tables(make_comments(2, 3), per_shard=1)
    store, result = run(tmp_path / "a", cfg, tiny_engine, shards, max_batch=64)
    rows = all_rows(store)
    assert len(rows) == 2 * 2 * 3 * 2 and result.engine_calls == 2  # one call per shard
    for r in rows:
        probs = [s["prob"] for s in r["scores"]]
        assert math.isclose(sum(probs), 1.0, abs_tol=1e-6)
        assert r["label"] == r["scores"][max(range(len(probs)), key=probs.__getitem__)]["label"]
        assert r["status"] == "ok" and r["model"] == "fake-model"
    # Resume after a crash with other batch sizes: same labels, same distributions.
    crashing = CrashingWrapper(tiny_engine, crash_after=2)
    with pytest.raises(SimulatedCrash):
        run(tmp_path / "b", cfg, crashing, shards, max_batch=5)
    assert len(list(RunStore(tmp_path / "b").read_journal("annotate", 0))) == 5
    store_b, _ = run(tmp_path / "b", cfg, tiny_engine, shards, max_batch=7)
    rows_b = all_rows(store_b)
    assert [r["label"] for r in rows_b] == [r["label"] for r in rows]
    for x, y in zip(rows, rows_b, strict=True):
        assert [s["prob"] for s in x["scores"]] == pytest.approx(
            [s["prob"] for s in y["scores"]], abs=1e-5
        )


class PromptByPrompt:
    """The tiny engine without ``score_threads``: every label scored on its own prompt."""

    capabilities = Capabilities()

    def __init__(self, engine):
        self.inner = engine

    def __getattr__(self, name):
        if name == "score_threads":
            raise AttributeError(name)
        return getattr(self.inner, name)


def test_tiny_model_thread_layout_runs_each_discussion_once_with_the_same_scores(
    tmp_path, tiny_engine
):
    cfg = make_cfg(layout="thread", annotators={"pool": "annotators", "per_comment": 2})
    shards = shard_tables(make_comments(3, 5), per_shard=2)
    calls = []
    real = tiny_engine.score_threads

    def counted(requests):
        calls.append(requests)
        return real(requests)

    tiny_engine.score_threads = counted
    try:
        store, result = run(tmp_path / "packed", cfg, tiny_engine, shards, max_batch=7)
    finally:
        del tiny_engine.score_threads
    rows = all_rows(store)
    assert len(rows) == 3 * 4 * 2 * 2 and result.failed == 0  # 4 user/moderator comments
    # One request per (discussion, annotator, dimension), each covering all its comments:
    # batches end on discussion boundaries even with max_batch=7.
    requests = [r for call in calls for r in call]

    def group(task_id: str) -> tuple[str, str, str]:
        comment, annotator, dimension = task_id.split("|")
        return comment.split("-")[0], annotator, dimension

    groups = [{group(q.id) for q in r.questions} for r in requests]
    assert all(len(g) == 1 for g in groups)
    assert len({next(iter(g)) for g in groups}) == len(requests)  # no discussion run twice
    assert sum(len(r.questions) for r in requests) == len(rows)
    plain_store, _ = run(tmp_path / "plain", cfg, PromptByPrompt(tiny_engine), shards)
    plain = {(r["comment_id"], r["annotator_id"], r["dimension"]): r for r in all_rows(plain_store)}
    for r in rows:
        p = plain[(r["comment_id"], r["annotator_id"], r["dimension"])]
        assert r["label"] == p["label"]
        assert [s["prob"] for s in r["scores"]] == pytest.approx(
            [s["prob"] for s in p["scores"]], abs=1e-4
        )


def test_tiny_model_generate_method_keeps_unparseable_text(tmp_path, tiny_engine):
    cfg = make_cfg(method="generate", max_retries=1, dimensions={"toxicity": {"scale": [1, 2, 3]}})
    store, result = run(tmp_path, cfg, tiny_engine, {0: comments_table(make_comments(1, 3))})
    rows = all_rows(store)
    assert len(rows) == 2 * 3
    for r in rows:  # the tiny model writes gibberish: mostly failed, never dropped
        assert r["raw_text"] or r["status"] == "failed"
        if r["status"] == "failed":
            assert r["attempts"] == 2 and r["label"] is None
        else:
            assert parse_answer(r["raw_text"], ["1", "2", "3"], "toxicity").label == r["label"]
    assert result.engine_calls >= 1


class CrashingWrapper:
    """Delegates to a real engine and dies on its ``crash_after``-th call."""

    def __init__(self, engine, crash_after: int):
        self.engine, self.crash_after, self.n = engine, crash_after, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def score(self, requests):
        self.n += 1
        if self.n >= self.crash_after:
            raise SimulatedCrash()
        return self.engine.score(requests)


def test_thread_layout_sends_threads_too_long_for_the_model_alone_and_trimmed(
    tmp_path, tiny_engine, monkeypatch
):
    monkeypatch.setattr(tiny_engine.lm, "max_context", 1600)
    packed, alone = [], []
    real_threads, real_score = tiny_engine.score_threads, tiny_engine.score
    monkeypatch.setattr(
        tiny_engine,
        "score_threads",
        lambda reqs: packed.extend(q.id for r in reqs for q in r.questions) or real_threads(reqs),
    )
    monkeypatch.setattr(
        tiny_engine, "score", lambda reqs: alone.extend(r.id for r in reqs) or real_score(reqs)
    )
    comments = [
        c if c.index < 2 else Comment(**{**c.to_dict(), "text": c.text + " x" * 150})
        for c in make_comments(1, 5)
    ]
    cfg = make_cfg(layout="thread", dimensions={"toxicity": {"scale": [1, 2, 3]}})
    store, result = run(tmp_path, cfg, tiny_engine, shard_tables(comments))
    assert len(all_rows(store)) == 12 and result.failed == 0
    # The early comments' threads fit and are packed; the later, longer ones go alone.
    assert packed and alone and not set(packed) & set(alone)
    position = {"d0-c1": 1, "d0-c2": 2, "d0-c3": 3, "d0-c4": 4}
    assert max(position[i.split("|")[0]] for i in packed) < min(
        position[i.split("|")[0]] for i in alone
    )
