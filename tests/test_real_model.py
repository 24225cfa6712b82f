"""A real model end to end: ``recipes/smollm2.yaml`` built with SmolLM2-135M-Instruct, loaded
from its GGUF file through the transformers engine (real tokenizer, chat template and end of
sequence). Mechanics only: counts, reply links, finish reasons, label distributions; the
text of a 135M model is not judged."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synth_disco.engines.base import ChatRequest, EngineConfig, SamplingParams
from synth_disco.engines.builtin import GGUF_FILE, ensure_smollm2, ensure_smollm2_checkpoint
from synth_disco.engines.hf import TransformersEngine
from synth_disco.pipeline.build import build
from synth_disco.recipe.load import load_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "smollm2.yaml"
SPECIAL = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


def rows(run: Path, config: str) -> list[dict]:
    files = sorted((run / "dataset" / "data" / config).glob("*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def test_smollm2_recipe_builds_end_to_end(tmp_path: Path) -> None:
    ensure_smollm2()  # fetched and checksum-checked once per machine, outside the repo
    recipe = load_recipe(RECIPE).recipe
    turns, limit = recipe.discussion.turns, recipe.models["smol"].max_new_tokens
    run = tmp_path / "run"
    build(RECIPE, out=run)

    discussions = rows(run, "discussions")
    assert len(discussions) == recipe.replicates
    assert {d["model"] for d in discussions} == {"smollm2"}
    comments = rows(run, "comments")
    for d in discussions:
        thread = sorted(
            (c for c in comments if c["discussion_id"] == d["discussion_id"]),
            key=lambda c: c["index"],
        )
        assert [c["index"] for c in thread] == list(range(len(thread)))
        ids = {c["comment_id"]: c["index"] for c in thread}
        for c in thread[1:]:  # every reply answers an earlier comment of its own thread
            assert ids[c["parent_id"]] < c["index"]
        generated = [c for c in thread if c["role"] == "user"]
        if d["status"] == "ok":
            assert len(generated) == turns
        assert d["completion_tokens"] == sum(c["completion_tokens"] for c in generated)
    generated = [c for c in comments if c["role"] == "user"]
    assert sum(d["status"] == "ok" for d in discussions) >= 1 and generated
    for c in generated:
        assert c["finish_reason"] in ("stop", "length", "eos")
        assert 0 < c["completion_tokens"] <= limit and c["prompt_tokens"] > 0
        assert c["text"].strip() and not any(s in c["raw_text"] for s in SPECIAL)
        if c["finish_reason"] == "length":
            assert c["completion_tokens"] == limit

    labels = rows(run, "annotations")
    assert len(labels) == len(generated)  # one annotator per generated comment
    scale = [str(x) for x in recipe.annotation.dimensions["toxicity"].scale]
    for a in labels:
        # A scale's label is typed (an int); label_text keeps it as the model was asked.
        assert a["status"] == "ok" and a["label_text"] in scale and a["method"] == "score"
        assert a["label"] == int(a["label_text"])
        assert [s["label"] for s in a["scores"]] == scale
        assert sum(s["prob"] for s in a["scores"]) == pytest.approx(1.0, abs=1e-6)
        best = max(a["scores"], key=lambda s: s["prob"])
        assert a["label_text"] == best["label"]

    (loaded,) = json.loads((run / "engines.json").read_text())
    assert loaded["gguf_file"] == GGUF_FILE and loaded["dtype"] == "float32"
    card = (run / "dataset" / "README.md").read_text()
    assert "| `smol` | `smollm2` |" in card and "auto (loaded float32)" in card


def test_safetensors_copy_generates_what_the_gguf_does(smollm2_engine) -> None:
    """The float32 directory made for vLLM (and fast loads) is the same model."""
    copy = TransformersEngine(
        EngineConfig(str(ensure_smollm2_checkpoint()), dtype="float32", device="cpu")
    )
    try:
        reqs = [
            ChatRequest(
                f"r{i}",
                [{"role": "user", "content": q}],
                seed=i,
                params=SamplingParams(max_new_tokens=8),
            )
            for i, q in enumerate(["Is a four-day school week good?", "Name a colour."])
        ]
        assert [c.text for c in copy.generate(reqs)] == [
            c.text for c in smollm2_engine.generate(reqs)
        ]
        # Tokenizer, ChatML template and end of sequence all came from the GGUF file.
        template = smollm2_engine.lm.tokenizer.chat_template
        assert "<|im_start|>" in template and copy.lm.tokenizer.chat_template == template
        assert smollm2_engine.lm.tokenizer.eos_token == "<|im_end|>"
        assert copy.lm.eos_ids == smollm2_engine.lm.eos_ids == [2]
    finally:
        copy.close()
