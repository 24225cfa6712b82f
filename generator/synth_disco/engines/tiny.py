"""A tiny, randomly initialised Llama chat model built offline, for tests and CPU benchmarks.

The model is an ordinary transformers checkpoint (config, safetensors weights, tokenizer, chat
template, generation config) written with ``save_pretrained``, so it is loaded by exactly the
same code path as any hub model. Its weights are a pure function of the seed.

Random weights produce gibberish; the weights are shaped so that the gibberish is printable and
word-like: a constant direction in the final residual stream (an MLP bias) acts as a per-token
logit bias that favours lower-case tokens and spaces, keeps end-of-sequence rare, and makes
control bytes and non-ASCII tokens practically impossible (they are also listed in the
generation config's ``suppress_tokens``). The tokenizer is a small byte-level BPE learned
offline from a fixed text, so prompts have realistic lengths (3-4 characters a token).

``engine: tiny`` (:func:`load`) builds the model for the seed in its name once, caches it, and
runs it through the transformers engine, in float32 on the CPU unless the config says otherwise.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from synth_disco.engines.base import EngineConfig, EngineLoadError

if TYPE_CHECKING:
    from synth_disco.engines.hf import TransformersEngine

TINY_VERSION = "tiny-v3"  # bump whenever the built model changes: caches are keyed by it
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
# The special tokens come first in the vocabulary: <s>=0, </s>=1, <pad>=2, then the 256 bytes
# of the byte-level alphabet, then the learned merges.
BOS_ID, EOS_ID, PAD_ID = 0, 1, 2
VOCAB_SIZE = 1024

# The text the tiny tokenizer's merges are learned from: forum and prompt vocabulary, so that
# prompts take about one token per 3-4 characters, as with real chat models (a byte-per-token
# tokenizer would make every prompt four times longer than on a real model and let attention
# over the prompt dominate every CPU measurement). Written for this project.
_CORPUS = """
You are taking part in an online discussion forum. Each turn, one participant writes one
comment. Write in plain text, as people write on a forum: no name prefix, no quotation marks
around your comment, and never write another participant's comment. Original post by the
author. replied wrote moderator thread earlier comments not shown. You are the moderator of
this forum. About you: Your instructions: Decide whether the discussion needs a moderator now.
If it does not, answer exactly NO INTERVENTION. Otherwise write your moderator comment. Write
your next comment, replying to the last person. Write only the comment text.
Annotate the target comment. Earlier comments in the discussion are context only, do not
annotate these. Target comment. Answer with one label. How toxic is this comment? Is the
comment constructive, does it agree or disagree, is it neutral, does it argue in good faith?
the of and to a in is that it for was on with as he she they we you be at by this have from
or one had not but what all were when there can an your which their said if do will each about
how up out them then many some so these would other into has more her two like him see time
could no make than first been its who now people my made over did down only way find use may
water long little very after words called just where most know get through back much go good
new write our me man too any day same right look think also around another came come work
three word must because does part even place well such here take why things help put years
different away again off went old number great tell men say small every found still between
name should home big give air line set own under read last never us left end along while might
next sound below saw something thought both few those always looked show large often together
asked house don world going want school important until form food keep children feet land side
without boy once animals life enough took sometimes four head above kind began almost live page
got earth need far hand high year mother light parts country father let night following picture
being study second eyes soon times story boys since white days ever paper hard near sentence
better best across during today others however sure means knew its try told young miles sun ways
thing whole hear example heard several change answer room sea against top turned learn point
city play toward five using himself usually money seen car morning given rules policy agree
disagree opinion argument evidence source honestly really think believe maybe probably civil
respectful rude toxic insult troll ban delete post reply forum community discussion debate town
square cars parking school week parents working cities climate tax housing rent vaccine
election vote government free speech internet online social media privacy data users
"""


CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Architecture of the tiny model: small enough that per-step overhead, not compute, dominates,
# which is the closest CPU proxy of batch-1 decoding on a GPU. Attention is kept narrow (two
# query heads of 16 dims sharing one key/value head, grouped-query attention as in current chat
# models): on a CPU, attention over long byte-level prompts otherwise dominates both the prefill
# and the KV-cache reads of batched decoding, which a GPU would not show.
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE = 64, 2, 2, 1, 16, 128
MAX_POSITIONS = 4096
# Scale of the constant residual direction and of the per-token logit bias it carries.
_BIAS_DIM_VALUE = 3.0


def tiny_seed(model: str | None) -> int:
    """The seed in a tiny model name: "tiny" -> 0, "tiny:3" -> 3."""
    name = (model or "tiny").strip()
    head, _, tail = name.partition(":")
    if head != "tiny" or (tail and not tail.lstrip("-").isdigit()):
        raise EngineLoadError(
            f"the tiny engine's model must be 'tiny' or 'tiny:<seed>', got {model!r} "
            "(to run another model, use `engine: transformers`)"
        )
    return int(tail) if tail else 0


def load(config: EngineConfig) -> TransformersEngine:
    """The registry's entry point for ``engine: tiny``: the tiny model for the seed in
    ``config.model``, built once and loaded through the transformers engine (float32; on the
    CPU unless ``config.device`` says otherwise). Records keep the name ("tiny", "tiny:3")."""
    # Imported here, not at the top: building or locating the tiny model needs no torch.
    from synth_disco.engines.hf import TransformersEngine

    path = ensure_tiny_model(tiny_seed(config.model))
    local = EngineConfig(
        model=str(path),
        dtype="float32",
        device=config.device or "cpu",
        chat_template=config.chat_template,
        max_batch_size=config.max_batch_size,
        max_batch_tokens=config.max_batch_tokens,
        prefix_cache_mb=config.prefix_cache_mb,
    )
    return TransformersEngine(local, model_id=config.model or "tiny")


def default_cache_root() -> Path:
    """``$SYNTH_DISCO_CACHE`` if set, else ``~/.cache/synth_disco``."""
    env = os.environ.get("SYNTH_DISCO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "synth_disco"


def tiny_model_dir(seed: int = 0, cache_dir: Path | None = None) -> Path:
    """Where the tiny model for ``seed`` lives (``<cache root>/tiny-v2-seed<seed>``)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    return root / f"{TINY_VERSION}-seed{seed}"


def ensure_tiny_model(seed: int = 0, cache_dir: Path | None = None) -> Path:
    """Return the directory of the tiny model for ``seed``, building it once if missing.

    ``cache_dir`` is the cache root (default: :func:`default_cache_root`). The model is built in
    a temporary sibling directory and renamed into place, so concurrent callers never see a
    half-written model; the loser of a race discards its copy.
    """
    target = tiny_model_dir(seed, cache_dir)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _build(seed, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first (target exists and is non-empty): use theirs.
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tokenizer():  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer with merges learned from ``_CORPUS``, plus <s>, </s>, <pad>.

    Every byte is in the alphabet, so any text encodes; decoding goes through the byte-level
    decoder, which maps invalid UTF-8 to U+FFFD instead of raising. The trainer is
    deterministic for a fixed corpus, so the tokenizer (like the weights) is the same on every
    machine.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.split("\n"), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=MAX_POSITIONS,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _token_bias(tokenizer) -> list[float]:
    """Per-token logit bias: word-like printable ASCII, rare eos, everything else impossible."""
    bias = [-40.0] * len(tokenizer)
    for token_id in range(len(tokenizer)):
        if token_id in (BOS_ID, PAD_ID):
            continue
        text = tokenizer.decode([token_id])
        if token_id == EOS_ID:
            bias[token_id] = 0.5
        elif not text or not all(0x20 <= ord(ch) < 0x7F for ch in text):
            continue  # control bytes, non-ASCII: never generated
        elif all(ch.islower() or ch == " " for ch in text):
            bias[token_id] = 3.0 if any(ch.islower() for ch in text) else 2.5
        elif any(ch.isalpha() for ch in text):
            bias[token_id] = 0.5
        else:
            bias[token_id] = -0.5
    return bias


def _build(seed: int, out_dir: Path) -> None:
    """Create the model deterministically from ``seed`` and save it to ``out_dir``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    bias = _token_bias(tokenizer)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
        mlp_bias=True,
        dtype="float32",
    )
    # Construction draws from the global RNG for its default init; fork it so the caller's
    # global RNG state is untouched. Every parameter is then overwritten from our generator.
    with torch.random.fork_rng(devices=[]):
        model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            elif name == "model.embed_tokens.weight":
                # Unit-scale embeddings so the residual stream carries context, not just bias.
                param.copy_(torch.randn(param.shape, generator=gen))
            elif name == "lm_head.weight":
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
        # Residual dimension 0 becomes (nearly) constant after the last layer: the embedding
        # leaves it empty and the last MLP's bias fills it. lm_head column 0 then acts as a
        # per-token logit bias (Llama's lm_head has no bias term of its own).
        model.model.embed_tokens.weight[:, 0] = 0.0
        model.model.layers[-1].mlp.down_proj.bias[0] = _BIAS_DIM_VALUE
        # After RMSNorm dimension 0 is about _BIAS_DIM_VALUE / rms(residual) ~ 2.5-3.
        model.lm_head.weight[:, 0] = torch.tensor(bias) / 2.5
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        suppress_tokens=[i for i, b in enumerate(bias) if b <= -40.0 and i != BOS_ID],
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
