"""Assembly streams: its peak memory must not grow with the size of the dataset.

Writes synthetic finished shards (through ``RunStore.finish_shard``, with the schemas of
``schemas.py``) for each size into a temporary run directory, then assembles each run in a fresh
subprocess and reports its wall time and peak resident memory::

    python bench/assemble_scale.py                       # 10k and 100k discussions, 8 comments each
    python bench/assemble_scale.py --sizes 1000 10000 --comments 4

The subprocess measures only the assembly (imports are done before the clock starts and their
memory is shown separately as the baseline).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from synth_disco.recipe.schema import Recipe
from synth_disco.records import Persona
from synth_disco.store import schemas
from synth_disco.store.run_dir import RunStore

FACTORS = {"moderation": ["none", "vanilla", "strict"], "turn_taking": ["round_robin", "random"]}
VOCAB = np.array(
    [
        "the",
        "a",
        "people",
        "forum",
        "moderator",
        "think",
        "really",
        "agree",
        "disagree",
        "why",
        "because",
        "policy",
        "post",
        "thread",
        "reply",
        "honestly",
        "evidence",
        "source",
        "claim",
        "wrong",
        "right",
        "maybe",
        "never",
        "always",
        "point",
        "issue",
    ]
)
N_PERSONAS = 1000


def bench_recipe(max_rows: int) -> tuple[Recipe, dict[str, Any]]:
    raw = {
        "name": "assemble-scale",
        "version": "1.0.0",
        "models": {"main": {"engine": "tiny", "model": "tiny"}},
        "personas": {"users": {"file": "users.jsonl"}, "annotators": {"file": "annotators.jsonl"}},
        "posts": {"file": "posts.jsonl"},
        "factors": {f"f_{f}": {lv: {} for lv in levels} for f, levels in FACTORS.items()},
        "annotation": {"dimensions": {"toxicity": {"scale": [1, 2, 3, 4, 5]}}},
        "output": {"max_rows_per_file": max_rows},
    }
    return Recipe.model_validate(raw), raw


def personas() -> dict[str, list[Persona]]:
    users = [
        Persona(f"u{i}", f"User {i}", f"persona {i}", (("age", str(18 + i % 60)),))
        for i in range(N_PERSONAS)
    ]
    return {"users": users, "annotators": [Persona(f"a{i}", f"Ann {i}") for i in range(5)]}


def _texts(rng: np.random.Generator, n: int) -> list[str]:
    lengths = rng.integers(5, 60, size=n)
    words = rng.choice(VOCAB, size=int(lengths.sum()))
    out, start = [], 0
    for k in lengths:
        out.append(" ".join(words[start : start + k]))
        start += k
    return out


def write_run(root: Path, n: int, comments: int, shard_size: int, seed: int = 0) -> RunStore:
    """A run with ``n`` finished discussions of ``comments`` comments, each annotated once."""
    store = RunStore(root)
    rng = np.random.default_rng(seed)
    factor_names = [f"f_{f}" for f in FACTORS]
    schema = schemas.discussions_schema(factor_names)
    pool = personas()["users"]
    for shard, start in enumerate(range(0, n, shard_size)):
        ids = [f"d{i:07d}" for i in range(start, min(n, start + shard_size))]
        m = len(ids)
        levels = {
            f: [FACTORS[f][(i // (1 + k)) % len(FACTORS[f])] for i in range(start, start + m)]
            for k, f in enumerate(FACTORS)
        }
        parts = [
            [
                {"name": p.name, "persona": p.to_dict(), "variant": "", "instructions": "Write."}
                for p in (pool[(i * 7 + j) % N_PERSONAS] for j in range(4))
            ]
            for i in range(start, start + m)
        ]
        discussions = pa.table(
            {
                "discussion_id": ids,
                "index": list(range(start, start + m)),
                "cell_id": [f"{a}-{b}" for a, b in zip(*levels.values(), strict=True)],
                **{f"f_{f}": v for f, v in levels.items()},
                "replicate": [0] * m,
                "seed": list(range(start, start + m)),
                "post_id": [f"p{i % 50}" for i in range(m)],
                "title": [""] * m,
                "op": _texts(rng, m),
                "op_author": ["op"] * m,
                "seed_comments": [[] for _ in range(m)],
                "participants": parts,
                "moderator": [None] * m,
                "turn_policy": ["round_robin"] * m,
                "turns": [comments] * m,
                "context_window": [5] * m,
                "model": ["tiny"] * m,
                "model_revision": ["0" * 40] * m,
                "generation": ['{"temperature": 0.0}'] * m,
                "status": ["ok"] * m,
                "error": [None] * m,
                "n_comments": [comments] * m,
                "prompt_tokens": [100 * comments] * m,
                "completion_tokens": [40 * comments] * m,
            },
            schema=schema,
        )
        c_ids = [f"{d}-c{k}" for d in ids for k in range(comments)]
        text = _texts(rng, m * comments)
        comment_table = pa.table(
            {
                "discussion_id": [d for d in ids for _ in range(comments)],
                "comment_id": c_ids,
                "index": [k for _ in ids for k in range(comments)],
                "parent_id": [None] * len(c_ids),
                "author": [f"User {k % 4}" for _ in ids for k in range(comments)],
                "role": ["user"] * len(c_ids),
                "persona_id": [f"u{k}" for _ in ids for k in range(comments)],
                "variant": [""] * len(c_ids),
                "text": text,
                "raw_text": text,
                "model": ["tiny"] * len(c_ids),
                "prompt_tokens": [100] * len(c_ids),
                "completion_tokens": [40] * len(c_ids),
                "finish_reason": ["stop"] * len(c_ids),
                "attempts": [1] * len(c_ids),
            },
            schema=schemas.COMMENTS,
        )
        labels = [str(x) for x in rng.integers(1, 6, size=len(c_ids))]
        annotations = pa.table(
            {
                "comment_id": c_ids,
                "discussion_id": comment_table["discussion_id"],
                "annotator_id": ["a0"] * len(c_ids),
                "annotator_persona": ["Ann 0"] * len(c_ids),
                "dimension": ["toxicity"] * len(c_ids),
                "label": labels,
                "scores": [[{"label": lab, "prob": 1.0}] for lab in labels],
                "method": ["score"] * len(c_ids),
                "raw_text": [""] * len(c_ids),
                "model": ["tiny"] * len(c_ids),
                "status": ["ok"] * len(c_ids),
                "attempts": [1] * len(c_ids),
            },
            schema=schemas.ANNOTATIONS,
        )
        store.finish_shard(
            "discuss",
            shard,
            {
                "discussions": discussions,
                "comments": comment_table,
                "events": pa.table({k: [] for k in schemas.EVENTS.names}, schema=schemas.EVENTS),
            },
            {"discussions": m, "comments": len(c_ids)},
            ids,
        )
        store.finish_shard(
            "annotate", shard, {"annotations": annotations}, {"annotations": len(c_ids)}, ids
        )
    return store


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(run_dir: Path, max_rows: int) -> None:
    """Runs in its own process: assemble once, print timings and memory as JSON."""
    from synth_disco.dataset.assembly import assemble

    recipe, raw = bench_recipe(max_rows)
    pools = personas()
    baseline = _rss_mb()
    start = time.perf_counter()
    out = assemble(RunStore(run_dir), recipe, raw, "bench", personas=pools)
    wall = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    print(
        json.dumps(
            {
                "wall_s": wall,
                "peak_rss_mb": _rss_mb(),
                "baseline_rss_mb": baseline,
                "dataset_mb": size / 2**20,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--comments", type=int, default=8, help="comments per discussion")
    ap.add_argument("--shard-size", type=int, default=256, help="discussions per shard")
    ap.add_argument("--max-rows", type=int, default=100_000, help="rows per parquet file")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the runs here")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.max_rows)
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="assemble-scale-"))
    results = []
    try:
        for n in args.sizes:
            run = work / f"run-{n}"
            t0 = time.perf_counter()
            write_run(run, n, args.comments, args.shard_size)
            gen = time.perf_counter() - t0
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(run), "--max-rows", str(args.max_rows)],
                check=True,
                capture_output=True,
                text=True,
            )
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append({"discussions": n, "comments": n * args.comments, "gen_s": gen, **r})
            print(f"{n} discussions: assembled in {r['wall_s']:.1f} s", file=sys.stderr)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"{'discussions':>11} {'comments':>9} {'dataset MB':>10} {'wall s':>7} "
        f"{'rows/s':>9} {'peak RSS MB':>11} {'baseline MB':>11} {'assembly MB':>11}"
    )
    for r in results:
        rows = r["comments"] * 2 + r["discussions"]  # comments + annotations + discussions
        print(
            f"{r['discussions']:>11} {r['comments']:>9} {r['dataset_mb']:>10.1f} "
            f"{r['wall_s']:>7.1f} {rows / r['wall_s']:>9.0f} {r['peak_rss_mb']:>11.0f} "
            f"{r['baseline_rss_mb']:>11.0f} {r['peak_rss_mb'] - r['baseline_rss_mb']:>11.0f}"
        )
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(
            f"ratio {b['discussions']}/{a['discussions']}: "
            f"wall x{b['wall_s'] / a['wall_s']:.2f}, peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}, "
            f"assembly memory x{(b['peak_rss_mb'] - b['baseline_rss_mb']) / max(1e-9, a['peak_rss_mb'] - a['baseline_rss_mb']):.2f}"
        )


if __name__ == "__main__":
    main()
