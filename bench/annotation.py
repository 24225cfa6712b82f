"""Annotation throughput: synth-disco's annotate stage vs a one-at-a-time generate-and-parse loop.

Both sides use the same tiny model object, the same synthetic comments, annotators, dimension
and prompt text. The baseline does what SynDisco does: for each (comment, annotator) it calls
``model.generate`` with batch size 1 (greedy), decodes, and parses the answer. synth-disco runs
``run_annotation_stage`` on a fresh run directory (journal, shard file and all) with the default
``score`` method (one forward pass per batch gives every label's probability); its batched
``generate`` method is timed too. Each system is warmed up, then the systems are interleaved
``--reps`` times and the median is reported.

Threads and the allocator are pinned identically for both sides: the script re-executes itself
with OMP_NUM_THREADS (default 2) and the MALLOC_* settings below unless they are already set.

    python bench/annotation.py               # 2 threads, 60 tasks, median of 3
    python bench/annotation.py --quick       # a smoke run
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

_PINNED = {
    "MALLOC_MMAP_THRESHOLD_": "17179869184",
    "MALLOC_TRIM_THRESHOLD_": "17179869184",
    "MALLOC_TOP_PAD_": "1073741824",
}

WORDS = [
    "cars",
    "city",
    "centre",
    "people",
    "think",
    "traffic",
    "bikes",
    "buses",
    "walk",
    "safer",
    "cleaner",
    "air",
    "noise",
    "shops",
    "parking",
    "price",
    "tax",
    "rule",
    "ban",
    "never",
    "always",
    "maybe",
    "agree",
    "disagree",
    "because",
    "really",
    "idea",
    "policy",
    "children",
    "health",
    "cost",
    "jobs",
    "delivery",
    "rain",
    "winter",
    "trust",
    "data",
    "study",
    "friends",
    "work",
    "commute",
]


def _pin(threads: int) -> None:
    """Re-exec with the same allocator and thread settings for every system measured."""
    want = {**_PINNED, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if any(os.environ.get(k) != v for k, v in want.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **want})


def synthetic_comments(n_discussions: int, per: int, seed: int = 0):
    """Forum-like comments (an OP, then users) with deterministic text of 20-40 words."""
    from synth_disco.records import Comment

    rng = random.Random(seed)
    out = []
    for d in range(n_discussions):
        did = f"bench-d{d:03d}"
        for i in range(per):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 40))).capitalize()
            role = "op" if i == 0 else "user"
            out.append(
                Comment(did, f"{did}-c{i:02d}", i, None, f"user{i % 4}", role, None, None,
                        text + ".", text + ".", "synthetic")
            )  # fmt: skip
    return out


def baseline(model, tokenizer, tasks, prompts, labels, max_new_tokens: int) -> tuple[float, int]:
    """One ``generate`` call per task, batch size 1, then parse: seconds and labels parsed."""
    import torch

    from synth_disco.annotation.parse import parse_answer

    ok = 0
    start = time.perf_counter()
    for task in tasks:
        text = tokenizer.apply_chat_template(
            prompts.messages(task), add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(
                **ids, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        ok += parse_answer(answer, labels, task.dimension).ok
    return time.perf_counter() - start, ok


def stage(
    engine, cfg, comments, annotators, max_batch: int, max_new_tokens: int
) -> tuple[float, int]:
    """The annotate stage on a fresh run directory: seconds and labels given."""
    import pyarrow.parquet as pq

    from synth_disco.annotation.stage import default_generate_params, run_annotation_stage
    from synth_disco.annotation.tasks import comments_table
    from synth_disco.engines.base import SamplingParams
    from synth_disco.store.run_dir import RunStore

    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp))
        table = comments_table(comments)
        start = time.perf_counter()
        run_annotation_stage(
            store, {0: table}, [0], cfg, annotators, engine, model_name="tiny", seed=0,
            max_batch=max_batch, progress=lambda n: None,
            params=default_generate_params(cfg, SamplingParams(max_new_tokens=max_new_tokens)),
        )  # fmt: skip
        seconds = time.perf_counter() - start
        rows = pq.read_table(store.shard_path("annotate", 0, "annotations")).to_pylist()
    return seconds, sum(r["status"] == "ok" for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--discussions", type=int, default=4)
    ap.add_argument("--comments", type=int, default=6, help="per discussion, OP included")
    ap.add_argument("--annotators", type=int, default=3)
    ap.add_argument("--context-window", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=24, help="generate answers' length")
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 discussion, 1 rep")
    args = ap.parse_args()
    _pin(args.threads)
    if args.quick:
        args.discussions, args.reps = 1, 1

    import torch

    from synth_disco.annotation.prompts import PromptBuilder
    from synth_disco.annotation.tasks import build_tasks
    from synth_disco.engines.base import EngineConfig
    from synth_disco.engines.registry import load_engine
    from synth_disco.recipe.schema import AnnotationConfig
    from synth_disco.records import Persona

    torch.set_num_threads(args.threads)

    def fresh_engine():
        # A new engine (same model files) per timed synth-disco run: the engine keeps prompt
        # prefixes for reuse, and a run must not find the previous run's prompts stored.
        return load_engine(EngineConfig("tiny", engine="tiny"))

    engine = fresh_engine()
    annotators = [
        Persona(f"ann{i}", f"Annotator {i}", f"Annotator {i}, a careful content moderator.")
        for i in range(args.annotators)
    ]
    dims = {"toxicity": {"scale": [1, 2, 3, 4, 5], "instructions": "How toxic is the comment?",
                         "descriptions": {"1": "not toxic", "5": "very toxic"}}}  # fmt: skip

    def cfg(method: str) -> AnnotationConfig:
        return AnnotationConfig.model_validate(
            {"annotators": {"per_comment": "all"}, "context_window": args.context_window,
             "method": method, "max_retries": 0, "dimensions": dims}
        )  # fmt: skip

    comments = synthetic_comments(args.discussions, args.comments)
    tasks = build_tasks(comments, cfg("generate"), annotators, seed=0)
    prompts = PromptBuilder(cfg("generate"))
    labels = list(cfg("generate").dimensions["toxicity"].labels)
    systems = {
        "one-at-a-time generate + parse (SynDisco-style)": lambda: baseline(
            engine.lm.model, engine.lm.tokenizer, tasks, prompts, labels, args.max_new_tokens
        ),
        "synth-disco annotate stage, score": lambda: stage(
            fresh_engine(), cfg("score"), comments, annotators, args.max_batch, args.max_new_tokens
        ),
        "synth-disco annotate stage, generate (batched)": lambda: stage(
            fresh_engine(),
            cfg("generate"),
            comments,
            annotators,
            args.max_batch,
            args.max_new_tokens,
        ),
    }
    # Warm up every system on a small slice (first shapes, allocator, lazy imports).
    warm = comments[: args.comments]
    warm_tasks = build_tasks(warm, cfg("generate"), annotators, seed=0)[:4]
    baseline(engine.lm.model, engine.lm.tokenizer, warm_tasks, prompts, labels, args.max_new_tokens)
    stage(engine, cfg("score"), warm, annotators, args.max_batch, args.max_new_tokens)
    stage(engine, cfg("generate"), warm, annotators, args.max_batch, args.max_new_tokens)

    times: dict[str, list[float]] = {name: [] for name in systems}
    labelled: dict[str, int] = {}
    for _ in range(args.reps):  # interleaved, so drifting machine load hits every system alike
        for name, fn in systems.items():
            seconds, ok = fn()
            times[name].append(seconds)
            labelled[name] = ok
    n = len(tasks)
    print(f"\n{n} tasks ({len(comments)} comments, {args.annotators} annotators, 1 dimension), "
          f"tiny model, {args.threads} threads, median of {args.reps}\n")  # fmt: skip
    print("| system | tasks | seconds | tasks/s | labels given |")
    print("|---|---:|---:|---:|---:|")
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name in systems:
        print(f"| {name} | {n} | {med[name]:.2f} | {n / med[name]:.1f} | {labelled[name]} |")
    base = med[next(iter(systems))]
    for name in list(systems)[1:]:
        print(f"\nspeed-up of {name.removeprefix('synth-disco ')}: {base / med[name]:.1f}x")


if __name__ == "__main__":
    main()
