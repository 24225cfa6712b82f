"""How a recipe's model config reaches an engine: the engine name and its keys validated from
the registry (with file:line), the typed EngineConfig, GGUF sources, and the CPU dtype choice."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import pytest
import torch
import yaml

from synth_disco.engines import builtin
from synth_disco.engines.base import EngineConfig, EngineLoadError
from synth_disco.engines.hf import TransformersEngine
from synth_disco.engines.hf.dtype import checkpoint_dtype, choose_dtype, cpu_flags
from synth_disco.engines.openai import OpenAIConfig, OpenAIConfigError
from synth_disco.engines.registry import ENGINES, EngineEntry, load_engine
from synth_disco.engines.tiny import ensure_tiny_model
from synth_disco.errors import RecipeError
from synth_disco.recipe.load import load_recipe

# The module (the package's ``load`` is the registry's entry point, a function).
hf_load = importlib.import_module("synth_disco.engines.hf.load")

BASE = {
    "name": "engines",
    "personas": {"users": [{"id": "u1", "username": "ann"}, {"id": "u2", "username": "bo"}]},
    "posts": [{"id": "p1", "text": "Hello?"}],
    "discussion": {"participants": 2, "turns": 1},
}


def problems(tmp_path: Path, models: str) -> dict[str, tuple[int | None, str]]:
    """Validate a recipe whose ``models:`` block is ``models``: {key path: (line, message)}."""
    text = yaml.safe_dump(BASE, sort_keys=False) + "models:\n" + models
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    return {p.key_path: (p.line, p.message) for p in err.value.problems}


def valid(tmp_path: Path, models: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(BASE, sort_keys=False) + "models:\n" + models)
    return load_recipe(path).recipe


def line_of(tmp_path: Path, needle: str) -> int:
    lines = (tmp_path / "recipe.yaml").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


# ------------------------------------------------------------------ recipe validation


def test_keys_the_engine_does_not_read_are_errors_at_their_line(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "  local:\n"
        "    engine: tiny\n"
        "    base_url: http://127.0.0.1:8000\n"
        "    dtype: bfloat16\n"
        "  remote:\n"
        "    engine: openai\n"
        "    model: m\n"
        "    base_url: http://127.0.0.1:8000\n"
        "    gguf_file: model.gguf\n"
        "    max_batch_size: 8\n",
    )
    assert found["models.local.base_url"] == (
        line_of(tmp_path, "base_url: http://127.0.0.1:8000"),
        "the tiny engine does not read base_url (it is read by engine: openai)",
    )
    assert found["models.local.dtype"][1].startswith("the tiny engine does not read dtype")
    assert found["models.remote.gguf_file"] == (
        line_of(tmp_path, "gguf_file"),
        "the openai engine does not read gguf_file (it is read by engine: transformers)",
    )
    assert "max_batch_size" in found["models.remote.max_batch_size"][1]
    assert len(found) == 4


def test_engine_keys_accepted_and_defaults_harmless(tmp_path: Path) -> None:
    recipe = valid(
        tmp_path,
        "  remote:\n"
        "    engine: openai\n"
        "    model: org/m\n"
        "    base_url: [http://a:8000, 'http://b:8000/v1']\n"
        "    api_key_env: MY_KEY\n"
        "    max_in_flight: 128\n"
        "    max_retries: 2\n"
        "    dtype: auto\n"  # the default: harmless for an engine that does not read it
        "    temperature: 0.7\n"
        "  gguf:\n"
        "    model: models/smol.gguf\n"
        "    dtype: float32\n"
        "  hub_gguf:\n"
        "    model: org/repo\n"
        "    gguf_file: model-q4.gguf\n",
    )
    config = EngineConfig.from_mapping(recipe.models["remote"].model_dump())
    assert config.base_url == ("http://a:8000", "http://b:8000/v1")
    assert config.max_in_flight == 128 and config.timeout_s is None
    settings = OpenAIConfig.from_engine_config(config)
    assert settings.urls() == ["http://a:8000", "http://b:8000"]
    assert settings.max_retries == 2 and settings.timeout_s == 600.0  # None: the default
    assert settings.api_key_env == "MY_KEY" and settings.model == "org/m"
    assert EngineConfig.from_mapping(recipe.models["hub_gguf"].model_dump()).gguf_file == (
        "model-q4.gguf"
    )
    # configs that differ only in decoding share an engine; base_url is a load setting
    assert EngineConfig(model="m", base_url="http://a:1").base_url == ("http://a:1",)


def test_unknown_engine_suggests_the_nearest(tmp_path: Path) -> None:
    found = problems(tmp_path, "  m: {engine: opena, model: x}\n")
    line, message = found["models.m.engine"]
    assert line == line_of(tmp_path, "engine: opena")
    assert "unknown engine 'opena' (did you mean 'openai'?)" in message
    assert "transformers, tiny, openai" in message


def test_openai_needs_a_server_and_a_model(tmp_path: Path) -> None:
    found = problems(tmp_path, "  m: {engine: openai}\n")
    assert found["models.m"][1] == "the openai engine needs base_url, model"


def test_api_key_and_credentials_stay_out_of_the_recipe(tmp_path: Path) -> None:
    key = "sk-proj-abcdef0123456789"
    found = problems(
        tmp_path,
        "  m:\n"
        "    engine: openai\n"
        "    model: x\n"
        "    base_url: http://user:pw@host:8000\n"
        f"    api_key_env: {key}\n",
    )
    assert "never the key itself" in found["models.m.api_key_env"][1]
    assert "credentials" in found["models.m.base_url"][1]
    assert all(key not in message for _, message in found.values())


def test_engine_whose_package_is_missing_says_how_to_install(tmp_path, monkeypatch) -> None:
    entry = EngineEntry(
        "synth_disco.engines.nonesuch",
        accepts=frozenset({"engine", "model"}),
        reproducibility="-",
        requires=("no_such_package_xyz",),
        install="pip install 'synth-disco[nonesuch]'",
    )
    monkeypatch.setitem(ENGINES, "nonesuch", entry)
    found = problems(tmp_path, "  m: {engine: nonesuch, model: x}\n")
    assert found["models.m.engine"][1] == (
        "the nonesuch engine needs no_such_package_xyz, which is not installed: "
        "pip install 'synth-disco[nonesuch]'"
    )
    with pytest.raises(EngineLoadError, match=r"synth-disco\[nonesuch\]"):
        load_engine(EngineConfig("x", engine="nonesuch"))


def test_openai_load_without_base_url_is_a_user_error() -> None:
    with pytest.raises(EngineLoadError, match="needs base_url"):
        load_engine(EngineConfig("m", engine="openai"))
    with pytest.raises(OpenAIConfigError, match="base_url"):
        OpenAIConfig.from_engine_config(EngineConfig("m", engine="openai"))


# ------------------------------------------------------------------ GGUF sources


def test_gguf_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "weights" / "smol.Q4.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    assert hf_load.model_source(EngineConfig(str(gguf))) == (str(gguf.parent), gguf.name)
    assert hf_load.model_source(EngineConfig(str(gguf.parent), gguf_file=gguf.name)) == (
        str(gguf.parent),
        gguf.name,
    )
    assert hf_load.model_source(EngineConfig("org/repo", gguf_file="m.gguf")) == (
        "org/repo",
        "m.gguf",
    )
    with pytest.raises(EngineLoadError, match="no such GGUF file"):
        hf_load.model_source(EngineConfig(str(tmp_path / "missing.gguf")))
    with pytest.raises(EngineLoadError, match="has no file 'other.gguf'"):
        hf_load.model_source(EngineConfig(str(gguf.parent), gguf_file="other.gguf"))
    with pytest.raises(EngineLoadError, match="give the file once"):
        hf_load.model_source(EngineConfig(str(gguf), gguf_file="smol.Q4.gguf"))
    # "smollm2" is the built-in GGUF, fetched (here: found) in the cache
    monkeypatch.setattr(builtin, "ensure_smollm2", lambda cache=None: gguf)
    assert hf_load.model_source(EngineConfig("smollm2")) == (str(gguf.parent), gguf.name)


# ------------------------------------------------------------------ dtype on a CPU


def test_auto_dtype_on_a_cpu_without_native_bf16_is_float32() -> None:
    avx2 = {"fpu", "sse4_2", "avx2", "fma"}
    sapphire = avx2 | {"avx512f", "avx512_bf16", "amx_bf16"}
    plain = choose_dtype("auto", "cpu", torch.bfloat16, avx2)
    assert plain.dtype == torch.float32 and "no native bfloat16" in plain.note
    assert "dtype: bfloat16" in plain.note  # how to keep bf16 anyway
    assert choose_dtype("auto", "cpu", torch.bfloat16, sapphire).dtype == "auto"
    assert choose_dtype("auto", "cpu", torch.float16, sapphire).dtype == torch.float32
    assert choose_dtype("auto", "cpu", torch.float16, {"avx512_fp16"}).dtype == "auto"
    assert choose_dtype("auto", "cuda", torch.bfloat16, avx2).dtype == "auto"  # GPUs: as saved
    assert choose_dtype("auto", "cpu", torch.float32, avx2) == choose_dtype("auto", "cpu", None, ())
    assert choose_dtype("bfloat16", "cpu", torch.bfloat16, avx2).dtype == torch.bfloat16
    assert choose_dtype("bf16", "cpu", None, avx2).note is None


def test_cpu_flags_from_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512_bf16"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert "bf16" in cpu_flags(arm)
    assert cpu_flags(tmp_path / "absent") == frozenset()  # unknown: auto prefers float32
    assert checkpoint_dtype(type("C", (), {"dtype": "bfloat16"})()) == torch.bfloat16
    assert checkpoint_dtype(type("C", (), {"torch_dtype": None})()) is None


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model saved in bfloat16, as many Hub checkpoints are."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = ensure_tiny_model(0, tmp_path_factory.mktemp("tiny"))
    out = tmp_path_factory.mktemp("bf16")
    AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


@pytest.mark.parametrize("flags", [frozenset({"avx2"}), frozenset({"avx2", "avx512_bf16"})])
def test_bf16_checkpoint_loads_in_the_dtype_the_cpu_runs_fast(
    bf16_checkpoint, flags, monkeypatch, caplog
) -> None:
    monkeypatch.setattr(hf_load, "cpu_flags", lambda: flags)
    caplog.set_level(logging.INFO, logger="synth_disco")
    engine = TransformersEngine(EngineConfig(str(bf16_checkpoint), device="cpu"))
    try:
        loaded = engine.engine_info()["dtype"]
    finally:
        engine.close()
    said = [r.getMessage() for r in caplog.records if "no native bfloat16" in r.getMessage()]
    if "avx512_bf16" in flags:
        assert loaded == "bfloat16" and said == []
    else:
        assert loaded == "float32" and len(said) == 1
