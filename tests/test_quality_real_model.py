"""Quality flags with a real instruct model: the built-in SmolLM2-135M (GGUF, from PyPI).

Slow on a CPU (minutes), so it runs when asked: ``SYNTH_DISCO_REAL_MODEL=1 pytest
tests/test_quality_real_model.py`` (``.ci/run`` does). It is skipped when the model cannot be fetched.

The quickstart recipe runs on ``model: smollm2`` (the transformers engine loads the GGUF).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from datasets import load_dataset

from synth_disco.engines.builtin import BuiltinModelError, ensure_smollm2
from synth_disco.pipeline.build import build

pytestmark = pytest.mark.skipif(
    os.environ.get("SYNTH_DISCO_REAL_MODEL") != "1",
    reason="minutes on a CPU: set SYNTH_DISCO_REAL_MODEL=1 to run",
)

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
# The quickstart recipe, smaller: 4 discussions (2 x 2 cells) of 4 turns, no annotation.
SETS = [
    "replicates=1",
    "annotation=null",
    "discussion.turns=4",
    "models.smol.max_new_tokens=96",
    "models.smol.model=smollm2",
    "models.smol.dtype=float32",
]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    try:
        ensure_smollm2()
    except BuiltinModelError as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("real") / "run"
    build(QUICKSTART, [*SETS, "quality.regenerate=2"], out=out)
    return out


def test_flags_are_raised_on_real_text_and_stop_strings_end_turns(regenerated):
    comments = load_dataset(str(regenerated / "dataset"), "comments", split="train").to_list()
    generated = [c for c in comments if c["role"] in ("user", "moderator")]
    assert len(generated) >= 16
    # A small model runs to the token limit and echoes its prompt (issue 15): flagged.
    raised = {f for c in generated for f in c["flags"]}
    assert raised & {"truncated", "echoed_scaffolding", "speaker_prefix", "repetition"}
    # One comment is one comment: no published text goes on into another speaker's turn.
    header = re.compile(r"\n\s*\S+ (?:\(moderator\) )?wrote:\n")
    assert not any(header.search(c["text"]) for c in generated)


def test_regeneration_lowers_the_flag_rate_and_the_card_shows_both(regenerated):
    manifest = json.loads((regenerated / "dataset/synth_disco/manifest.json").read_text())
    q = manifest["stats"]["quality"]
    assert q["regenerated_replies"] > 0
    assert q["published"]["any"] < q["first_attempt"]["any"]
    comments = load_dataset(str(regenerated / "dataset"), "comments", split="train").to_list()
    events = load_dataset(str(regenerated / "dataset"), "events", split="train").to_list()
    assert sum(c["attempts"] - 1 for c in comments if c["attempts"]) >= q["regenerated_replies"]
    assert sum(e["kind"] == "regenerated" for e in events) == q["regenerated_replies"]
    card = (regenerated / "dataset" / "README.md").read_text(encoding="utf-8")
    assert "before regeneration -> as published" in card
