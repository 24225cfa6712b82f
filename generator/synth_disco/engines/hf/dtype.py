"""Which dtype a model is loaded in: the recipe's choice, or for ``auto`` the fast one here.

``dtype: auto`` means the checkpoint's own dtype, as transformers reads it, with one exception:
on a CPU without native bfloat16 (x86 without AVX512-BF16 or AMX, ARM without BF16) a
bfloat16 checkpoint is loaded in float32, because every bfloat16 operation is then emulated:
a bfloat16 SmolLM2-135M generated 9.4 tokens/s on a 2-core AVX2 machine, its float32 copy 13.3
(see ``shared/reference/real-models.md``). float16 checkpoints get the same treatment on CPUs
without native float16. The memory doubles, which on a CPU is the cheaper resource. The log
says when this happens; an explicit ``dtype: bfloat16`` is always honoured.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from synth_disco.engines.base import EngineLoadError

_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}
# CPU feature flags (as /proc/cpuinfo names them) that mean native arithmetic in a dtype.
_NATIVE_FLAGS = {
    torch.bfloat16: frozenset({"avx512_bf16", "amx_bf16", "bf16"}),  # x86; ARM "bf16"
    torch.float16: frozenset({"avx512_fp16", "amx_fp16", "fphp", "asimdhp"}),
}


def parse_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype:
    """A torch dtype for a recipe's dtype name ("auto" stays "auto")."""
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype or "auto"
    value = getattr(torch, _ALIASES.get(dtype, dtype), None)
    if not isinstance(value, torch.dtype):
        raise EngineLoadError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return value


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype to load with, and why it is not the checkpoint's own (None when it is)."""

    dtype: str | torch.dtype
    note: str | None = None


def choose_dtype(
    requested: str | None,
    device_type: str,
    checkpoint: torch.dtype | None,
    cpu_flags: Iterable[str],
) -> DtypeChoice:
    """The dtype to load a model in.

    ``requested`` is the recipe's dtype; ``device_type`` where the model runs ("cpu", "cuda");
    ``checkpoint`` the dtype the checkpoint was saved in (None: unknown); ``cpu_flags`` the
    CPU's feature flags (:func:`cpu_flags`). Only ``auto`` on a CPU is ever changed.
    """
    parsed = parse_dtype(requested)
    if parsed != "auto" or device_type != "cpu" or checkpoint not in _NATIVE_FLAGS:
        return DtypeChoice(parsed)
    if _NATIVE_FLAGS[checkpoint] & set(cpu_flags):
        return DtypeChoice(parsed)
    name = str(checkpoint).removeprefix("torch.")
    return DtypeChoice(
        torch.float32,
        f"dtype auto: loading the {name} checkpoint in float32, as this CPU has no native "
        f"{name} (it would run about 1.4x slower); set `dtype: {name}` to keep it",
    )


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (Linux ``flags`` / ARM ``Features``); empty where unknown
    (other systems), which makes ``auto`` choose float32 over emulated half precision."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def checkpoint_dtype(config: object) -> torch.dtype | None:
    """The dtype a transformers config says its weights were saved in, if it says."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, _ALIASES.get(value, value), None)
    return value if isinstance(value, torch.dtype) else None
