"""Can this model be loaded here? Cheap checks ``validate`` and ``build`` run before any work.

Loading a model takes seconds to minutes; finding out at that point that a path is mistyped
or that an offline machine never downloaded the model wastes a run's start. These checks
touch only the filesystem and the local Hugging Face cache, never the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from synth_disco.engines.base import EngineConfig, EngineLoadError

# Built-in names that are fetched on first use (see engines/builtin.py).
BUILTIN_MODELS = frozenset({"smollm2"})


def _looks_local(model: str) -> bool:
    return (
        model.startswith(("/", "./", "../", "~", "\\"))
        or model.endswith(".gguf")
        or model.count("/") > 1
        or Path(model).expanduser().exists()
        or (len(model) > 1 and model[1] == ":")  # a Windows drive
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def model_problem(config: EngineConfig) -> str | None:
    """Why ``config``'s model cannot be loaded on this machine, or None when it can be (as
    far as a check without loading can tell)."""
    model = config.model
    if config.engine == "tiny":
        from synth_disco.engines.tiny import tiny_seed

        try:
            tiny_seed(model)
        except EngineLoadError as e:
            return str(e)
        return None
    if config.engine != "transformers" or model in BUILTIN_MODELS:
        return None  # servers and other engines say for themselves when they load
    if _looks_local(model):
        path = Path(model).expanduser()
        if not path.exists():
            return f"{model}: no such file or directory (a local model must exist)"
        if path.is_dir() and config.gguf_file and not (path / config.gguf_file).exists():
            return f"{model}: has no {config.gguf_file} (gguf_file)"
        if path.is_dir() and not (path / "config.json").exists():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            if not ggufs:
                return f"{model}: not a saved model (no config.json or .gguf file in it)"
        return None
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        wanted = config.gguf_file or "config.json"
        cached = try_to_load_from_cache(model, wanted, revision=config.revision)
        if not isinstance(cached, str):
            return (
                f"{model} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                f"download it first (`hf download {model}`) or unset HF_HUB_OFFLINE"
            )
    return None
