"""The transformers engine on the tiny random model: batching, seeding, stops, errors, scoring."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from synth_disco.engines.base import (
    LOAD_FIELDS,
    ChatRequest,
    EngineConfig,
    EngineLoadError,
    SamplingParams,
    ScoreRequest,
    capabilities_of,
)
from synth_disco.engines.chat_tokens import encode_chats
from synth_disco.engines.hf import TransformersEngine
from synth_disco.engines.hf.cache_room import with_room
from synth_disco.engines.hf.load import cpu_batch_tokens
from synth_disco.engines.hf.prefill import AUTO_FLOOR_TOKENS
from synth_disco.engines.hf.prefix_cache import PrefixStore
from synth_disco.engines.hf.sampler import SeededSampler
from synth_disco.engines.registry import ENGINE_NAMES, ENGINES, load_engine
from synth_disco.engines.sampling import sampling_params_from
from synth_disco.engines.tiny import ensure_tiny_model, tiny_seed
from synth_disco.errors import SynthDiscoError

SAMPLED = SamplingParams(max_new_tokens=24, temperature=1.0, top_p=0.95)
GREEDY = SamplingParams(max_new_tokens=24)


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_model(0, tmp_path_factory.mktemp("tiny-cache"))


def cpu_engine(path: Path, model_id: str | None = None, **settings) -> TransformersEngine:
    """The transformers engine on ``path`` in float32 on the CPU (``settings``: EngineConfig)."""
    config = EngineConfig(str(path), dtype="float32", device="cpu", **settings)
    return TransformersEngine(config, model_id=model_id)


@pytest.fixture(scope="session")
def engine(tiny_path: Path) -> TransformersEngine:
    return cpu_engine(tiny_path, model_id="tiny")


def chat(i: int, words: int | None = None) -> list[dict[str, str]]:
    """Prompts of clearly different lengths, so batches need padding."""
    n = i * 7 % 23 if words is None else words
    return [
        {"role": "system", "content": f"You are forum user number {i}."},
        {"role": "user", "content": f"Thread {i}: " + "tea or coffee? " * n},
    ]


def request(i: int, params: SamplingParams = SAMPLED, seed: int | None = None) -> ChatRequest:
    return ChatRequest(f"r{i}", chat(i), seed=i if seed is None else seed, params=params)


def alone(engine: TransformersEngine, reqs: list[ChatRequest]) -> list[str]:
    return [engine.generate([r])[0].text for r in reqs]


# ------------------------------------------------------------------ tiny model


def test_tiny_model_is_a_pure_function_of_the_seed(tiny_path: Path, tmp_path: Path) -> None:
    again = ensure_tiny_model(0, tmp_path / "a")
    other = ensure_tiny_model(1, tmp_path / "b")
    weights = (tiny_path / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == weights
    assert (other / "model.safetensors").read_bytes() != weights
    # A second call reuses the directory instead of rebuilding it.
    before = (again / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(0, tmp_path / "a") == again
    assert (again / "model.safetensors").stat().st_mtime_ns == before
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]


def test_tiny_model_loads_like_any_transformers_model(tiny_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    tok = AutoTokenizer.from_pretrained(tiny_path)
    assert type(model).__name__ == "LlamaForCausalLM"
    text = tok.apply_chat_template(chat(1), add_generation_prompt=True, tokenize=False)
    assert text.startswith("<s>") and text.endswith("<|assistant|>\n")
    # Byte-level BPE: any text round-trips, common words are one token, prompts are short.
    for text in ("héllo wörld ✓", "Original post by OP: Should cities ban cars?"):
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    prompt = "You are taking part in an online discussion forum."
    assert len(tok(prompt, add_special_tokens=False)["input_ids"]) < len(prompt) / 2.5


def test_tiny_replies_are_printable_and_mostly_nonempty(engine: TransformersEngine) -> None:
    out = engine.generate(
        [request(i, SamplingParams(max_new_tokens=16, temperature=1.0)) for i in range(24)]
    )
    assert sum(bool(c.text.strip()) for c in out) >= 20
    assert all(ch.isprintable() for c in out for ch in c.text)


# ------------------------------------------------------------------ generation


def test_greedy_batched_equals_each_request_alone(engine: TransformersEngine) -> None:
    reqs = [request(i, GREEDY) for i in range(10)]
    batched = engine.generate(reqs)
    assert [c.id for c in batched] == [r.id for r in reqs]
    assert [c.text for c in batched] == alone(engine, reqs)


def test_right_padded_prefill_matches_plain_generate(tiny_path: Path) -> None:
    fast = cpu_engine(tiny_path)
    plain = cpu_engine(tiny_path)
    plain._prefill.fast = False
    reqs = [request(i, GREEDY) for i in range(8)] + [request(i + 8) for i in range(8)]
    assert [c.text for c in fast.generate(reqs)] == [c.text for c in plain.generate(reqs)]


def test_seeded_sampling_ignores_batch_neighbours(
    engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = ChatRequest("target", chat(3), seed=1234, params=SAMPLED)
    solo = engine.generate([target])[0].text
    assert solo == engine.generate([target])[0].text
    companions = [request(i) for i in range(12)]
    for batch in ([target, *companions[:1]], [*companions[:5], target], [*companions, target]):
        got = {c.id: c.text for c in engine.generate(batch)}
        assert got[target.id] == solo
    # Other batch cuts (smaller batches) give the same texts too.
    together = [c.text for c in engine.generate(companions)]
    monkeypatch.setattr(engine._batcher, "max_batch_size", 3)
    assert [c.text for c in engine.generate(companions)] == together


def test_different_seeds_give_different_texts(engine: TransformersEngine) -> None:
    texts = [c.text for c in engine.generate([request(5, seed=s) for s in range(8)])]
    assert len(set(texts)) >= 7


def test_mixed_temperatures_share_a_batch_without_interference(engine: TransformersEngine) -> None:
    reqs = [request(i, GREEDY if i % 2 else SAMPLED) for i in range(8)]
    assert [c.text for c in engine.generate(reqs)] == alone(engine, reqs)


def test_repetition_penalty_applies_per_row(engine: TransformersEngine) -> None:
    penalised = SamplingParams(max_new_tokens=24, repetition_penalty=1.5)
    reqs = [request(i, penalised) for i in range(6)]
    texts = [c.text for c in engine.generate(reqs)]
    assert texts == alone(engine, reqs)  # left padding never counts as repeated tokens
    plain = [c.text for c in engine.generate([request(i, GREEDY) for i in range(6)])]
    assert texts != plain


def test_length_finish_and_token_counts(engine: TransformersEngine) -> None:
    params = SamplingParams(max_new_tokens=12, temperature=0.8)
    out = engine.generate([request(i, params) for i in range(16)])
    for i, c in enumerate(out):
        assert c.prompt_tokens == engine.count_tokens(chat(i))
        if c.finish_reason == "length":
            assert c.completion_tokens == 12 and c.text
        else:
            assert c.finish_reason == "eos"
            assert 1 <= c.completion_tokens <= 12
    assert any(c.finish_reason == "length" for c in out)


def test_stop_string_truncates_and_reports_stop(engine: TransformersEngine) -> None:
    free = engine.generate([request(i, GREEDY) for i in range(4)])
    stops = []
    for c in free:
        assert c.finish_reason == "length"
        stops.append(c.text[6:8])  # a stop string that the greedy reply is known to contain
    reqs = [
        request(i, SamplingParams(max_new_tokens=24, stop=(stops[i], "@@never@@")))
        for i in range(4)
    ]
    for c, before, stop in zip(engine.generate(reqs), free, stops, strict=True):
        cut = before.text.index(stop)
        assert c.finish_reason == "stop"
        assert c.text == before.text[:cut]
        assert 1 <= c.completion_tokens <= before.completion_tokens


def test_too_long_prompt_errors_alone(engine: TransformersEngine) -> None:
    huge = ChatRequest("huge", chat(1, words=2000), seed=0, params=SAMPLED)
    reqs = [request(0), huge, request(2)]
    out = engine.generate(reqs)
    assert out[1].finish_reason == "error" and out[1].text == ""
    n = engine.count_tokens(huge.messages)
    assert f"prompt of {n} tokens exceeds the model context of 4096" in out[1].error
    assert [out[0].text, out[2].text] == alone(engine, [reqs[0], reqs[2]])
    assert out[0].error is None and out[0].finish_reason in ("length", "eos")


def test_invalid_params_error_only_that_request(engine: TransformersEngine) -> None:
    bad = request(1, SamplingParams(top_p=0.0))
    out = engine.generate([request(0), bad])
    assert out[1].finish_reason == "error" and "top_p" in out[1].error
    assert out[0].error is None


def test_out_of_memory_halves_the_batch(
    tiny_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    eng = cpu_engine(tiny_path)
    reqs = [request(i) for i in range(11)]
    expected = [c.text for c in eng.generate(reqs)]
    real = eng._generator.generate_batch
    sizes: list[int] = []

    def flaky(items, *args):
        sizes.append(len(items))
        if len(items) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(items, *args)

    monkeypatch.setattr(eng._generator, "generate_batch", flaky)
    with caplog.at_level("WARNING"):
        assert [c.text for c in eng.generate(reqs)] == expected
    assert sizes == [11, 5, 2, 3, 6, 3, 3]  # halves, depth first, in request-length order
    assert "out of memory" in caplog.text
    # The learned token budget keeps later calls from retrying the batch that failed.
    sizes.clear()
    assert [c.text for c in eng.generate(reqs)] == expected
    assert max(sizes) < 11


def test_failure_of_a_single_request_spares_the_others(
    tiny_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = cpu_engine(tiny_path)
    reqs = [request(i) for i in range(6)]
    expected = [c.text for c in eng.generate(reqs)]
    real = eng._generator.generate_batch

    def picky(items, *args):
        if any(it.request.id == "r4" for it in items):
            raise RuntimeError("CUDA error: out of memory")
        return real(items, *args)

    monkeypatch.setattr(eng._generator, "generate_batch", picky)
    out = eng.generate(reqs)
    assert out[4].finish_reason == "error" and "out of memory" in out[4].error
    assert [c.text for i, c in enumerate(out) if i != 4] == expected[:4] + expected[5:]


def test_prefix_reuse_across_turns_keeps_texts(tiny_path: Path) -> None:
    cached = cpu_engine(tiny_path)
    fresh = cpu_engine(tiny_path, prefix_cache_mb=0)
    histories: list[list[str]] = [[] for _ in range(6)]
    before: dict[str, int] = {}
    for turn in range(3):
        before = cached.prefix_stats()
        reqs = []
        for d, history in enumerate(histories):
            transcript = "\n".join(history)
            messages = [
                {"role": "system", "content": "A forum thread about tea. " * 3},
                {"role": "user", "content": f"Thread {d}.\n{transcript}\nNow reply as user{turn}."},
            ]
            params = GREEDY if d % 2 else SAMPLED
            reqs.append(ChatRequest(f"d{d}t{turn}", messages, seed=100 * d + turn, params=params))
        got = [c.text for c in cached.generate(reqs)]
        assert got == [fresh.generate([r])[0].text for r in reqs]
        for history, text in zip(histories, got, strict=True):
            history.append(text)
    stats = cached.prefix_stats()
    # By the third turn most of each prompt is the stored thread so far.
    hits, misses = (stats[k] - before[k] for k in ("hit_tokens", "miss_tokens"))
    assert hits > misses > 0 and stats["entries"] > 0
    assert fresh.prefix_stats()["hit_tokens"] == 0


def test_prefill_in_row_groups_keeps_texts_and_its_fast_path(tiny_path: Path) -> None:
    # Tight CPU limits split every prefill into groups of rows: texts must not change, and the
    # engine must not have fallen back to generate's own (slower, bigger) prefill.
    small = cpu_engine(tiny_path)
    small.lm.prefill_limits = (64, 4096)
    reqs = [request(i, GREEDY) for i in range(8)]
    for _ in range(2):  # the second round reuses stored prefixes (masked prefill, grouped)
        assert [c.text for c in small.generate(reqs)] == alone(small, reqs)
    assert small._prefill.fast
    assert small.prefix_stats()["hit_tokens"] > 0


def test_score_reuses_shared_prompts_without_changing_probabilities(tiny_path: Path) -> None:
    # Annotation-like prompts: pairs differing only in their last line (two annotators of one
    # comment). The second of each pair runs on the first's stored prefix.
    reqs = []
    for i in range(6):
        body = chat(i, words=12 + i)[1]["content"]
        for who in ("Ann", "Bob"):
            messages = [
                {"role": "system", "content": "Label the comment. " * 4},
                {"role": "user", "content": f"{body}\nYou are the annotator {who}."},
            ]
            reqs.append(ScoreRequest(f"s{i}{who}", messages, ("1", "2", "3")))
    cached = cpu_engine(tiny_path)
    fresh = cpu_engine(tiny_path, prefix_cache_mb=0)
    got, want = cached.score(reqs), fresh.score(reqs)
    for g, w in zip(got, want, strict=True):
        assert g.label == w.label
        assert torch.allclose(torch.tensor(g.probs), torch.tensor(w.probs), atol=1e-5)
    assert cached.prefix_stats()["hit_tokens"] > 0 and cached._prefill.fast


def test_default_prefix_store_is_sized_to_the_model(tiny_path: Path) -> None:
    # 64 prompts of 1,024 tokens of the tiny model: a few MiB, not a fixed 512 MiB.
    eng = cpu_engine(tiny_path)
    budget = eng._prefill.store.budget_bytes
    assert budget == AUTO_FLOOR_TOKENS * eng.lm.kv_bytes_per_token < 64 * 2**20


def test_default_prefix_store_grows_to_hold_every_prompt_of_a_call(tiny_path: Path) -> None:
    # The next call's prompts extend this call's. A store that cannot hold all of them evicts
    # exactly the prefixes the next call needs (here one with room for two prompts, as a call
    # of thousands of prompts finds a fixed budget): an automatic store grows to fit.
    eng = cpu_engine(tiny_path)
    store, kv = eng._prefill.store, eng.lm.kv_bytes_per_token
    first = [ChatRequest(f"a{i}", chat(i, words=30), seed=i, params=GREEDY) for i in range(12)]
    lengths = [len(eng.lm.encode(r.messages)) for r in first]
    store.budget_bytes = 2 * max(lengths) * kv
    replies = eng.generate(first)
    assert store.budget_bytes >= sum(lengths) * kv
    hits = store.hit_tokens
    second = [
        ChatRequest(
            f"b{i}",
            [
                *r.messages,
                {"role": "assistant", "content": c.text},
                {"role": "user", "content": "More?"},
            ],
            seed=i,
            params=GREEDY,
        )
        for i, (r, c) in enumerate(zip(first, replies, strict=True))
    ]
    eng.generate(second)
    assert store.hit_tokens - hits >= 0.9 * sum(n - 1 for n in lengths)
    # A configured budget is the user's: it stays as set.
    fixed = cpu_engine(tiny_path, prefix_cache_mb=0.01)
    fixed.generate(first)
    assert fixed._prefill.store.budget_bytes == int(0.01 * 2**20)


def test_a_call_of_many_batches_reuses_every_prompts_prefix(tiny_path: Path) -> None:
    # A call's first batches add their prompts to the store and so evict entries; without
    # looking every prompt up before the call starts, those were the very prefixes its last
    # batches were to reuse (a fifth of them in a 1,280-prompt structure cycle).
    eng = cpu_engine(tiny_path, max_batch_size=4)
    first = [ChatRequest(f"a{i}", chat(i, words=30), seed=i, params=GREEDY) for i in range(12)]
    replies = eng.generate(first)
    second = [
        ChatRequest(
            f"b{i}",
            [*r.messages[:-1], {"role": "user", "content": r.messages[-1]["content"] + " More?"}],
            seed=i,
            params=GREEDY,
        )
        for i, r in enumerate(first)
    ]
    eng._prefill.store.budget_bytes = 0  # as tight as it gets: sized by this call alone
    hits = eng._prefill.store.hit_tokens
    got = eng.generate(second)

    def shared(a: list[int], b: list[int]) -> int:
        return next(
            (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
        )

    ids = [
        (eng.lm.encode(a.messages), eng.lm.encode(b.messages))
        for a, b in zip(first, second, strict=True)
    ]
    assert eng._prefill.store.hit_tokens - hits == sum(shared(a[:-1], b[:-1]) for a, b in ids)
    assert [c.text for c in got] == alone(cpu_engine(tiny_path, prefix_cache_mb=0), second)
    assert len(replies) == 12


def test_a_prompt_no_later_request_extends_is_not_stored(tiny_path: Path) -> None:
    # keep_prefix=False (the last cycle of a structure) spares the store, not the text.
    eng = cpu_engine(tiny_path, max_batch_size=2)
    reqs = [
        ChatRequest(f"k{i}", chat(i, words=30), seed=i, params=GREEDY, keep_prefix=i % 2 == 0)
        for i in range(6)
    ]
    got = eng.generate(reqs)
    assert eng.prefix_stats()["entries"] == 3
    assert [c.text for c in got] == alone(cpu_engine(tiny_path, prefix_cache_mb=0), reqs)


def test_generation_cache_has_room_and_decodes_in_place(engine: TransformersEngine) -> None:
    lm = engine.lm
    ids = torch.tensor([lm.encode(chat(3))])
    with torch.inference_mode():
        plain = lm.model(input_ids=ids, use_cache=True)
        roomy = lm.model(input_ids=ids, use_cache=True)
        cache_a, cache_b = plain.cache, with_room(roomy.cache, 4)
        start = cache_b.layers[0].keys.data_ptr()
        token = plain.logits[:, -1:].argmax(-1)
        for _ in range(5):  # four steps in the room, then one past it (grows as usual)
            a = lm.model(input_ids=token, cache=cache_a, use_cache=True).logits
            b = lm.model(input_ids=token, cache=cache_b, use_cache=True).logits
            assert torch.equal(a, b)
            if cache_b.get_seq_length() <= ids.shape[1] + 4:
                assert cache_b.layers[0].keys.data_ptr() == start  # written in place
            token = a[:, -1:].argmax(-1)
    assert cache_b.get_seq_length() == cache_a.get_seq_length() == ids.shape[1] + 5


def test_cpu_batches_are_bounded_by_the_machines_memory(tiny_path: Path) -> None:
    # On a CPU, running out of memory kills the process (no error to halve the batch on), so
    # the default batch is bounded by its KV cache: a quarter of the machine's memory.
    eng = cpu_engine(tiny_path)
    assert eng._batcher.max_batch_tokens == cpu_batch_tokens(eng.lm.kv_bytes_per_token)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    kv_30_layers = 30 * 3 * 64 * 2 * 4  # a SmolLM2-135M token in float32
    assert cpu_batch_tokens(kv_30_layers) * kv_30_layers <= 0.25 * memory
    assert cpu_engine(tiny_path, max_batch_tokens=500)._batcher.max_batch_tokens == 500


def test_prompts_tokenised_together_match_one_at_a_time(engine: TransformersEngine) -> None:
    chats = [chat(i, words=5 + 7 * i) for i in range(5)]
    want = [engine.lm.encode(c) for c in chats]
    assert engine.lm.encode_many(chats) == want
    # A tokenizer whose Python side changes the backend's ids (as a prefix space would) is
    # caught by the probe: the plain call is used.
    tok = engine.lm.tokenizer

    class Shifted:
        backend_tokenizer = tok.backend_tokenizer
        apply_chat_template = tok.apply_chat_template

        def __call__(self, texts, add_special_tokens=False):
            ids = tok(texts, add_special_tokens=add_special_tokens)["input_ids"]
            single = isinstance(texts, str)
            rows = [ids] if single else ids
            out = [[1, *r] for r in rows]
            return {"input_ids": out[0] if single else out}

    assert encode_chats(Shifted(), chats) == [[1, *w] for w in want]


def test_prefix_store_finds_longest_prefix_and_respects_budget() -> None:
    def kv(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.arange(n).float().view(1, n, 1), -torch.arange(n).float().view(1, n, 1))]

    store = PrefixStore(budget_bytes=8 * 200, min_tokens=16)  # room for 200 tokens of kv(n)
    a = list(range(100))
    store.add(a, kv(100))
    n, got = store.lookup(a[:60] + [999] * 10)
    assert n == 60 and got[0][0].shape == (1, 60, 1) and got[0][0][0, -1, 0] == 59
    assert store.lookup([5] + a[1:])[0] == 0  # differs at the first token
    assert store.lookup(a[:10])[0] == 0  # too short to be worth reusing
    store.add(a + [7] * 20, kv(120))  # extends a: replaces it
    assert len(store) == 1 and store.lookup(a + [7] * 20)[0] == 120
    store.add(list(range(500, 600)), kv(100))  # over budget: the older entry goes
    assert len(store) == 1 and store.lookup(a)[0] == 0 and store.nbytes <= 8 * 200


# ------------------------------------------------------------------ sampler


def test_gumbel_sampler_draws_from_the_softmax() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -30.0])
    rows = 6000
    sampler = SeededSampler(
        seeds=range(rows),
        temperature=[1.0] * rows,
        top_k=[0] * rows,
        top_p=[1.0] * rows,
        prompt_len=4,
        vocab_size=5,
        device=torch.device("cpu"),
    )
    picks = sampler(torch.zeros((rows, 4), dtype=torch.long), logits.repeat(rows, 1)).argmax(-1)
    freq = torch.bincount(picks, minlength=5).double() / rows
    assert torch.allclose(freq, logits.double().softmax(0), atol=0.025)
    # Top-k 2 and top-p 0.5 cut the tail per row.
    sampler = SeededSampler(
        seeds=range(rows),
        temperature=[1.0] * rows,
        top_k=[2] * (rows // 2) + [0] * (rows // 2),
        top_p=[1.0] * (rows // 2) + [0.5] * (rows // 2),
        prompt_len=4,
        vocab_size=5,
        device=torch.device("cpu"),
    )
    picks = sampler(torch.zeros((rows, 4), dtype=torch.long), logits.repeat(rows, 1)).argmax(-1)
    assert set(picks[: rows // 2].tolist()) == {0, 1}
    assert set(picks[rows // 2 :].tolist()) == {0}


# ------------------------------------------------------------------ scoring


def _manual_label_probs(tiny_path: Path, messages, labels) -> torch.Tensor:
    """Reference: full-vocabulary log-probs of each label sequence, softmaxed over labels."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    tok = AutoTokenizer.from_pretrained(tiny_path)
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    totals = []
    with torch.no_grad():
        for label in labels:
            ids = tok(label, add_special_tokens=False)["input_ids"]
            logp = model(torch.tensor([prompt + ids])).logits[0].log_softmax(-1)
            totals.append(sum(float(logp[len(prompt) - 1 + t, i]) for t, i in enumerate(ids)))
    return torch.tensor(totals).softmax(0)


def test_score_single_token_labels(engine: TransformersEngine, tiny_path: Path) -> None:
    labels = ("a", "b", "c")
    reqs = [ScoreRequest(f"s{i}", chat(i), labels) for i in range(5)]
    out = engine.score(reqs)
    for req, res in zip(reqs, out, strict=True):
        assert res.error is None and res.id == req.id
        assert sum(res.probs) == pytest.approx(1.0, abs=1e-6)
        assert res.label == labels[max(range(3), key=res.probs.__getitem__)]
        assert res.prompt_tokens == engine.count_tokens(req.messages)
    # First-token path: softmax over the labels' first-token logits, which for one-token labels
    # is the same as the sequence reference.
    ref = _manual_label_probs(tiny_path, chat(2), labels)
    assert torch.allclose(torch.tensor(out[2].probs), ref, atol=1e-5)


def test_score_multi_token_labels(engine: TransformersEngine, tiny_path: Path) -> None:
    labels = ("other", "others", "otherwise")  # shared first token: the sequence path
    reqs = [ScoreRequest(f"m{i}", chat(i), labels) for i in range(4)]
    out = engine.score(reqs)
    for res in out:
        assert sum(res.probs) == pytest.approx(1.0, abs=1e-6)
        assert res.label == labels[max(range(3), key=res.probs.__getitem__)]
    ref = _manual_label_probs(tiny_path, chat(3), labels)
    assert torch.allclose(torch.tensor(out[3].probs, dtype=torch.float32), ref, atol=1e-4)
    solo = engine.score([reqs[1]])[0]
    assert solo.probs == pytest.approx(out[1].probs, abs=1e-6)


def test_score_errors_per_request(engine: TransformersEngine) -> None:
    out = engine.score(
        [
            ScoreRequest("ok", chat(1), ("a", "b")),
            ScoreRequest("long", chat(1, words=2000), ("a", "b")),
        ]
    )
    assert out[0].error is None
    assert out[1].error and "exceeds the model context" in out[1].error and out[1].probs == ()


# ------------------------------------------------------------------ loading


def test_missing_chat_template_is_a_load_error(tiny_path: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare-model"
    shutil.copytree(tiny_path, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    cfg_path = bare / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(EngineLoadError, match="chat_template"):
        cpu_engine(bare)
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    eng = cpu_engine(bare, chat_template=template)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bare)
    expected = len(tok("abc", add_special_tokens=False)["input_ids"])
    assert eng.count_tokens([{"role": "user", "content": "abc"}]) == expected


def test_nonexistent_model_path_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(EngineLoadError, match="no-such-model"):
        TransformersEngine(EngineConfig(str(tmp_path / "no-such-model")))


def test_engine_info_has_no_local_paths(engine: TransformersEngine, tiny_path: Path) -> None:
    info = engine.engine_info()
    assert info["name"] == "tiny" and info["dtype"] == "float32" and info["device"] == "cpu"
    by_path = cpu_engine(tiny_path)
    assert by_path.engine_info()["name"] == tiny_path.name
    assert str(tiny_path.parent) not in json.dumps(by_path.engine_info())
    assert by_path.max_context == 4096


def test_load_engine_tiny_from_config(tiny_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTH_DISCO_CACHE", str(tiny_path.parent))
    model_config = {  # a recipe's model config: load and decoding settings together
        "engine": "tiny",
        "model": "tiny",
        "revision": None,
        "dtype": "auto",
        "device": None,
        "device_map": None,
        "trust_remote_code": False,
        "max_new_tokens": 20,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "stop": ["\n\n"],
        "chat_template": None,
        "max_batch_size": 8,
        "max_batch_tokens": None,
    }
    config = EngineConfig.from_mapping(model_config)
    assert config == EngineConfig("tiny", engine="tiny", max_batch_size=8)
    eng = load_engine(config)
    assert eng.model_id == "tiny" and eng.config.max_batch_size == 8
    assert eng.engine_info()["dtype"] == "float32"
    # Decoding settings belong to the model config and travel with each request.
    assert not hasattr(eng, "default_params")
    params = SamplingParams(20, 0.7, 0.9, 40, 1.1, ("\n\n",))
    assert sampling_params_from(model_config) == params
    assert sampling_params_from(SimpleNamespace(**model_config)) == params
    assert sampling_params_from({"temperature": None}) == SamplingParams()
    assert tiny_seed("tiny:3") == 3 and tiny_seed("tiny") == 0
    with pytest.raises(EngineLoadError, match="unknown engine 'nonesuch'"):
        load_engine(EngineConfig("x", engine="nonesuch"))
    eng.close()
    with pytest.raises(RuntimeError):
        eng.generate([request(0)])


def test_registry_entries_and_load_fields() -> None:
    assert ENGINE_NAMES[:3] == ("transformers", "tiny", "openai")
    assert "vllm" in ENGINE_NAMES
    assert {f.name for f in dataclasses.fields(EngineConfig)} == LOAD_FIELDS
    for name, entry in ENGINES.items():
        assert {"engine", "model"} <= entry.accepts <= LOAD_FIELDS, name
        assert entry.needs <= entry.accepts and entry.reproducibility, name
        if not entry.missing():
            assert callable(importlib.import_module(entry.module).load), name
    # The tiny engine reads no dtype, revision, ...: setting one is ignored, with a warning.
    tiny = ENGINES["tiny"]
    assert tiny.ignored(EngineConfig("tiny", engine="tiny", max_batch_size=8)) == []
    assert tiny.ignored(EngineConfig("tiny", engine="tiny", dtype="bfloat16")) == ["dtype"]
    assert ENGINES["transformers"].ignored(EngineConfig("m", dtype="bfloat16")) == []


def test_engine_capabilities_are_declared() -> None:
    assert TransformersEngine.capabilities.score_threads
    assert not capabilities_of(object()).score_threads  # declares nothing: can do nothing more


# ------------------------------------------------------------------ errors for users


def test_engine_load_errors_are_user_errors() -> None:
    assert issubclass(EngineLoadError, SynthDiscoError) and EngineLoadError.exit_code == 2
    with pytest.raises(EngineLoadError, match="'tiny' or 'tiny:<seed>', got 'SmolLM2'"):
        tiny_seed("SmolLM2")


def test_cli_reports_a_model_the_tiny_engine_cannot_load_without_traceback(
    tmp_path: Path,
) -> None:
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "synth_disco", "build", str(recipe), "--out", str(tmp_path)]
        + ["--set", "models.tiny.model=SmolLM2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert "tiny:<seed>" in out.stderr and "SmolLM2" in out.stderr


# ------------------------------------------------------------------ sharing and closing


@pytest.mark.parametrize("first", ["discussion", "annotation"])
def test_annotation_decodes_with_its_own_model_config_on_a_shared_engine(
    first: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two model configs that differ only in decoding share one engine; the annotation
    # requests must carry the annotation model's settings whichever config loaded it.
    from synth_disco.pipeline.build import build

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"
    overrides = [
        "models.ann={engine: tiny, model: tiny, max_new_tokens: 12, temperature: 0.3}",
        "annotation.model=ann",
        "annotation.method=generate",
        "replicates=1",
    ]
    if first == "annotation":  # discussions done beforehand: the annotate stage loads first
        build(recipe, overrides, out=tmp_path, stage="discuss")
    seen: dict[int, set[SamplingParams]] = {}
    real = TransformersEngine.generate

    def recording(self, requests):
        seen.setdefault(id(self), set()).update(r.params for r in requests)
        return real(self, requests)

    monkeypatch.setattr(TransformersEngine, "generate", recording)
    build(recipe, overrides, out=tmp_path)
    assert len(seen) == 1  # one engine served both configs
    [params] = seen.values()
    # The annotation model's settings, fitted to a one-line answer (at most 24 tokens, "\n"
    # stops); the discussions use the smoke recipe's model (24 tokens at temperature 0.9).
    annotation = SamplingParams(max_new_tokens=12, temperature=0.3, stop=("\n",))
    # (with the stop strings a turn ends at: the turn template's comment headers, issue 15)
    from synth_disco.discussion.prompts import builtin_template
    from synth_disco.discussion.quality import header_stop_strings

    stops = tuple(header_stop_strings(builtin_template("turn.j2")))
    discussion = SamplingParams(max_new_tokens=24, temperature=0.9, stop=stops)
    expected = {annotation, discussion} if first == "discussion" else {annotation}
    assert params == expected


def test_closing_one_engine_keeps_another_engines_heap_frozen(tiny_path: Path) -> None:
    # gc's frozen generation is one per process: run in a fresh one, so that the engines of
    # the other tests do not hold it.
    script = f"""
import gc
from synth_disco.engines.base import EngineConfig
from synth_disco.engines.hf import TransformersEngine

config = EngineConfig({str(tiny_path)!r}, dtype="float32", device="cpu")
a = TransformersEngine(config)
# The model and library objects sit outside the collector's generations while it runs...
assert gc.get_freeze_count() > 1000, gc.get_freeze_count()
b = TransformersEngine(config)
a.close()
# ...closing one engine leaves the other's frozen...
assert gc.get_freeze_count() > 1000, gc.get_freeze_count()
b.close()
# ...and they go back to the collector when the last engine is closed.
assert gc.get_freeze_count() == 0, gc.get_freeze_count()
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
