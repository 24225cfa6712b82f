"""Packed thread scoring: every question of a conversation in one pass, equal to scoring each
question's prompt alone (the tiny random model, float32, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synth_disco.engines.base import (
    EngineConfig,
    ThreadQuestion,
    ThreadScoreRequest,
    score_threads_by_prompts,
)
from synth_disco.engines.hf import TransformersEngine
from synth_disco.engines.tiny import ensure_tiny_model

LABELS = ("1", "2", "3", "4", "5")


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_model(0, tmp_path_factory.mktemp("tiny-cache"))


def engine_of(path: Path, **settings) -> TransformersEngine:
    """The engine on ``path`` in float32 on the CPU (``settings``: more EngineConfig fields)."""
    config = EngineConfig(str(path), dtype="float32", device="cpu", **settings)
    return TransformersEngine(config, model_id="tiny")


def thread(k: int, n: int, annotators: int = 2, labels: tuple[str, ...] = LABELS):
    """A discussion of ``n`` comments of varied length, each asked about by every annotator."""
    segments = tuple(
        f"[{j + 1}] user{j}:\n" + "cars or bikes in the city? " * ((j * 3 + k) % 7 + 1) + "\n\n"
        for j in range(n)
    )
    questions = tuple(
        ThreadQuestion(
            f"d{k}-c{j}-a{a}", j, f">>>>> Annotator {a}, your label for [{j + 1}]:", labels
        )
        for j in range(n)
        for a in range(annotators)
    )
    return ThreadScoreRequest(
        "Label each comment. " * 6, "Dimension: toxicity\n\n", segments, questions
    )


def token_level_reference(
    engine: TransformersEngine, req: ThreadScoreRequest
) -> dict[str, torch.Tensor]:
    """Each question's label distribution from one plain forward pass over its own tokens."""
    [(head, segments, questions)] = engine._threads.pieces([req])
    trunk = head + [t for s in segments for t in s]
    ends = [len(head) + sum(len(s) for s in segments[: j + 1]) for j in range(len(segments))]
    out = {}
    for q, tokens in zip(req.questions, questions, strict=True):
        view = trunk[: ends[q.after]] + tokens
        with torch.inference_mode():
            logits = engine.lm.model(torch.tensor([view])).logits[0, -1]
        firsts = [engine.lm.label_ids(lab)[0] for lab in q.labels]
        out[q.id] = logits[firsts].softmax(0)
    return out


def test_packed_scores_equal_each_question_scored_alone(tiny_path: Path) -> None:
    engine = engine_of(tiny_path)
    reqs = [thread(k, 2 + k % 5) for k in range(7)]  # different lengths share batches
    got = engine.score_threads(reqs)
    assert engine._threads.packed_ok is True
    assert [r.id for r in got] == [q.id for req in reqs for q in req.questions]
    by_id = {r.id: r for r in got}
    for req in reqs:
        for qid, ref in token_level_reference(engine, req).items():
            res = by_id[qid]
            assert res.error is None and sum(res.probs) == pytest.approx(1.0, abs=1e-6)
            assert torch.allclose(torch.tensor(res.probs), ref, atol=1e-5)
            assert res.label == LABELS[int(ref.argmax())]
    # Against the text-level reference (each question's messages through score()): these
    # segments tokenise the same alone and joined, so the numbers agree too.
    plain = score_threads_by_prompts(engine, reqs)
    for g, p in zip(got, plain, strict=True):
        assert g.label == p.label and g.probs == pytest.approx(p.probs, abs=1e-5)
        assert g.prompt_tokens == p.prompt_tokens


def test_batch_limits_and_prefix_store_do_not_change_scores(tiny_path: Path) -> None:
    reqs = [thread(k, 3 + k % 4) for k in range(6)]
    want = engine_of(tiny_path).score_threads(reqs)
    small = engine_of(tiny_path)
    small.lm.prefill_limits = (300, 64 * 1024)  # one thread per pass, prefill in row groups
    no_store = engine_of(tiny_path, prefix_cache_mb=0)
    for other in (small, no_store):
        for _ in range(2):  # the second round finds the trunks' heads in the prefix store
            got = other.score_threads(reqs)
            for g, w in zip(got, want, strict=True):
                assert g.label == w.label and g.probs == pytest.approx(w.probs, abs=1e-5)
    assert small.prefix_stats()["hit_tokens"] > 0


def test_unpackable_questions_fall_back_or_fail_alone(tiny_path: Path) -> None:
    engine = engine_of(tiny_path)
    multi = thread(1, 3, annotators=1, labels=("other", "others", "otherwise"))
    too_long = thread(2, 2, annotators=1)
    too_long = ThreadScoreRequest(
        too_long.system, too_long.head, (*too_long.segments, "word " * 5000), (
            *too_long.questions, ThreadQuestion("long", 2, "label?", LABELS)
        ),
    )  # fmt: skip
    got = engine.score_threads([multi, too_long, thread(3, 3)])
    by_id = {r.id: r for r in got}
    # Labels sharing a first token are scored token by token, prompt by prompt.
    for res, ref in zip(got[:3], score_threads_by_prompts(engine, [multi]), strict=True):
        assert res.probs == pytest.approx(ref.probs, abs=1e-5) and res.label == ref.label
    assert by_id["long"].error and "exceeds the model context" in by_id["long"].error
    assert by_id["d2-c0-a0"].error is None and by_id["d3-c2-a1"].error is None


def test_a_model_that_ignores_the_mask_is_detected_and_scored_plainly(
    tiny_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_of(tiny_path)
    real = engine._threads.packed_logits

    def unmasked(threads):  # what a model that drops custom 4D masks would return
        out = real(threads)
        return out + torch.randn_like(out)

    monkeypatch.setattr(engine._threads, "packed_logits", unmasked)
    reqs = [thread(k, 3) for k in range(3)]
    got = engine.score_threads(reqs)
    assert engine._threads.packed_ok is False
    for g, p in zip(got, score_threads_by_prompts(engine, reqs), strict=True):
        assert g.probs == pytest.approx(p.probs, abs=1e-6)


def test_bfloat16_packed_scores_stay_close_to_plain_ones(tiny_path: Path) -> None:
    # What a GPU run uses: the additive mask in bfloat16, the self-check's wider tolerance.
    config = EngineConfig(str(tiny_path), dtype="bfloat16", device="cpu")
    engine = TransformersEngine(config, model_id="tiny")
    reqs = [thread(k, 2 + k % 5) for k in range(6)]
    got = engine.score_threads(reqs)
    assert engine._threads.packed_ok is True
    for g, p in zip(got, score_threads_by_prompts(engine, reqs), strict=True):
        assert g.probs == pytest.approx(p.probs, abs=1e-2)


def test_sliding_window_models_score_long_views_plainly(
    tiny_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The question pass brings its own mask, which knows no window: a view longer than a
    # sliding-window layer's reach must be scored as a plain prompt, or it would see too far.
    import shutil

    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    window = 160
    cfg = MistralConfig(
        vocab_size=engine_of(tiny_path).lm.model.config.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=window,
        max_position_embeddings=4096,
    )
    MistralForCausalLM(cfg).save_pretrained(tmp_path)
    for f in tiny_path.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, tmp_path / f.name)
    engine = engine_of(tmp_path)
    assert engine.lm.window == window
    packed_views: list[int] = []
    real = engine._threads.packed_logits

    def recording(threads):
        packed_views.extend(len(t.trunk) + t.branch_length for t in threads)
        return real(threads)

    monkeypatch.setattr(engine._threads, "packed_logits", recording)
    reqs = [thread(k, n) for k in range(3) for n in (1, 2, 4)]  # ~100 to ~550 tokens
    plain = score_threads_by_prompts(engine, reqs)
    got = engine.score_threads(reqs)
    assert engine._threads.packed_ok is True and packed_views and max(packed_views) <= window
    for g, p in zip(got, plain, strict=True):
        assert g.label == p.label and g.probs == pytest.approx(p.probs, abs=1e-5)
    # Without the guard the long threads would not come out as their plain prompts.
    engine.lm.window = None
    unguarded = engine.score_threads(reqs)
    assert max(packed_views) > window
    assert any(
        u.error or u.probs != pytest.approx(p.probs, abs=1e-5)
        for u, p in zip(unguarded, plain, strict=True)
    )
