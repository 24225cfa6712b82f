"""The ``openai`` engine against a loopback OpenAI-compatible server (tests/openai_server.py):
concurrency, order, seeds, finish reasons, retries and their limits, unrecoverable answers,
replicas, the API key's secrecy, label scores and token counts."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Iterator

import pytest

from openai_server import (
    CHAT,
    COMPLETIONS,
    FAVOURED_LOGPROB,
    TOKENIZE,
    TOP_PROBS,
    Fault,
    OpenAIServer,
    char_logprob,
    dead_url,
    template,
)
from synth_disco.engines.base import ChatRequest, SamplingParams, ScoreRequest
from synth_disco.engines.openai import (
    REPRODUCIBILITY,
    ContextUnknownError,
    EndpointError,
    OpenAIConfig,
    OpenAIConfigError,
    OpenAIEngine,
    ScoreUnsupportedError,
)
from synth_disco.errors import SynthDiscoError

KEY = "sk-test-SECRET-0123456789"
FAST = {
    "backoff_initial_s": 0.01,
    "backoff_max_s": 0.05,
    "timeout_s": 5.0,
    "connect_timeout_s": 2.0,
    "max_retries": 3,
}


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv
        assert not srv.errors, "openai stub crashed:\n" + "\n".join(srv.errors)


@pytest.fixture
def engines() -> Iterator[list[OpenAIEngine]]:
    """Engines a test opens; all closed afterwards."""
    opened: list[OpenAIEngine] = []
    yield opened
    for engine in opened:
        engine.close()


def connect(engines: list[OpenAIEngine], url: str | list[str], **kw: object) -> OpenAIEngine:
    engine = OpenAIEngine(
        OpenAIConfig(base_url=url, model=kw.pop("model", "test-model"), **{**FAST, **kw})
    )
    engines.append(engine)
    return engine


def ask(i: int, text: str | None = None, **params: object) -> ChatRequest:
    return ChatRequest(
        f"r{i}",
        [
            {"role": "system", "content": "You are a forum user."},
            {"role": "user", "content": text if text is not None else f"question number {i}"},
        ],
        seed=1000 + i,
        params=SamplingParams(**{"max_new_tokens": 32, **params}),
    )


# ------------------------------------------------------------------ generation


def test_many_requests_in_flight_in_order_with_seeds(server, engines) -> None:
    server.delay_s = 0.05  # each answer takes a while, so concurrent requests overlap
    engine = connect(engines, server.url, max_in_flight=16)
    reqs = [ask(i) for i in range(24)]
    out = engine.generate(reqs)
    assert [c.id for c in out] == [r.id for r in reqs]
    for i, c in enumerate(out):
        assert c.text == f"seed{1000 + i} question number {i} end"
        assert c.finish_reason == "eos"
        assert c.completion_tokens == 5 and c.prompt_tokens == 8
    assert 1 < server.max_in_flight <= 16
    sent = server.hits_to(CHAT)
    assert sorted(h.body["seed"] for h in sent) == [1000 + i for i in range(24)]
    assert all(h.auth is None for h in sent)  # no api_key_env: no Authorization header


def test_request_body_and_finish_reasons(server, engines) -> None:
    engine = connect(engines, server.url)
    plain = ask(0, "a b c d e f", temperature=0.7, top_p=0.9)
    tuned = ask(1, "a b c", top_k=5, repetition_penalty=1.2, stop=("zzz",))
    short = ask(2, "a b c d e f", max_new_tokens=3)
    stopped = ask(3, "a b STOP c d", stop=("STOP", "never"))
    out = engine.generate([plain, tuned, short, stopped])
    assert [c.finish_reason for c in out] == ["eos", "eos", "length", "stop"]
    assert out[2].text == "seed1002 a b" and out[2].completion_tokens == 3
    assert out[3].text == "seed1003 a b "
    bodies = {h.body["seed"]: h.body for h in server.hits_to(CHAT)}
    first = bodies[1000]
    assert first["max_tokens"] == 32 and first["temperature"] == 0.7 and first["top_p"] == 0.9
    assert "top_k" not in first and "repetition_penalty" not in first and "stop" not in first
    assert bodies[1001]["top_k"] == 5 and bodies[1001]["repetition_penalty"] == 1.2
    assert bodies[1003]["stop"] == ["STOP", "never"]


def test_generate_repeatedly_and_inside_a_running_loop(server, engines) -> None:
    engine = connect(engines, server.url)
    first = engine.generate([ask(0)])
    assert engine.generate([ask(0)]) == first
    assert engine.generate([]) == []

    async def caller() -> list[str]:  # a caller that is itself a coroutine
        return [c.text for c in engine.generate([ask(1), ask(2)])]

    assert asyncio.run(caller()) == [
        "seed1001 question number 1 end",
        "seed1002 question number 2 end",
    ]
    assert engine.generate([ask(0)]) == first


def test_invalid_params_give_an_error_completion_without_a_request(server, engines) -> None:
    engine = connect(engines, server.url)
    (bad,) = engine.generate([ask(0, max_new_tokens=0)])
    assert bad.finish_reason == "error" and "max_new_tokens" in bad.error
    assert server.hits_to(CHAT) == []


def test_engine_info_and_context(server, engines) -> None:
    engine = connect(engines, server.url + "/v1/")  # a trailing /v1 is the same server
    assert engine.model_id == "test-model" and engine.revision is None
    assert engine.max_context == 4096
    info = engine.engine_info()
    assert info["engine"] == "openai" and info["name"] == "test-model"
    assert info["root"] == "org/test-model" and info["replicas"] == 1
    assert info["reproducibility"] == REPRODUCIBILITY
    assert server.url not in str(info)


def test_context_unknown_when_the_server_does_not_say(engines) -> None:
    with OpenAIServer(max_model_len=None) as srv:
        engine = connect(engines, srv.url)
        with pytest.raises(ContextUnknownError):
            _ = engine.max_context


def test_model_served_under_an_alias_is_found_by_its_root(server, engines) -> None:
    engine = connect(engines, server.url, model="org/test-model")
    assert engine.model_id == "test-model"
    engine.generate([ask(0)])
    assert server.hits_to(CHAT)[0].body["model"] == "test-model"


def test_closed_engine_refuses_work(server) -> None:
    engine = OpenAIEngine(OpenAIConfig(base_url=server.url, model="test-model", **FAST))
    engine.close()
    engine.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate([ask(0)])


# ------------------------------------------------------------------ retries


def test_retry_after_is_honoured(server, engines) -> None:
    engine = connect(engines, server.url)
    server.fail_next(CHAT, Fault(status=429, headers={"Retry-After": "0.2"}))
    (out,) = engine.generate([ask(0)])
    assert out.finish_reason == "eos"
    first, second = server.hits_to(CHAT)
    assert second.t - first.t >= 0.2
    assert engine.stats()["retries"] == 1


@pytest.mark.parametrize(
    "fault",
    [Fault(status=500), Fault(status=503), Fault(drop=True), Fault(sleep=1.0)],
    ids=["500", "503", "dropped-connection", "slow-reply"],
)
def test_transient_failure_then_success(server, engines, fault) -> None:
    engine = connect(engines, server.url, timeout_s=0.3)
    server.fail_next(CHAT, fault)
    (out,) = engine.generate([ask(0)])
    assert out.finish_reason == "eos" and out.text.startswith("seed1000")
    assert len(server.hits_to(CHAT)) == 2


def test_exhausted_retries_give_an_error_completion(server, engines) -> None:
    engine = connect(engines, server.url, max_retries=2)
    server.always = Fault(status=500, message="overloaded")
    out = engine.generate([ask(0), ask(1)])
    assert [c.finish_reason for c in out] == ["error", "error"]
    assert "500" in out[0].error and "overloaded" in out[0].error and "3 attempts" in out[0].error
    assert len(server.hits_to(CHAT)) == 6
    server.always = None
    assert engine.generate([ask(0)])[0].finish_reason == "eos"  # the engine still works


def test_backoff_grows_with_jitter_and_respects_retry_after(server, engines) -> None:
    engine = connect(engines, server.url, backoff_initial_s=1.0, backoff_max_s=4.0, jitter=0.5)
    delays = [engine.pool.delay(n, None) for n in (1, 2, 3, 4, 5)]
    for delay, base in zip(delays, (1.0, 2.0, 4.0, 4.0, 4.0), strict=True):
        assert base * 0.5 <= delay <= base
    assert engine.pool.delay(1, 7.0) >= 7.0
    again = connect(engines, server.url, backoff_initial_s=1.0, backoff_max_s=4.0, jitter=0.5)
    assert [again.pool.delay(n, None) for n in (1, 2, 3, 4, 5)] == delays  # private seeded jitter


# ------------------------------------------------------------------ unrecoverable answers


def test_unknown_model_at_load_lists_what_the_server_offers(server) -> None:
    with pytest.raises(EndpointError, match="offers: 'test-model'") as err:
        OpenAIEngine(OpenAIConfig(base_url=server.url, model="other-model", **FAST))
    assert server.url in str(err.value) and err.value.exit_code == 2
    # the failed load closed its client and stopped its thread
    assert not [t for t in threading.enumerate() if t.name.startswith("openai-engine-")]


def test_unreachable_server_at_load(engines) -> None:
    url = dead_url()
    with pytest.raises(EndpointError, match="cannot reach") as err:
        connect(engines, url, max_retries=1)
    assert url in str(err.value) and err.value.exit_code == 1


def test_model_gone_raises_at_once(server, engines) -> None:
    engine = connect(engines, server.url)
    server.model = "replaced-model"  # the server restarted with another model
    with pytest.raises(EndpointError) as err:
        engine.generate([ask(i) for i in range(4)])
    assert "404" in str(err.value) and server.url in str(err.value) and err.value.status == 404
    assert len(server.hits_to(CHAT)) <= 4  # no retries


def test_context_too_long_raises_at_once(engines) -> None:
    with OpenAIServer(max_model_len=20) as srv:
        engine = connect(engines, srv.url)
        with pytest.raises(EndpointError, match="maximum context length is 20") as err:
            engine.generate([ask(0, max_new_tokens=100)])
        assert "400" in str(err.value) and err.value.exit_code == 2
        assert len(srv.hits_to(CHAT)) == 1


def test_bad_config_is_a_user_error() -> None:
    with pytest.raises(OpenAIConfigError, match="max_in_flight") as err:
        OpenAIConfig(base_url="http://127.0.0.1:1", model="m", max_in_flight=0)
    assert err.value.exit_code == 2
    with pytest.raises(OpenAIConfigError, match="not an http"):
        OpenAIConfig(base_url=["localhost:8000"], model="m")
    with pytest.raises(OpenAIConfigError, match="not an environment variable name"):
        OpenAIConfig(base_url="http://127.0.0.1:1", model="m", api_key_env="sk-abc")


# ------------------------------------------------------------------ the API key


def test_key_is_sent_and_never_leaks(monkeypatch, caplog, engines) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx's included
    monkeypatch.setenv("TEST_OPENAI_KEY", KEY)
    with OpenAIServer(api_key=KEY) as srv:
        engine = connect(engines, srv.url, api_key_env="TEST_OPENAI_KEY", max_retries=1)
        assert engine.generate([ask(0)])[0].finish_reason == "eos"
        assert srv.hits_to(CHAT)[0].auth == f"Bearer {KEY}"
        seen = [repr(engine), repr(engine.config), str(engine.engine_info()), str(engine.stats())]
        srv.always = Fault(status=500, echo_auth=True)  # a server that echoes the header
        (failed,) = engine.generate([ask(1)])
        assert failed.finish_reason == "error" and "auth: Bearer ***" in failed.error
        seen.append(failed.error)
        srv.always = None
        srv.api_key = "another-key"  # the key is revoked; the 401 quotes the key it got
        with pytest.raises(EndpointError, match="401") as err:
            engine.generate([ask(2)])
        assert "TEST_OPENAI_KEY" in str(err.value)
        seen += [str(err.value), repr(err.value)]
        with pytest.raises(EndpointError, match="401") as err2:
            connect(engines, srv.url, api_key_env="TEST_OPENAI_KEY")
        seen.append(str(err2.value))
    seen += [r.getMessage() for r in caplog.records]
    assert all(KEY not in text for text in seen)


def test_missing_key_variable(monkeypatch, server) -> None:
    monkeypatch.delenv("TEST_OPENAI_KEY", raising=False)
    with pytest.raises(EndpointError, match="TEST_OPENAI_KEY.*not set"):
        OpenAIEngine(
            OpenAIConfig(base_url=server.url, model="test-model", api_key_env="TEST_OPENAI_KEY")
        )


# ------------------------------------------------------------------ replicas


def test_requests_are_spread_over_replicas(engines) -> None:
    with OpenAIServer(delay_s=0.02) as a, OpenAIServer(delay_s=0.02) as b:
        engine = connect(engines, [a.url, b.url])
        out = engine.generate([ask(i) for i in range(20)])
        assert all(c.finish_reason == "eos" for c in out)
        assert len(a.hits_to(CHAT)) >= 5 and len(b.hits_to(CHAT)) >= 5
        assert len(a.hits_to(CHAT)) + len(b.hits_to(CHAT)) == 20


def test_dead_replica_is_served_by_the_other(engines) -> None:
    dead = dead_url()
    with OpenAIServer() as live:
        # cooldown 0: the dead replica keeps being picked, and each refusal moves on at once
        engine = connect(engines, [dead, live.url], replica_cooldown_s=0.0, max_retries=1)
        retries = engine.stats()["retries"]  # loading retried the dead replica once
        out = engine.generate([ask(i) for i in range(10)])
        assert [c.finish_reason for c in out] == ["eos"] * 10
        assert len(live.hits_to(CHAT)) == 10
        stats = engine.stats()
        assert stats["refused"][0] >= 1 and stats["answered"][1] >= 10
        assert stats["retries"] == retries  # failing over costs no retry


def test_replica_failing_transiently_is_retried_on_the_other(engines) -> None:
    with OpenAIServer() as a, OpenAIServer() as b:
        engine = connect(engines, [a.url, b.url])
        a.fail_next(CHAT, Fault(status=503))
        b.fail_next(CHAT, Fault(status=503))
        (out,) = engine.generate([ask(0)])
        assert out.finish_reason == "eos"
        hits = sorted([(h.t, "a") for h in a.hits_to(CHAT)] + [(h.t, "b") for h in b.hits_to(CHAT)])
        order = [name for _, name in hits]
        assert order in (["a", "b", "a"], ["b", "a", "b"])  # each retry went to the other one


# ------------------------------------------------------------------ scoring


def score_req(i: int, labels: tuple[str, ...], favourite: str = "") -> ScoreRequest:
    text = f"rate comment {i}" + (f" [{favourite}]" if favourite else "")
    return ScoreRequest(f"s{i}", [{"role": "user", "content": text}], labels)


def test_first_token_scores_renormalise_over_the_labels(server, engines) -> None:
    engine = connect(engines, server.url)
    labels = ("1", "2", "3", "4", "5")
    out = engine.score([score_req(0, labels), score_req(1, labels, "3"), score_req(2, labels, "5")])
    assert [s.id for s in out] == ["s0", "s1", "s2"]
    assert [s.label for s in out] == ["2", "3", "5"]
    for s in out:
        assert s.error is None and math.isclose(sum(s.probs), 1.0)
    # s0: listed "2" .6, "1" .2, "3" .1 ("Hello" .05); 4 and 5 get the floor, ten times less
    # than the least likely listed token (.005), which is below the unlisted mass (.05).
    p = [0.2, 0.6, 0.1, 0.005, 0.005]
    assert out[0].probs == pytest.approx([x / sum(p) for x in p])
    body = server.hits_to(CHAT)[0].body
    assert body["max_tokens"] == 1 and body["temperature"] == 0.0
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert sum(TOP_PROBS) < 1


def test_label_absent_from_the_top_tokens_is_an_error_score(server, engines) -> None:
    engine = connect(engines, server.url)
    (s,) = engine.score([score_req(0, ("yes", "no"))])
    assert s.probs == () and "none of the labels" in s.error


def test_labels_sharing_a_first_token_use_prompt_logprobs(engines) -> None:
    labels = ("very bad", "very good", "fine")
    with OpenAIServer(favour="very good") as srv:
        engine = connect(engines, srv.url)
        (s,) = engine.score([score_req(0, labels)])
        assert s.error is None and s.label == "very good"
        sums = [
            sum(char_logprob(c) for c in "very bad"),
            FAVOURED_LOGPROB * len("very good"),
            sum(char_logprob(c) for c in "fine"),
        ]
        top = max(sums)
        expected = [math.exp(x - top) for x in sums]
        assert s.probs == pytest.approx([e / sum(expected) for e in expected])
        (cmpl,) = srv.hits_to(COMPLETIONS)
        prompt = [ord(c) for c in template(score_req(0, labels).messages)]
        assert cmpl.body["prompt"][1] == prompt + [ord(c) for c in "very good"]
        assert cmpl.body["echo"] is True and cmpl.body["prompt_logprobs"] == 1
        # every label was tokenised once, however many requests repeat it
        engine.score([score_req(i, labels) for i in range(1, 5)])
        label_calls = [h for h in srv.hits_to(TOKENIZE) if "prompt" in h.body]
        assert len(label_calls) == 3


def test_shared_first_tokens_without_prompt_logprobs_suggest_generate(engines) -> None:
    with OpenAIServer(prompt_logprobs=False) as srv:
        engine = connect(engines, srv.url)
        with pytest.raises(ScoreUnsupportedError, match="method: generate"):
            engine.score([score_req(0, ("very bad", "very good"))])


def test_server_without_tokenize_scores_by_first_token(engines) -> None:
    with OpenAIServer(tokenize=False) as srv:
        engine = connect(engines, srv.url)
        (s,) = engine.score([score_req(0, ("1", "2", "3"), "1")])
        assert s.label == "1" and math.isclose(sum(s.probs), 1.0)


def test_server_without_logprobs_suggests_method_generate(engines) -> None:
    with OpenAIServer(logprobs=False) as srv:
        engine = connect(engines, srv.url)
        with pytest.raises(ScoreUnsupportedError, match="method: generate") as err:
            engine.score([score_req(i, ("1", "2")) for i in range(3)])
        assert isinstance(err.value, SynthDiscoError) and srv.url in str(err.value)


def test_score_retries_exhausted_is_an_error_score(server, engines) -> None:
    engine = connect(engines, server.url, max_retries=1)
    engine.score([score_req(0, ("1", "2"))])  # labels tokenised while the server is well
    server.always = Fault(status=502)
    (s,) = engine.score([score_req(1, ("1", "2"))])
    assert s.probs == () and "502" in s.error


# ------------------------------------------------------------------ token counts


def test_count_tokens_uses_the_server_tokenizer(server, engines) -> None:
    engine = connect(engines, server.url)
    messages = [{"role": "user", "content": "hello there"}]
    assert engine.count_tokens(messages) == len(template(messages))
    assert server.hits_to(TOKENIZE)[0].body["messages"] == messages


def test_count_tokens_without_tokenize_is_a_byte_bound(engines) -> None:
    with OpenAIServer(tokenize=False) as srv:
        engine = connect(engines, srv.url)
        messages = [{"role": "system", "content": "é" * 3}, {"role": "user", "content": "hi"}]
        assert engine.count_tokens(messages) == (6 + 8) + (2 + 8) + 8
        engine.count_tokens(messages)
        assert len(srv.hits_to(TOKENIZE)) == 1  # asked once, then remembered
