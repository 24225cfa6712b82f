"""The built-in SmolLM2-135M-Instruct as a plain safetensors directory, for vLLM.

vLLM runs a Hugging Face model directory, not the Q4_1 GGUF file the built-in model ships as
(``synth_disco.engines.builtin``). This de-quantizes the GGUF once with transformers and saves
weights, config, generation config and tokenizer (with SmolLM2's ChatML template) next to it
in the cache, outside any checkout::

    <cache>/models/smollm2-135m-instruct/safetensors-float32/

The GGUF-loaded model refuses ``save_pretrained``, so a fresh model is built from its config
(without the ``quantization_config`` the GGUF loader put there) and the weights are copied in.
float32 by default: this CPU has no native bfloat16, where bfloat16 runs ~1.4x slower.

Needs torch, transformers and gguf (the vLLM venv of ``scripts/vllm-env.sh`` has them)::

    PYTHONPATH=generator python scripts/smollm2_safetensors.py          # prints the directory
    PYTHONPATH=generator python scripts/smollm2_safetensors.py --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from synth_disco.engines.builtin import cache_dir, ensure_smollm2


def convert(gguf: Path, out: Path, dtype: str = "float32") -> Path:
    """Save the model in ``gguf`` as a safetensors directory at ``out`` (whole or not at all)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch_dtype
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    # Tied embeddings: the GGUF has no separate lm_head, so strict loading would complain.
    fresh.load_state_dict(loaded.state_dict(), strict=False)
    fresh.generation_config = loaded.generation_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is readable like pip's
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out.exists():  # another process finished first: keep its copy
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_smollm2_dir(dtype: str = "float32", cache: Path | None = None) -> Path:
    """The cached safetensors directory of the built-in model, converting it on first use."""
    gguf = ensure_smollm2(cache)
    out = (cache or cache_dir()) / "models" / "smollm2-135m-instruct" / f"safetensors-{dtype}"
    if (out / "config.json").exists():
        return out
    return convert(gguf, out, dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    print(ensure_smollm2_dir(args.dtype))


if __name__ == "__main__":
    main()
