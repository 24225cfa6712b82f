"""Batched vs one-at-a-time generation with the transformers engine (tiny model by default).

Simulates turn-synchronous discussions: at each turn every discussion asks for one reply whose
prompt holds the transcript so far. The batched side sends all discussions' requests of a turn
in one ``generate`` call; the baseline sends them one by one. Seeded sampling makes both sides
produce the same texts, so both see the same prompts. The baseline runs on a subset of the
discussions and is scaled up (its cost is linear in the number of requests).

Run (pin threads and the allocator the same way for both sides; both sides run in one
process, interleaved per repeat):

    MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 \
    MALLOC_TOP_PAD_=1073741824 OMP_NUM_THREADS=2 python bench/engine_batching.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from synth_disco.engines.base import ChatRequest, EngineConfig, SamplingParams
from synth_disco.engines.hf import TransformersEngine
from synth_disco.engines.tiny import ensure_tiny_model


def turn_requests(
    histories: list[list[str]], turn: int, participants: int, params: SamplingParams
) -> list[ChatRequest]:
    """One request per discussion for ``turn``: system persona, then the transcript."""
    out = []
    for d, history in enumerate(histories):
        speaker = turn % participants
        transcript = "\n\n".join(f"user{i % participants}: {c}" for i, c in enumerate(history))
        messages = [
            {"role": "system", "content": f"You are user{speaker} in an online forum thread."},
            {"role": "user", "content": f"Thread {d}: is tea better than coffee?\n\n{transcript}"},
        ]
        out.append(ChatRequest(f"d{d}-t{turn}", messages, seed=d * 1000 + turn, params=params))
    return out


def run(
    engine: TransformersEngine,
    n: int,
    turns: int,
    participants: int,
    batched: bool,
    params: SamplingParams,
) -> tuple[float, float, list[str]]:
    """Generate ``turns`` turns for ``n`` discussions: (CPU seconds, wall seconds, last texts).

    CPU seconds are reported next to wall seconds because the benchmark machines are shared:
    process CPU time is far less disturbed by other tenants than wall time.
    """
    histories: list[list[str]] = [[] for _ in range(n)]
    cpu = wall = 0.0
    for turn in range(turns):
        reqs = turn_requests(histories, turn, participants, params)
        c0, w0 = time.process_time(), time.perf_counter()
        done = engine.generate(reqs) if batched else [engine.generate([r])[0] for r in reqs]
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        for history, c in zip(histories, done, strict=True):
            history.append(c.text.strip())
    return cpu, wall, [h[-1] for h in histories]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--discussions", type=int, default=64)
    ap.add_argument("--baseline-discussions", type=int, default=8)
    ap.add_argument("--participants", type=int, default=4)
    ap.add_argument("--turns-each", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None, help="model path or hub id (default: tiny)")
    ap.add_argument(
        "--prefix-cache-mb", type=float, default=512.0, help="batched side's prefix store (0: off)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    path = args.model or str(
        ensure_tiny_model(0, Path(tempfile.gettempdir()) / "synth_disco_bench")
    )

    def batched_engine() -> TransformersEngine:
        config = EngineConfig(
            path, dtype="float32", device="cpu", prefix_cache_mb=args.prefix_cache_mb
        )
        return TransformersEngine(config)

    engine = batched_engine()
    # The baseline is plain one-at-a-time generation: no state kept between calls.
    single = TransformersEngine(
        EngineConfig(path, dtype="float32", device="cpu", prefix_cache_mb=0)
    )
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    turns = args.participants * args.turns_each
    nb = args.baseline_discussions
    scale = args.discussions / nb
    run(engine, 4, 2, args.participants, True, params)  # warm-up
    run(single, 1, 2, args.participants, False, params)

    rows = []
    for _ in range(args.repeats):
        engine.close()  # a fresh prefix store per repeat
        engine = batched_engine()
        cb, wb, texts_b = run(engine, args.discussions, turns, args.participants, True, params)
        cs, ws, texts_s = run(single, nb, turns, args.participants, False, params)
        assert texts_b[:nb] == texts_s, "batched texts differ from one-at-a-time texts"
        rows.append((cb, cs * scale, wb, ws * scale))
    cb, cs, wb, ws = (statistics.median(col) for col in zip(*rows, strict=True))
    print(
        f"{args.discussions} discussions x {turns} turns x {args.max_new_tokens} tokens, "
        f"{args.threads} thread(s), median of {args.repeats}; one-at-a-time scaled from {nb}:\n"
        f"  cpu  batched {cb:7.1f}s  one-at-a-time {cs:7.1f}s  speed-up {cs / cb:.1f}x\n"
        f"  wall batched {wb:7.1f}s  one-at-a-time {ws:7.1f}s  speed-up {ws / wb:.1f}x\n"
        f"  prefix reuse (last repeat): {engine.prefix_stats()}"
    )


if __name__ == "__main__":
    main()
