"""Batched deliberation structures vs one engine call per agent response, on the same model.

The same ensembles (same personas, tasks, seeds; prompts built by ``StructureState``) run twice
on one loaded ``TransformersEngine`` with synth-disco's tiny model:

- synth-disco: the ``DiscussionRunner`` with a temporary run store (journals, parquet shards):
  every ready agent of every active ensemble in one engine call (a whole cycle of all
  ensembles at once);
- one call per response: each ensemble alone, ``engine.generate([one request])`` for every
  agent response, which is what a system that runs one structure at a time, one call at a
  time, does.

The tiny model's generation config suppresses end-of-sequence (``common.py``), so every
response is exactly ``--new-tokens`` tokens on both sides; greedy decoding in float32, so the
two sides must write the same texts, which the script checks and prints.

    python bench/structures.py                  # 256 ensembles x 5 agents x 2 cycles x 32 tokens
    python bench/structures.py --baseline-discussions 32   # one-call side on a subset
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 (after the path tweak that lets bench/ scripts share it)
    CONTEXT,
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

INSTRUCTIONS = "Answer the question in one or two sentences, in your own voice."


class Counting:
    """The engine, counting its ``generate`` calls and the requests in them."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.calls = 0
        self.requests = 0

    def generate(self, requests: list[Any]) -> list[Any]:
        self.calls += 1
        self.requests += len(requests)
        return self.engine.generate(requests)


def ensemble_specs(w: Workload, cycles: int, model_cfg: dict[str, Any]) -> list[Any]:
    """``w.discussions`` ensembles of ``w.participants`` agents answering their post."""
    out = []
    for spec in synth_disco_specs(w, model_cfg):
        participants = tuple(
            dataclasses.replace(p, instructions=INSTRUCTIONS) for p in spec.participants
        )
        config = {
            "models": spec.config["models"],
            "discussion": {"structure": "ensemble", "cycles": cycles, "context": CONTEXT},
        }
        out.append(dataclasses.replace(spec, participants=participants, config=config))
    return out


def run_batched(specs: list[Any], engine: Any) -> tuple[float, int, dict[str, list]]:
    """All ensembles through the runner; returns seconds, engine calls, each one's responses
    in (cycle, position) order, as the one-call side lists them."""
    counting = Counting(engine)
    seconds, out = run_discussions(
        specs,
        counting,
        max_concurrent=len(specs),
        order=lambda r: (r["discussion_id"], r["cycle"] or 0, r["position"] or 0),
    )
    return seconds, counting.calls, out


def run_one_call_per_response(specs: list[Any], engine: Any) -> tuple[float, int, dict]:
    """Each ensemble alone, one ``generate`` call with a single request per agent response."""
    from synth_disco.discussion.structure_state import StructureState

    counting = Counting(engine)
    out: dict[str, list] = {}
    with Timer() as t:
        for spec in specs:
            state = StructureState(spec)
            while not state.done:
                asks = state.next_requests()
                state.apply_all([counting.generate([a.request])[0] for a in asks])
            if state.status != "ok":
                raise RuntimeError(f"{spec.discussion_id} failed: {state.error}")
            responses = sorted(state.comments[1:], key=lambda c: (c.cycle, c.position))
            out[spec.discussion_id] = [(c.text, c.completion_tokens) for c in responses]
    return t.seconds, counting.calls, out


def load_engine(threads: int, max_batch_size: int | None, max_batch_tokens: int | None) -> Any:
    from synth_disco.engines.base import EngineConfig
    from synth_disco.engines.hf import TransformersEngine

    set_torch_threads(threads)
    limits = {"max_batch_size": max_batch_size} if max_batch_size else {}
    config = EngineConfig(
        str(forced_length_tiny_model()),
        dtype="float32",
        device="cpu",
        max_batch_tokens=max_batch_tokens,
        **limits,
    )
    return TransformersEngine(config, model_id="tiny")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--discussions", type=int, default=256, help="ensembles")
    ap.add_argument("--agents", type=int, default=5)
    ap.add_argument("--cycles", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads, the same for both sides (default: every CPU this process may use)",
    )
    ap.add_argument(
        "--max-batch-size", type=int, default=None, help="engine batch rows (default: its own)"
    )
    ap.add_argument("--max-batch-tokens", type=int, default=None)
    ap.add_argument(
        "--baseline-discussions",
        type=int,
        default=None,
        help="run the one-call side on this many ensembles only (compared per response)",
    )
    args = ap.parse_args()
    reexec_pinned(args.threads, allocator=False)  # both sides share one process: no RSS
    logging.getLogger("synth_disco").setLevel(logging.WARNING)

    w = Workload("structures", args.discussions, args.agents, 1, args.new_tokens, 0)
    model_cfg = {"engine": "tiny", "model": "tiny", "max_new_tokens": w.new_tokens}
    specs = ensemble_specs(w, args.cycles, model_cfg)
    nb = min(args.baseline_discussions or w.discussions, w.discussions)

    def fresh_engine() -> Any:
        # A new engine per timed run: the engine keeps prompt prefixes for reuse, and a run
        # must not find the previous run's identical prompts already stored.
        return load_engine(args.threads, args.max_batch_size, args.max_batch_tokens)

    # Warm-up: every code path once, so neither side pays first-call costs in its timings.
    warm_w = Workload("warm", 2, 2, 1, 4, 0)
    warm = ensemble_specs(warm_w, 1, {**model_cfg, "max_new_tokens": 4})
    engine = fresh_engine()
    run_batched(warm, engine)
    run_one_call_per_response(warm[:1], engine)
    engine.close()

    batched_s: list[float] = []
    alone_s: list[float] = []
    batched: dict[str, list] = {}
    alone: dict[str, list] = {}
    calls_b = calls_a = 0
    for rep in range(args.repeats):
        order = ("batched", "alone") if rep % 2 == 0 else ("alone", "batched")
        for side in order:
            engine = fresh_engine()
            if side == "batched":
                secs, calls_b, batched = run_batched(specs, engine)
                batched_s.append(secs)
            else:
                secs, calls_a, alone = run_one_call_per_response(specs[:nb], engine)
                alone_s.append(secs)
            engine.close()
        print(
            f"rep {rep + 1}: batched {batched_s[-1]:.2f}s, one call per response "
            f"{alone_s[-1]:.2f}s",
            file=sys.stderr,
        )

    n_b = sum(len(v) for v in batched.values())
    n_a = sum(len(v) for v in alone.values())
    tokens = [n for v in [*batched.values(), *alone.values()] for _, n in v]
    forced = all(n == w.new_tokens for n in tokens)
    same = sum(batched.get(d) == v for d, v in alone.items())
    b_rate = n_b / median(batched_s)
    a_rate = n_a / median(alone_s)
    rows = [
        [
            "synth-disco (DiscussionRunner, batched)",
            w.discussions,
            n_b,
            calls_b,
            median(batched_s),
            b_rate,
            b_rate * w.new_tokens,
            1.0,
        ],
        [
            "one engine call per response (same engine)",
            nb,
            n_a,
            calls_a,
            median(alone_s),
            a_rate,
            a_rate * w.new_tokens,
            ratio(a_rate, b_rate),
        ],
    ]
    info = machine_info()
    print(
        f"workload: {w.discussions} ensembles x {args.agents} agents x {args.cycles} cycles x "
        f"{w.new_tokens} new tokens, tiny model, greedy, float32, {args.threads} threads, "
        f"max_batch_size {args.max_batch_size or 'default'}; median of {args.repeats}"
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
                "ensembles",
                "responses",
                "engine calls",
                "seconds",
                "responses/s",
                "tokens/s",
                "vs batched",
            ],
            rows,
        )
    )
    print()
    per_b = calls_b / max(n_b, 1)
    per_a = calls_a / max(n_a, 1)
    print(
        f"engine calls per response: {per_b:.4f} vs {per_a:.0f} ({ratio(per_a, per_b):.0f}x fewer)"
    )
    print(f"speed-up (responses/s, batched / one call per response): {ratio(b_rate, a_rate):.1f}x")
    print(f"every response exactly {w.new_tokens} tokens: {'yes' if forced else 'NO'}")
    print(f"identical texts (greedy): {same}/{len(alone)} ensembles")


if __name__ == "__main__":
    main()
