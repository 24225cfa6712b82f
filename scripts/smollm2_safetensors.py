"""The built-in SmolLM2-135M-Instruct as a plain safetensors directory, for vLLM.

vLLM runs a Hugging Face model directory, not the Q4_1 GGUF file the built-in model ships as.
This is a command-line front to ``synth_disco.engines.builtin.ensure_smollm2_checkpoint``,
which de-quantizes the GGUF once with transformers and saves weights, config, generation
config and tokenizer (with SmolLM2's ChatML template) next to it in the cache::

    <cache>/models/smollm2-135m-instruct/hf-float32/

The GGUF-loaded model refuses ``save_pretrained``, so a fresh model is built from its config
(without the ``quantization_config`` the GGUF loader put there) and the weights are copied in.
float32 by default: this CPU has no native bfloat16, where bfloat16 runs ~1.4x slower.

Needs torch, transformers and gguf (the vLLM venv of ``scripts/vllm-env.sh`` has them)::

    PYTHONPATH=generator python scripts/smollm2_safetensors.py          # prints the directory
    PYTHONPATH=generator python scripts/smollm2_safetensors.py --dtype bfloat16
"""

from __future__ import annotations

import argparse

from synth_disco.engines.builtin import ensure_smollm2_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    print(ensure_smollm2_checkpoint(dtype=args.dtype))


if __name__ == "__main__":
    main()
