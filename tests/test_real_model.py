"""Quality flags with a real instruct model: the built-in SmolLM2-135M (GGUF, from PyPI).

Slow on a CPU (minutes), so it runs when asked: ``SYNTH_DISCO_REAL_MODEL=1 pytest
tests/test_real_model.py``. It is skipped when the model cannot be fetched.

The transformers engine loads the GGUF file here through transformers' ``gguf_file=`` (the
engine's own GGUF support is another issue's): the test patches the two ``from_pretrained``
calls of ``engines/hf/load.py``, and the build runs with that engine through
``pipeline.build(engine_loader=...)``. Everything else is the real build.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path

import pytest
import transformers
from datasets import load_dataset

from synth_disco.engines.base import EngineConfig
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
]


class _GGUF:
    """``from_pretrained`` of a transformers auto class, reading the GGUF file."""

    def __init__(self, cls, gguf: Path):
        self.cls, self.gguf = cls, gguf

    def from_pretrained(self, source, **kwargs):
        kwargs.pop("revision", None)
        return self.cls.from_pretrained(source, gguf_file=self.gguf.name, **kwargs)


@pytest.fixture(scope="module")
def smollm2_loader(monkeypatch_module):
    try:
        gguf = ensure_smollm2()
    except BuiltinModelError as e:
        pytest.skip(str(e))
    # (the package's `load` attribute is its registry entry point, a function: go by module)
    load = importlib.import_module("synth_disco.engines.hf.load")
    monkeypatch_module.setattr(load, "AutoTokenizer", _GGUF(transformers.AutoTokenizer, gguf))
    monkeypatch_module.setattr(
        load, "AutoModelForCausalLM", _GGUF(transformers.AutoModelForCausalLM, gguf)
    )
    from synth_disco.engines.hf import TransformersEngine

    def loader(cfg):
        config = EngineConfig(str(gguf.parent), dtype="float32", device="cpu")
        return TransformersEngine(config, model_id="smollm2")

    return loader


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def regenerated(smollm2_loader, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real") / "run"
    build(QUICKSTART, [*SETS, "quality.regenerate=2"], out=out, engine_loader=smollm2_loader)
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
    assert q["published"]["any"] <= q["first_attempt"]["any"]
    comments = load_dataset(str(regenerated / "dataset"), "comments", split="train").to_list()
    events = load_dataset(str(regenerated / "dataset"), "events", split="train").to_list()
    assert sum(c["attempts"] - 1 for c in comments if c["attempts"]) >= q["regenerated_replies"]
    assert sum(e["kind"] == "regenerated" for e in events) == q["regenerated_replies"]
    card = (regenerated / "dataset" / "README.md").read_text(encoding="utf-8")
    assert "before regeneration -> as published" in card
