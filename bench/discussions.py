"""Batched discussions vs one request at a time, on the same model object.

The same discussions (same personas, posts, seeds, prompts built by ``DiscussionState``) run
twice on one loaded ``TransformersEngine``:

- synth-disco: the ``DiscussionRunner`` with a temporary run store (journals, parquet shards),
  every active discussion's next turn in one batched engine call;
- one at a time: each discussion alone, ``engine.generate([one request])`` per turn, which is
  what a batch-size-1 system such as SynDisco does.

The tiny model's generation config suppresses end-of-sequence (see ``common.py``), so every
reply is exactly ``--new-tokens`` tokens on both sides. Greedy decoding, float32: the two sides
must produce the same texts, which the benchmark checks and reports.

    python bench/discussions.py                       # 64 x 4 participants x 8 turns x 32 tokens
    python bench/discussions.py --profile prof.out    # cProfile of one batched run
    python bench/discussions.py --breakdown           # where a turn's time goes (see below)

``--breakdown`` splits one turn of ``--discussions`` discussions (after 5 comments, so the
context window is full) into prefill and decoding, batched and alone, at the real prompt length
and with the prompts cut to 400 and 200 tokens: it shows how the batching gain depends on
prompt length in tokens.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 (after the path tweak that lets bench/ scripts share it)
    Timer,
    Workload,
    forced_length_tiny_model,
    machine_info,
    markdown_table,
    median,
    ratio,
    reexec_pinned,
    run_discussions,
    set_torch_threads,
    synth_disco_specs,
)


def run_one_at_a_time(specs: list[Any], engine: Any) -> tuple[float, dict[str, list]]:
    """Each discussion alone, one ``generate`` call per turn with a single request."""
    from synth_disco.discussion.state import DiscussionState

    out: dict[str, list] = {}
    with Timer() as t:
        for spec in specs:
            state = DiscussionState(spec)
            while not state.done:
                request = state.next_request()
                (completion,) = engine.generate([request])
                state.apply(completion)
            if state.status != "ok":
                raise RuntimeError(f"{spec.discussion_id} failed: {state.error}")
            out[spec.discussion_id] = [
                (c.text, c.completion_tokens) for c in state.comments[state.n_seed :]
            ]
    return t.seconds, out


def load_engine(threads: int, max_batch_size: int, max_batch_tokens: int | None) -> Any:
    from synth_disco.engines.base import EngineConfig
    from synth_disco.engines.hf import TransformersEngine

    set_torch_threads(threads)
    path = forced_length_tiny_model()
    config = EngineConfig(
        str(path),
        dtype="float32",
        device="cpu",
        max_batch_size=max_batch_size,
        max_batch_tokens=max_batch_tokens,
    )
    return TransformersEngine(config, model_id="tiny")


def breakdown(engine: Any, specs: list[Any], new_tokens: int) -> None:
    """Per-row prefill and decoding cost, batched vs alone, at three prompt lengths."""
    import time

    import torch
    from transformers import GenerationConfig

    from synth_disco.discussion.state import DiscussionState
    from synth_disco.engines.base import Completion

    states = [DiscussionState(s) for s in specs]
    filler = "lorem ipsum dolor sit amet consec"  # a 32-character comment
    for state in states:
        for _ in range(5):
            r = state.next_request()
            state.apply(Completion(r.id, filler, 0, len(filler), "length"))
    # The engine's own tokenisation and left padding, then plain generate: no runner involved.
    prompts = sorted((engine.lm.encode(s.next_request().messages) for s in states), key=len)

    def generate(rows: list[list[int]], new: int) -> float:
        ids, mask = engine.lm.left_pad(rows)
        cfg = GenerationConfig(
            max_new_tokens=new,
            do_sample=False,
            pad_token_id=engine.lm.pad_id,
            eos_token_id=engine.lm.eos_ids,
        )
        start = time.perf_counter()
        with torch.inference_mode():
            engine.lm.model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
        return time.perf_counter() - start

    def best(rows: list[list[int]], new: int, n: int = 3) -> float:
        generate(rows, new)
        return min(generate(rows, new) for _ in range(n))

    table = []
    b = len(prompts)
    for cut in (None, 400, 200):
        rows = [p[-cut:] if cut else p for p in prompts]
        length = sum(map(len, rows)) / len(rows)
        b1, bn = best(rows, 1), best(rows, new_tokens)
        sample = rows[:8]
        o1 = sum(best([r], 1, 1) for r in sample) / len(sample)
        on = sum(best([r], new_tokens, 1) for r in sample) / len(sample)
        table.append(
            [
                f"{length:.0f}",
                b1 / b * 1e3,
                (bn - b1) / b * 1e3,
                bn / b * 1e3,
                o1 * 1e3,
                (on - o1) * 1e3,
                on * 1e3,
                on / (bn / b),
            ]
        )
    print(
        f"one turn, {b} discussions, {new_tokens} new tokens; ms per reply "
        "(prefill = generate 1 token; decoding = the rest)"
    )
    print()
    print(
        markdown_table(
            [
                "prompt tokens",
                f"batch {b}: prefill",
                "decoding",
                "total",
                "alone: prefill",
                "decoding",
                "total",
                "batching gain",
            ],
            table,
        )
    )


def prefix_stats(engine: Any) -> dict[str, int]:
    """The engine's prefix-reuse counters, if it keeps them."""
    stats = getattr(engine, "prefix_stats", None)
    return dict(stats()) if callable(stats) else {}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--discussions", type=int, default=64)
    ap.add_argument("--participants", type=int, default=4)
    ap.add_argument("--turns", type=int, default=8, help="comments per discussion")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--context-window", type=int, default=5)
    ap.add_argument(
        "--baseline-discussions",
        type=int,
        default=None,
        help="run the one-at-a-time side on this many discussions and scale per comment "
        "(default: all)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads, both sides")
    ap.add_argument("--max-concurrent", type=int, default=64)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--max-batch-tokens", type=int, default=None)
    ap.add_argument("--profile", type=Path, default=None, help="cProfile one batched run here")
    ap.add_argument("--breakdown", action="store_true", help="prefill/decoding split, then exit")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    reexec_pinned(args.threads)
    logging.getLogger("synth_disco").setLevel(logging.WARNING)
    w = Workload(
        "discussions",
        args.discussions,
        args.participants,
        args.turns,
        args.new_tokens,
        args.context_window,
    )

    def fresh_engine() -> Any:
        # A new engine (same model files) per timed run: the engine keeps prompt prefixes for
        # reuse, and a run must not find the previous run's identical prompts already there.
        return load_engine(args.threads, args.max_batch_size, args.max_batch_tokens)

    engine = fresh_engine()
    model_cfg = {"engine": "tiny", "model": "tiny", "max_new_tokens": w.new_tokens}
    specs = synth_disco_specs(w, model_cfg)
    if args.breakdown:
        breakdown(engine, specs, w.new_tokens)
        return
    nb = min(args.baseline_discussions or w.discussions, w.discussions)
    alone_specs = specs[:nb]

    # Warm-up: every code path once, so neither side pays first-call costs in its timings.
    warm = synth_disco_specs(Workload("warm", 2, w.participants, 2, 4, w.context_window), model_cfg)
    run_discussions(warm, engine, args.max_concurrent)
    run_one_at_a_time(warm[:1], engine)

    engine.close()
    batched_s: list[float] = []
    alone_s: list[float] = []
    batched = alone = {}
    reuse: dict[str, int] = {}
    for rep in range(args.repeats):
        # Interleave, alternating which side goes first, so drift in machine load hits both.
        order = ("batched", "alone") if rep % 2 == 0 else ("alone", "batched")
        for side in order:
            engine = fresh_engine()
            if side == "batched":
                secs, batched = run_discussions(specs, engine, args.max_concurrent)
                batched_s.append(secs)
                reuse = prefix_stats(engine)
            else:
                secs, alone = run_one_at_a_time(alone_specs, engine)
                alone_s.append(secs)
            engine.close()
        print(
            f"rep {rep + 1}: batched {batched_s[-1]:.2f}s, one-at-a-time {alone_s[-1]:.2f}s",
            file=sys.stderr,
        )

    if args.profile is not None:
        engine = fresh_engine()
        prof = cProfile.Profile()
        prof.enable()
        run_discussions(specs, engine, args.max_concurrent)
        prof.disable()
        engine.close()
        prof.dump_stats(str(args.profile))

    n_comments = sum(len(v) for v in batched.values())
    n_alone = sum(len(v) for v in alone.values())
    tokens = [n for v in batched.values() for _, n in v]
    tokens_alone = [n for v in alone.values() for _, n in v]
    same = sum(batched.get(d) == v for d, v in alone.items())
    forced = all(n == w.new_tokens for n in tokens + tokens_alone)

    b_rate = n_comments / median(batched_s)
    a_rate = n_alone / median(alone_s)
    rows = [
        [
            "synth-disco (DiscussionRunner, batched)",
            w.discussions,
            n_comments,
            median(batched_s),
            b_rate,
            b_rate * w.new_tokens,
            1.0,
        ],
        [
            "one request at a time (same engine)",
            nb,
            n_alone,
            median(alone_s),
            a_rate,
            a_rate * w.new_tokens,
            ratio(a_rate, b_rate),
        ],
    ]
    info = machine_info()
    print(
        f"workload: {w.discussions} discussions x {w.participants} participants x {w.turns} "
        f"turns x {w.new_tokens} new tokens, context window {w.context_window}, tiny model, "
        f"greedy, float32, {args.threads} threads, max_concurrent {args.max_concurrent}; "
        f"median of {args.repeats}"
    )
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, load {info['loadavg']}; "
        f"torch {info.get('torch')}, transformers {info.get('transformers')}"
    )
    print()
    print(
        markdown_table(
            [
                "system",
                "discussions",
                "comments",
                "seconds",
                "comments/s",
                "tokens/s",
                "vs batched",
            ],
            rows,
        )
    )
    print()
    print(f"speed-up (comments/s, batched / one at a time): {ratio(b_rate, a_rate):.1f}x")
    print(f"every reply exactly {w.new_tokens} tokens: {'yes' if forced else 'NO'}")
    print(f"identical texts (greedy): {same}/{len(alone)} discussions")
    if reuse.get("hit_tokens", 0) + reuse.get("miss_tokens", 0):
        hit = reuse["hit_tokens"] / (reuse["hit_tokens"] + reuse["miss_tokens"])
        print(f"prompt tokens served from the engine's prefix store (batched run): {hit:.0%}")


if __name__ == "__main__":
    main()
