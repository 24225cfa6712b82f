"""Loading a transformers causal LM and its tokenizer, and what the engine reads off them.

:func:`load_model` turns an :class:`~synth_disco.engines.base.EngineConfig` into a
:class:`LoadedModel`: the model on its device in eval mode, the tokenizer (left padding, a
chat template), and the facts the other parts of the engine need (end-of-sequence and padding
ids, the context length, a sliding window, per-token cache size, CPU pass limits), read once
from the model config. Every failure a user can fix is an
:class:`~synth_disco.engines.base.EngineLoadError` naming the model and the fix.

Where from (:func:`model_source`): a Hub id, a saved directory, a ``.gguf`` file, a directory
or Hub repo plus ``gguf_file``, or ``smollm2`` (the built-in GGUF). GGUF files load through
transformers' own GGUF support (the ``gguf`` package): tokenizer, chat template and
end-of-sequence come from the file, the weights are de-quantized to float32. In which dtype:
:mod:`~synth_disco.engines.hf.dtype`.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from synth_disco.engines import builtin
from synth_disco.engines.base import EngineConfig, EngineLoadError
from synth_disco.engines.chat_tokens import encode_chat, encode_chats
from synth_disco.engines.common import short
from synth_disco.engines.hf.dtype import checkpoint_dtype, choose_dtype, cpu_flags

log = logging.getLogger(__name__)

# CPU bounds on one prefill forward pass (see prefill.Prefiller._groups): tokens, and bytes of
# the float32 attention mask SDPA builds for a masked prefill. Chunks this size still run at
# full speed on a CPU; on accelerators the batch is left whole. The token bound is what keeps
# activations small, so a narrow model gets more tokens (cpu_prefill_limits): up to
# _CPU_PREFILL_MAX_TOKENS, as many as fit _CPU_ACTIVATION_BYTES, never fewer than the floor.
_CPU_PREFILL_LIMITS = (2048, 8 * 2**20)
_CPU_ACTIVATION_BYTES = 32 * 2**20
_CPU_PREFILL_MAX_TOKENS = 16384
# Share of a CPU machine's memory the key/value cache of one generation batch may take.
CPU_KV_SHARE = 0.25


@dataclass
class LoadedModel:
    """A loaded model and tokenizer, with the facts about them the engine's parts read."""

    model: Any  # a transformers PreTrainedModel, in eval mode on ``device``
    tokenizer: Any  # its tokenizer: left padding, a chat template, a pad token
    device: torch.device
    commit: str | None  # the hub commit the weights came from, if known
    gguf_file: str | None  # the GGUF file the weights came from (its name), if any
    eos_ids: list[int]
    pad_id: int
    max_context: int  # longest sequence (prompt + new tokens) the model accepts
    window: int | None  # attention window of sliding-window layers (see sliding_window)
    keeps_logits: bool  # whether forward takes ``logits_to_keep``
    own_cache: bool  # the model asks for its own cache type (static, hybrid...)
    kv_bytes_per_token: int
    # (tokens, mask bytes) of one prefill pass on a CPU; None on accelerators.
    prefill_limits: tuple[int, int] | None
    _label_ids: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @property
    def keep_one(self) -> dict[str, int]:
        """Forward keyword arguments for logits of the last position only, where supported."""
        return {"logits_to_keep": 1} if self.keeps_logits else {}

    @property
    def dtype_bytes(self) -> int:
        """Bytes of one weight, activation or cache value."""
        return dtype_bytes(self.model)

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` as templated for generation."""
        return encode_chat(self.tokenizer, messages)

    def encode_many(self, conversations: list[list[dict[str, str]]]) -> list[list[int] | None]:
        """:meth:`encode` of many prompts at once (:func:`~synth_disco.engines.chat_tokens.
        encode_chats`); None where the chat template fails, for the caller to report."""
        return encode_chats(self.tokenizer, conversations)

    def label_ids(self, label: str) -> list[int]:
        """Token ids of a label string (cached: every score request repeats the label set)."""
        ids = self._label_ids.get(label)
        if ids is None:
            ids = self.tokenizer(label, add_special_tokens=False)["input_ids"]
            if len(self._label_ids) < 4096:
                self._label_ids[label] = ids
        return list(ids)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``seqs`` as one left-padded batch on the model's device: (ids, attention mask)."""
        width = max(len(s) for s in seqs)
        # Filled through numpy: a torch.tensor per row costs more than the copy itself.
        ids = np.full((len(seqs), width), self.pad_id, dtype=np.int64)
        for row, seq in enumerate(seqs):
            if seq:
                ids[row, width - len(seq) :] = seq
        starts = width - np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        mask = (np.arange(width)[None, :] >= starts[:, None]).astype(np.int64)
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)


def load_model(config: EngineConfig, name: str) -> LoadedModel:
    """Load ``config.model`` (hub id or local path); ``name`` is how errors call it.

    Raises :class:`EngineLoadError` when the model or its tokenizer cannot be loaded, has no
    chat template, or cannot be moved to the device.
    """
    source, gguf_file = model_source(config)
    common: dict[str, Any] = {
        "revision": config.revision,
        "trust_remote_code": config.trust_remote_code,
    }
    if gguf_file is not None:
        common["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
    except Exception as exc:
        raise EngineLoadError(
            f"cannot load the tokenizer of model {name!r}: {short(exc)}"
        ) from None
    if config.chat_template:
        tokenizer.chat_template = config.chat_template
    if not getattr(tokenizer, "chat_template", None):
        raise EngineLoadError(
            f"model {name!r} has no chat template: give one as `chat_template:` in the "
            "recipe's model config (a Jinja template over `messages`), or use a chat/"
            "instruct variant of the model"
        )
    tokenizer.padding_side = "left"
    target = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    runs_on = "cuda" if config.device_map is not None and torch.cuda.is_available() else target
    dtype = load_dtype(config, source, gguf_file, torch.device(runs_on).type, common, name)
    kwargs: dict[str, Any] = {**common, "dtype": dtype}
    if config.device_map is not None:
        kwargs["device_map"] = config.device_map
    try:
        lm = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise EngineLoadError(f"cannot load model {name!r}: {short(exc)}") from None
    if config.device_map is None:
        try:
            lm = lm.to(target)
        except Exception as exc:
            raise EngineLoadError(
                f"cannot move model {name!r} to {target!r}: {short(exc)}"
            ) from None
    lm.eval()
    gen_cfg = getattr(lm, "generation_config", None)
    eos: set[int] = set()
    for src in (getattr(gen_cfg, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(src, int):
            eos.add(src)
        elif src:
            eos.update(int(t) for t in src)
    eos_ids = sorted(eos)
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = getattr(gen_cfg, "pad_token_id", None)
    if pad is None and eos_ids:
        pad = eos_ids[0]
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        model=lm,
        tokenizer=tokenizer,
        device=lm.device,
        commit=getattr(lm.config, "_commit_hash", None),
        gguf_file=gguf_file,
        eos_ids=eos_ids,
        pad_id=int(pad or 0),
        max_context=max_context(lm, tokenizer),
        window=sliding_window(lm),
        keeps_logits="logits_to_keep" in inspect.signature(lm.forward).parameters,
        own_cache=getattr(gen_cfg, "cache_implementation", None) is not None,
        kv_bytes_per_token=kv_bytes_per_token(lm),
        prefill_limits=cpu_prefill_limits(lm) if lm.device.type == "cpu" else None,
    )


# ---------------------------------------------------------------- names and settings


def model_source(config: EngineConfig) -> tuple[str, str | None]:
    """Where ``config.model`` is loaded from: (Hub id or local directory, GGUF file name).

    ``smollm2`` is the built-in GGUF (downloaded on first use, see ``engines/builtin.py``); a
    path ending in ``.gguf`` names its file; otherwise ``gguf_file`` (if set) names a GGUF
    file in the directory or Hub repo. Raises :class:`EngineLoadError` for a missing path.
    """
    model, gguf_file = config.model, config.gguf_file
    if model == builtin.NAME and gguf_file is None and not Path(model).exists():
        path = builtin.ensure_smollm2()
        return str(path.parent), path.name
    if model.lower().endswith(".gguf"):
        path = Path(model).expanduser()
        if gguf_file is not None:
            raise EngineLoadError(
                f"model {model!r} is a GGUF file and gguf_file is set too: give the file once"
            )
        if not path.is_file():
            raise EngineLoadError(f"cannot load model {model!r}: no such GGUF file")
        return str(path.parent), path.name
    if looks_local(model):
        path = Path(model).expanduser()
        if not path.is_dir():
            raise EngineLoadError(
                f"cannot load model {model!r}: no such directory (give a hub id like "
                "'org/name', the path of a saved model or of a .gguf file)"
            )
        if gguf_file is not None and not (path / gguf_file).is_file():
            raise EngineLoadError(f"cannot load model {model!r}: it has no file {gguf_file!r}")
        return str(path), gguf_file
    return model, gguf_file


def load_dtype(
    config: EngineConfig,
    source: str,
    gguf_file: str | None,
    device_type: str,
    common: dict[str, Any],
    name: str,
) -> str | torch.dtype:
    """The dtype to load with (:func:`~synth_disco.engines.hf.dtype.choose_dtype`), logging
    why when ``auto`` does not mean the checkpoint's own. A GGUF file is de-quantized to
    float32 anyway; other checkpoints say their dtype in their config."""
    checkpoint = None
    if config.dtype == "auto" and device_type == "cpu" and gguf_file is None:
        try:
            checkpoint = checkpoint_dtype(AutoConfig.from_pretrained(source, **common))
        except Exception:
            checkpoint = None  # from_pretrained below reports what is wrong
    choice = choose_dtype(config.dtype, device_type, checkpoint, cpu_flags())
    if choice.note:
        log.info("model %s: %s", name, choice.note)
    return choice.dtype


def looks_local(model: str) -> bool:
    """Whether ``model`` names a filesystem path rather than a hub id like ``org/name``."""
    return (
        Path(model).expanduser().exists()
        or model.startswith(("/", "./", "../", "~", "\\"))
        or model.count("/") > 1
        or (len(model) > 1 and model[1] == ":")  # Windows drive
    )


def record_name(model: str) -> str:
    """The model name for records: local paths reduced to their directory name."""
    if looks_local(model):
        return Path(model).expanduser().name or model
    return model


# ---------------------------------------------------------------- model config readers


def text_config(model: Any) -> Any:
    """The config of the language model (a multimodal model nests it)."""
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def dtype_bytes(model: Any) -> int:
    """Bytes of one weight, activation or cache value of ``model``."""
    dtype = model.dtype
    return torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4


def cpu_prefill_limits(model: Any) -> tuple[int, int]:
    """(tokens, mask bytes) of one CPU prefill pass. A token's activations in one layer take
    about six hidden-size vectors and three MLP-width ones; a narrow model fits more tokens in
    the same memory, and bigger passes cost less per token there (fewer calls, each with the
    same fixed overhead)."""
    text = text_config(model)
    hidden = getattr(text, "hidden_size", None) or 4096
    mlp = getattr(text, "intermediate_size", None) or 4 * hidden
    fits = _CPU_ACTIVATION_BYTES // ((6 * hidden + 3 * mlp) * dtype_bytes(model))
    floor, mask_bytes = _CPU_PREFILL_LIMITS
    return max(floor, min(_CPU_PREFILL_MAX_TOKENS, fits)), mask_bytes


def device_memory(device: torch.device) -> int:
    """Bytes of memory of ``device``: a GPU's total, else the machine's physical memory
    (8 GiB where neither can be read)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not a POSIX system
        return 8 * 2**30


def cpu_batch_tokens(kv_bytes: int, share: float = CPU_KV_SHARE) -> int:
    """Padded tokens (prompt + new) one batch may hold on a CPU: their key/value cache in
    ``share`` of the machine's memory. On a GPU running out of memory is an error the batcher
    catches and halves; on a CPU the kernel kills the process instead, so the default batch
    size is bounded before it can (a 64 MiB floor keeps tiny configs working)."""
    memory = device_memory(torch.device("cpu"))
    return max(64 * 2**20, int(memory * share)) // max(kv_bytes, 1)


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of key/value cache one token takes (all layers), from the model config."""
    text = text_config(model)
    layers = getattr(text, "num_hidden_layers", None) or 32
    heads = getattr(text, "num_attention_heads", None) or 32
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    hidden = getattr(text, "hidden_size", None) or 4096
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    return int(layers * kv_heads * head_dim * 2 * dtype_bytes(model))


def sliding_window(model: Any) -> int | None:
    """The attention window of the model's sliding-window layers, if it has any. A packed
    thread's question pass brings its own attention mask, which knows no window, so threads
    longer than that are scored one prompt at a time."""
    text = text_config(model)
    window = getattr(text, "sliding_window", None)
    if not isinstance(window, int) or window <= 0:
        return None
    if getattr(text, "use_sliding_window", True) is False:
        return None
    types = getattr(text, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    return window


def max_context(model: Any, tokenizer: Any) -> int:
    """Longest sequence the model accepts: its config's position limit, else the tokenizer's
    ``model_max_length`` when it is a real limit, else 2,048."""
    text_cfg = text_config(model)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text_cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 10**8:
        return value
    return 2048
