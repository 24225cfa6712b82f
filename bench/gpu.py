"""Discussion throughput on one GPU, against one-at-a-time and against the engine's own ceiling.

For a machine with one H100/H200-class NVIDIA GPU and no internet: the model is randomly
initialised with the Llama-3.2-1B configuration (written out below) in bfloat16, with a
synthetic word-level tokenizer of the same vocabulary size (about one token per word, as a BPE
tokenizer gives on English) and a chat template. End-of-sequence and the other special tokens
are suppressed in the model's generation config, so every reply is exactly ``--new-tokens``.

Measured, all on the same loaded ``TransformersEngine``:

1. synth-disco: 256 discussions x 4 participants x 8 turns x 128 new tokens through the
   ``DiscussionRunner`` (temporary run store), all discussions in flight;
2. (a) one request at a time: a few discussions alone, ``engine.generate([one request])`` per
   turn, extrapolated per comment;
3. (b) the engine's ceiling: the exact request batches of run 1 (same prompts, lengths and
   batch sizes) replayed through ``engine.generate`` with no discussion logic, and the raw
   ``model.generate`` ceiling on unpadded random prompts of the same shapes;
4. annotation of every generated comment (2 annotators, 1 dimension, ``score`` method), once
   per annotation layout: ``window`` (a prompt per label) and ``thread`` (a packed pass per
   discussion and annotator).

``--tiny`` runs the same code on the CPU with a tiny configuration and small counts, so that
the script is exercised everywhere (tests run it).

    python bench/gpu.py                   # on the GPU machine
    python bench/gpu.py --tiny            # CPU smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 (after the path tweak that lets bench/ scripts share it)
    CONTEXT,
    FIRST_NAMES,
    INSTRUCTIONS,
    JOBS,
    TOPICS,
    TRAITS,
    WORK_DIR,
    Timer,
    Workload,
    machine_info,
    markdown_table,
    persona_text,
    ratio,
    synth_disco_specs,
)
from synth_disco.engines.tiny import CHAT_TEMPLATE  # noqa: E402 (the same chat format)

# Llama-3.2-1B (meta-llama/Llama-3.2-1B-Instruct config.json), written out: no Hub access here.
LLAMA_32_1B: dict[str, Any] = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": True,
}
# The same architecture family, small enough for a CPU smoke run.
TINY: dict[str, Any] = {
    **LLAMA_32_1B,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 2048,
}
SPECIALS = ["<s>", "</s>", "<pad>", "<unk>"]


def _corpus_words() -> list[str]:
    """Words the prompts use (templates, personas, posts), so they tokenize like real text."""
    from importlib.resources import files

    text = " ".join(
        [
            (files("synth_disco.discussion") / "templates" / "system.j2").read_text(
                encoding="utf-8"
            ),
            (files("synth_disco.discussion") / "templates" / "turn.j2").read_text(encoding="utf-8"),
            CONTEXT,
            INSTRUCTIONS,
            FIRST_NAMES,
            JOBS,
            TRAITS,
            " ".join(f"{a} {b}" for a, b in TOPICS),
            "OriginalPoster username age occupation personality system user assistant",
            "Annotator1 Annotator2 toxicity annotate annotator comment target label labels",
        ]
    )
    return list(dict.fromkeys(re.findall(r"\w+|[^\w\s]", text)))


def build_tokenizer(vocab_size: int):  # -> PreTrainedTokenizerFast
    """A word-level tokenizer of exactly ``vocab_size`` tokens with a chat template.

    Specials, then every printable ASCII character, then the words of the prompts, then filler
    words ``w<i>`` (what the random model mostly generates). Unknown words become ``<unk>``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in [*SPECIALS, *(chr(c) for c in range(33, 127)), *_corpus_words()]:
        vocab.setdefault(tok, len(vocab))
    i = 0
    while len(vocab) < vocab_size:
        vocab.setdefault(f"w{i}", len(vocab))
        i += 1
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is too small for the prompt words")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def ensure_model(arch: dict[str, Any], out_dir: Path, dtype: str, device: str, seed: int) -> Path:
    """Build (once) a randomly initialised Llama with ``arch`` and save it to ``out_dir``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    marker = out_dir / "bench_model.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"arch": arch, "seed": seed}:
        return out_dir
    tokenizer = build_tokenizer(arch["vocab_size"])
    special_ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIALS]
    bos, eos, pad, _ = special_ids
    config = LlamaConfig(**arch, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, dtype=dtype)
    torch_dtype = getattr(torch, dtype)
    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    # Seeded init without touching the caller's global RNG state.
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with torch.device(device):
            model = LlamaForCausalLM(config).to(torch_dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        # Forced lengths: the model can never end a reply or emit a special token.
        suppress_tokens=special_ids,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    marker.write_text(json.dumps({"arch": arch, "seed": seed}))
    del model
    return out_dir


def prefix_stats(engine: Any) -> dict[str, int]:
    """The engine's prefix-reuse counters, if it keeps them."""
    stats = getattr(engine, "prefix_stats", None)
    return dict(stats()) if callable(stats) else {}


class RecordingEngine:
    """Wraps an engine and keeps every ``generate`` batch, to replay it without the runner."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.batches: list[list[Any]] = []

    def generate(self, requests: list[Any]) -> list[Any]:
        self.batches.append(list(requests))
        return self.engine.generate(requests)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    return float("nan")


def run_discussions(specs: list[Any], engine: Any, max_concurrent: int, store: Any) -> Any:
    from synth_disco.discussion.stage import DiscussionRunner

    runner = DiscussionRunner(
        store, lambda shard: specs, lambda cfg: engine, [], max_concurrent=max_concurrent
    )
    result = runner.run([0])
    if result.failed:
        raise RuntimeError(f"{result.failed} discussions failed: {result.failures[:3]}")
    return result


def one_at_a_time(specs: list[Any], engine: Any) -> tuple[int, int]:
    """Each discussion alone, one request per ``generate``; returns (comments, tokens)."""
    from synth_disco.discussion.state import DiscussionState

    comments = tokens = 0
    for spec in specs:
        state = DiscussionState(spec)
        while not state.done:
            (completion,) = engine.generate([state.next_request()])
            state.apply(completion)
        generated = state.comments[state.n_seed :]
        comments += len(generated)
        tokens += sum(c.completion_tokens for c in generated)
    return comments, tokens


def raw_ceiling(engine: Any, shapes: list[tuple[int, int]], new_tokens: int, seed: int) -> None:
    """``model.generate`` on unpadded random prompts of the given (rows, length) shapes."""
    import torch
    from transformers import GenerationConfig

    gen = torch.Generator().manual_seed(seed)
    model = engine.lm.model
    cfg = GenerationConfig(
        max_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=engine.lm.tokenizer.pad_token_id,
        eos_token_id=engine.lm.tokenizer.eos_token_id,
    )
    low = len(SPECIALS)
    for rows, length in shapes:
        ids = torch.randint(low, model.config.vocab_size, (rows, length), generator=gen)
        ids = ids.to(model.device)
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=cfg,
            )


def annotate(store: Any, engine: Any, seed: int, layout: str) -> int:
    """Score every comment (OP included) by 2 annotators on 1 dimension; returns labels.

    The labels go to a store of their own under ``store``'s directory (one per layout)."""
    from synth_disco.annotation.stage import run_annotation_stage
    from synth_disco.recipe.schema import AnnotationConfig
    from synth_disco.records import Persona
    from synth_disco.store.run_dir import RunStore

    cfg = AnnotationConfig.model_validate(
        {
            "annotators": {"pool": "annotators", "per_comment": "all"},
            **({"context_window": 2} if layout == "window" else {}),
            "layout": layout,
            "method": "score",
            "include_seed": True,
            "dimensions": {
                "toxicity": {
                    "scale": ["1", "2", "3", "4", "5"],
                    "instructions": "Rate how toxic the target comment is.",
                }
            },
        }
    )
    annotators = [
        Persona(id="a0", name="Annotator1", description=persona_text({"age": "34"})),
        Persona(id="a1", name="Annotator2", description=persona_text({"age": "58"})),
    ]
    labels_store = RunStore(store.root / f"annotate-{layout}")
    result = run_annotation_stage(
        labels_store,
        lambda shard: store.read_shard("discuss", shard, "comments"),
        [0],
        cfg,
        annotators,
        engine,
        model_name="bench",
        seed=seed,
        progress=lambda n: None,
    )
    if result.failed:
        raise RuntimeError(f"{result.failed} labels failed")
    return labels_store.read_shard("annotate", 0, "annotations").num_rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny config on the CPU, small counts")
    ap.add_argument("--discussions", type=int, default=None, help="default 256 (tiny: 8)")
    ap.add_argument("--participants", type=int, default=4)
    ap.add_argument("--turns", type=int, default=None, help="default 8 (tiny: 4)")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 128 (tiny: 8)")
    ap.add_argument("--baseline-discussions", type=int, default=None, help="default 2")
    ap.add_argument("--max-batch-size", type=int, default=256)
    ap.add_argument("--max-batch-tokens", type=int, default=None)
    ap.add_argument("--device", default=None, help="default cuda (tiny: cpu)")
    ap.add_argument("--model-dir", type=Path, default=None, help="where to save the model")
    ap.add_argument("--skip-annotation", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    from synth_disco.engines.base import EngineConfig
    from synth_disco.engines.hf import TransformersEngine
    from synth_disco.store.run_dir import RunStore

    logging.getLogger("synth_disco").setLevel(logging.WARNING)
    tiny = args.tiny
    arch = TINY if tiny else LLAMA_32_1B
    device = args.device or ("cpu" if tiny else "cuda")
    dtype = "float32" if tiny else "bfloat16"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny (CPU) or on the GPU machine")
    w = Workload(
        "gpu-tiny" if tiny else "gpu",
        args.discussions or (8 if tiny else 256),
        args.participants,
        args.turns or (4 if tiny else 8),
        args.new_tokens or (8 if tiny else 128),
        context_window=5,
        seed=args.seed + 7,
    )
    nb = min(args.baseline_discussions or 2, w.discussions)
    if tiny:
        torch.set_num_threads(1)  # the smoke run must not fight other work for cores

    model_dir = args.model_dir or WORK_DIR / ("model-tiny-llama" if tiny else "model-llama-3.2-1b")
    with Timer() as t_build:
        path = ensure_model(arch, model_dir, dtype, device, args.seed)

    def fresh_engine() -> Any:
        # A new engine per measured phase: the engine keeps prompt prefixes for reuse, and a
        # phase must not find an earlier phase's identical prompts already stored.
        config = EngineConfig(
            str(path),
            dtype=dtype,
            device=device,
            max_batch_size=args.max_batch_size,
            max_batch_tokens=args.max_batch_tokens,
        )
        model_id = "llama-3.2-1b-random" if not tiny else "tiny-llama-random"
        return TransformersEngine(config, model_id=model_id)

    with Timer() as t_load:
        engine = fresh_engine()
    n_params = sum(p.numel() for p in engine.lm.model.parameters())
    model_cfg = {"engine": "transformers", "model": "bench", "max_new_tokens": w.new_tokens}
    specs = synth_disco_specs(w, model_cfg)

    # Warm-up: kernels, allocator, every path once (two short discussions, one alone).
    warm = synth_disco_specs(
        Workload("warm", 2, w.participants, 2, min(4, w.new_tokens), 5, w.seed + 1), model_cfg
    )
    with tempfile.TemporaryDirectory(prefix="bench-gpu-warm-") as tmp:
        run_discussions(warm, engine, len(warm), RunStore(Path(tmp)))
        one_at_a_time(warm[:1], engine)
    engine.close()

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        store = RunStore(Path(tmp))
        engine = fresh_engine()
        recorder = RecordingEngine(engine)
        reset_peak(device)
        with Timer() as t:
            run = run_discussions(specs, recorder, w.discussions, store)
            sync(device)
        rows = store.read_shard("discuss", 0, "comments").to_pylist()
        generated = [r for r in rows if r["role"] not in ("op", "seed")]
        tokens = [r["completion_tokens"] for r in generated]
        results["discussions"] = {
            "seconds": t.seconds,
            "comments": len(generated),
            "tokens": sum(tokens),
            "forced": all(n == w.new_tokens for n in tokens),
            "prompt_tokens_mean": sum(r["prompt_tokens"] for r in generated) / len(generated),
            "engine_calls": len(recorder.batches),
            "largest_batch": max(len(b) for b in recorder.batches),
            "gpu_peak_gib": peak_gib(device),
            "stage_comments": run.comments,
            "prefix": prefix_stats(engine),
        }
        engine.close()

        # (b) the same batches straight through the engine: no states, prompts, journals.
        engine = fresh_engine()
        reset_peak(device)
        with Timer() as t:
            for batch in recorder.batches:
                engine.generate(batch)
            sync(device)
        results["engine_replay"] = {
            "seconds": t.seconds,
            "comments": sum(len(b) for b in recorder.batches),
            "gpu_peak_gib": peak_gib(device),
        }

        # (b') the raw model ceiling: unpadded random prompts, each batch's longest length.
        shapes = [
            (len(b), max(engine.count_tokens(r.messages) for r in b)) for b in recorder.batches
        ]
        reset_peak(device)
        with Timer() as t:
            raw_ceiling(engine, shapes, w.new_tokens, args.seed)
            sync(device)
        results["model_ceiling"] = {
            "seconds": t.seconds,
            "comments": sum(n for n, _ in shapes),
            "gpu_peak_gib": peak_gib(device),
        }

        # (a) one request at a time, on a subset, per comment.
        engine.close()
        engine = fresh_engine()
        reset_peak(device)
        with Timer() as t:
            comments, toks = one_at_a_time(specs[:nb], engine)
            sync(device)
        results["one_at_a_time"] = {
            "seconds": t.seconds,
            "comments": comments,
            "tokens": toks,
            "discussions": nb,
            "gpu_peak_gib": peak_gib(device),
        }

        for layout in () if args.skip_annotation else ("window", "thread"):
            engine.close()
            engine = fresh_engine()
            reset_peak(device)
            with Timer() as t:
                labels = annotate(store, engine, w.seed, layout)
                sync(device)
            results[f"annotation-{layout}"] = {
                "seconds": t.seconds,
                "labels": labels,
                "gpu_peak_gib": peak_gib(device),
            }

    d = results["discussions"]
    rate = d["comments"] / d["seconds"]
    alone = results["one_at_a_time"]
    alone_rate = alone["comments"] / alone["seconds"]
    replay = results["engine_replay"]
    replay_rate = replay["comments"] / replay["seconds"]
    ceiling = results["model_ceiling"]
    ceiling_rate = ceiling["comments"] / ceiling["seconds"]
    table = [
        [
            "synth-disco discussions (runner)",
            d["comments"],
            d["seconds"],
            rate,
            rate * w.new_tokens,
            d["gpu_peak_gib"],
            1.0,
        ],
        [
            f"(a) one request at a time ({nb} discussions)",
            alone["comments"],
            alone["seconds"],
            alone_rate,
            alone_rate * w.new_tokens,
            alone["gpu_peak_gib"],
            ratio(rate, alone_rate),
        ],
        [
            "(b) engine ceiling: same batches, no discussion logic",
            replay["comments"],
            replay["seconds"],
            replay_rate,
            replay_rate * w.new_tokens,
            replay["gpu_peak_gib"],
            ratio(rate, replay_rate),
        ],
        [
            "(b') model.generate ceiling: unpadded random prompts",
            ceiling["comments"],
            ceiling["seconds"],
            ceiling_rate,
            ceiling_rate * w.new_tokens,
            ceiling["gpu_peak_gib"],
            ratio(rate, ceiling_rate),
        ],
    ]
    for layout in ("window", "thread"):
        if f"annotation-{layout}" not in results:
            continue
        a = results[f"annotation-{layout}"]
        table.append(
            [
                f"annotation, score method, layout {layout} (labels)",
                a["labels"],
                a["seconds"],
                a["labels"] / a["seconds"],
                float("nan"),
                a["gpu_peak_gib"],
                float("nan"),
            ]
        )
    info = machine_info()
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    engine.close()
    reuse = d["prefix"]
    seen = reuse.get("hit_tokens", 0) + reuse.get("miss_tokens", 0)
    print(
        f"workload: {w.discussions} discussions x {w.participants} participants x {w.turns} "
        f"turns x {w.new_tokens} new tokens (forced: {'yes' if d['forced'] else 'NO'}), context "
        f"window {w.context_window}, mean prompt {d['prompt_tokens_mean']:.0f} tokens, greedy"
    )
    print(
        f"model: random Llama ({n_params / 1e6:.1f}M parameters, "
        f"{'tiny config' if tiny else 'Llama-3.2-1B config'}), {dtype} on {device}; "
        f"build {t_build.seconds:.1f}s, load {t_load.seconds:.1f}s; {d['engine_calls']} engine "
        f"calls, largest batch {d['largest_batch']}; prompt tokens from the prefix store: "
        + (f"{reuse['hit_tokens'] / seen:.0%}" if seen else "n/a")
    )
    print(
        f"machine: {info.get('gpu', info['cpu'])}; torch {info.get('torch')}, "
        f"transformers {info.get('transformers')}; {info['date']}"
    )
    print()
    print(
        markdown_table(
            [
                "run",
                "comments",
                "seconds",
                "comments/s",
                "tokens/s",
                "GPU peak GiB",
                "synth-disco / this",
            ],
            table,
        )
    )
    print()
    print(f"vs one at a time: {ratio(rate, alone_rate):.1f}x (target >= 50x on the GPU)")
    print(f"of the engine ceiling: {ratio(rate, replay_rate):.0%} (target >= 70%)")
    out = {"workload": w.to_dict(), "machine": info, "results": results}
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
