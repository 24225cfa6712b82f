"""One contract for every engine: what the discussion and annotation stages rely on.

Run against each engine available here: ``tiny`` (the transformers code path on the random tiny
model), ``openai`` (the loopback server of tests/openai_server.py), ``smollm2`` (the
transformers engine on the real SmolLM2-135M-Instruct GGUF: a real tokenizer, chat template and
end of sequence) and ``vllm`` where it is installed and registered. Every case is generic:
expected texts are taken from the engine itself (a stop string is cut from its own greedy
reply), so the same assertions hold for gibberish and for a real model.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

from openai_server import OpenAIServer
from synth_disco.engines.base import (
    ChatRequest,
    EngineConfig,
    SamplingParams,
    ScoreRequest,
    capabilities_of,
)
from synth_disco.engines.builtin import ensure_smollm2_checkpoint
from synth_disco.engines.registry import ENGINES, load_engine

FINISH = {"stop", "length", "eos"}
DIGITS = ("1", "2", "3", "4", "5")
PHRASES = ("very bad", "very good", "fine")  # multi-token labels, two sharing a first token


def _vllm() -> EngineConfig:
    if importlib.util.find_spec("vllm") is None or "vllm" not in ENGINES:
        pytest.skip("vllm is not installed here (pip install 'synth-disco[vllm]')")
    args = {"enforce_eager": True, "max_model_len": 2048, "dtype": "float32"}
    return EngineConfig(str(ensure_smollm2_checkpoint()), engine="vllm", engine_args=args)


@pytest.fixture(scope="module", params=["tiny", "openai", "smollm2", "vllm"])
def engine(request) -> Iterator[object]:
    """One loaded engine per kind, shared by the module's cases."""
    if request.param == "smollm2":
        yield request.getfixturevalue("smollm2_engine")  # the session's, from conftest.py
        return
    if request.param == "openai":
        with OpenAIServer() as server:
            config = EngineConfig("test-model", engine="openai", base_url=server.url)
            eng = load_engine(config)
            yield eng
            eng.close()
            assert not server.errors
        return
    config = EngineConfig("tiny", engine="tiny") if request.param == "tiny" else _vllm()
    eng = load_engine(config)
    yield eng
    eng.close()


def chat(i: int) -> list[dict[str, str]]:
    topics = ["parking in the town square", "a four-day school week", "rent control"]
    return [
        {"role": "system", "content": f"You are forum user number {i}. Write one comment."},
        {"role": "user", "content": f"What do you think about {topics[i % 3]}?"},
    ]


def ask(i: int, seed: int = 0, **params: object) -> ChatRequest:
    return ChatRequest(f"r{i}", chat(i), seed, SamplingParams(**{"max_new_tokens": 8, **params}))


def test_results_come_in_request_order_with_counts(engine) -> None:
    reqs = [ask(i, seed=i) for i in range(3)]
    out = engine.generate(reqs)
    assert [c.id for c in out] == ["r0", "r1", "r2"]
    for c in out:
        assert c.error is None and c.finish_reason in FINISH
        assert c.prompt_tokens > 0 and 0 <= c.completion_tokens <= 8
    assert engine.generate([]) == []


def test_token_limit_ends_with_length(engine) -> None:
    (c,) = engine.generate([ask(0, max_new_tokens=3)])
    assert c.completion_tokens <= 3
    assert c.finish_reason == "length" or (c.finish_reason == "eos" and c.completion_tokens < 3)


def test_stop_string_cuts_the_reply_and_reports_stop(engine) -> None:
    (full,) = engine.generate([ask(1, max_new_tokens=12)])
    words = full.text.split()
    if len(words) < 3:
        pytest.skip(f"the greedy reply is too short to cut: {full.text!r}")
    stop = words[len(words) // 2]
    (cut,) = engine.generate([ask(1, max_new_tokens=12, stop=(stop, "never-in-text"))])
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    assert stop not in cut.text


def test_bad_requests_get_error_results_and_the_others_go_on(engine) -> None:
    out = engine.generate([ask(0), ask(1, max_new_tokens=0), ask(2, top_p=0.0)])
    assert out[0].finish_reason in FINISH and out[0].error is None
    assert out[1].finish_reason == "error" and "max_new_tokens" in out[1].error
    assert out[2].finish_reason == "error" and "top_p" in out[2].error
    scores = engine.score([ScoreRequest("s0", chat(0), ()), ScoreRequest("s1", chat(1), DIGITS)])
    assert scores[0].error and scores[0].probs == ()
    assert scores[1].error is None


@pytest.mark.parametrize("labels", [DIGITS, PHRASES], ids=["one-token", "multi-token"])
def test_score_distributions_sum_to_one(engine, labels) -> None:
    reqs = [
        ScoreRequest(f"s{i}", [*chat(i), {"role": "user", "content": "Rate it."}], labels)
        for i in range(3)
    ]
    out = engine.score(reqs)
    assert [s.id for s in out] == ["s0", "s1", "s2"]
    for s in out:
        assert s.error is None, s.error
        assert len(s.probs) == len(labels) and all(p >= 0 for p in s.probs)
        assert sum(s.probs) == pytest.approx(1.0, abs=1e-5)
        assert s.label == labels[max(range(len(labels)), key=s.probs.__getitem__)]


def test_seeded_sampling_repeats_where_the_engine_promises_it(engine) -> None:
    if not capabilities_of(engine).seeded_sampling:
        pytest.skip("sampled text is up to the server: the engine promises no repeats")
    sampled = {"temperature": 1.0, "max_new_tokens": 8}
    (alone,) = engine.generate([ask(0, seed=7, **sampled)])
    crowd = engine.generate([ask(2, seed=1, **sampled), ask(0, seed=7, **sampled), ask(1)])
    assert crowd[1].text == alone.text  # the same seed, whatever shares the batch
    others = engine.generate([ask(0, seed=s, **sampled) for s in (8, 9)])
    assert any(o.text != alone.text for o in others)


def test_token_counts_and_context(engine) -> None:
    short = engine.count_tokens(chat(0))
    longer = engine.count_tokens([*chat(0), {"role": "user", "content": "and more " * 20}])
    assert 0 < short < longer
    assert engine.max_context >= 512
