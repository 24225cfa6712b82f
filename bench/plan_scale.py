"""How long planning takes, and how much memory, for 1k, 10k and 100k discussions.

    python bench/plan_scale.py            # 1k, 10k, 100k
    python bench/plan_scale.py 1000000    # other sizes

Each size runs in a fresh subprocess (so peak RSS is that size's own): load and validate a
recipe (2 factors x 2 levels, 7 participants from 1,000 personas, 30% variant, 200 posts),
iterate every DiscussionSpec, then write plan.parquet. Work files go to bench/_work/.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

WORK = Path(__file__).resolve().parent / "_work"
N_CELLS = 4

RECIPE = """\
name: plan-scale
seed: 3
models: {{m: {{engine: tiny, model: tiny, max_new_tokens: 64}}}}
personas:
  users: {{file: users.jsonl}}
posts: {{file: posts.jsonl}}
discussion:
  participants: {{min: 5, max: 7}}
  turns: 15
  instructions: Write one comment.
  variants: {{troll: {{share: 0.3, instructions: Derail the thread.}}}}
factors:
  moderation:
    none: {{}}
    on: {{discussion.moderator: {{instructions: Keep it civil., k: 3}}}}
  turn_taking:
    round_robin: {{discussion.turn_taking.policy: round_robin}}
    random_weighted: {{discussion.turn_taking.policy: random_weighted}}
replicates: {replicates}
output: {{shard_size: 64}}
"""


def write_inputs(n: int) -> Path:
    d = WORK / f"n{n}"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "users.jsonl", "w") as f:
        for i in range(1000):
            rec = {"id": f"u{i}", "username": f"user{i}", "age": 20 + i % 60, "job": "tester"}
            f.write(json.dumps(rec) + "\n")
    with open(d / "posts.jsonl", "w") as f:
        for i in range(200):
            f.write(json.dumps({"id": f"p{i}", "text": f"Post number {i}."}) + "\n")
    (d / "recipe.yaml").write_text(RECIPE.format(replicates=-(-n // N_CELLS)))
    return d


def child(d: Path) -> None:
    """Run in the subprocess: time each step, print one JSON line."""
    from synth_disco.design.plan import plan, write_plan
    from synth_disco.recipe.load import load_recipe

    t0 = time.perf_counter()
    loaded = load_recipe(d / "recipe.yaml")
    p = plan(loaded)
    t1 = time.perf_counter()
    n = sum(1 for _ in p.iter_specs())
    t2 = time.perf_counter()
    write_plan(p, d / "plan.parquet")
    t3 = time.perf_counter()
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "discussions": n,
                "load_s": t1 - t0,
                "specs_s": t2 - t1,
                "write_s": t3 - t2,
                "peak_rss_mib": rss_kib / 1024,
                "parquet_mib": (d / "plan.parquet").stat().st_size / 2**20,
            }
        )
    )


def main(sizes: list[int]) -> None:
    print(
        f"{'discussions':>12} {'load+plan s':>12} {'all specs s':>12} {'write s':>8} "
        f"{'total s':>8} {'peak RSS MiB':>13} {'parquet MiB':>12}"
    )
    for n in sizes:
        d = write_inputs(n)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(d)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        total = r["load_s"] + r["specs_s"] + r["write_s"]
        print(
            f"{r['discussions']:>12,} {r['load_s']:>12.2f} {r['specs_s']:>12.2f} "
            f"{r['write_s']:>8.2f} {total:>8.2f} {r['peak_rss_mib']:>13.0f} "
            f"{r['parquet_mib']:>12.2f}"
        )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]))
    else:
        main([int(a) for a in sys.argv[1:]] or [1_000, 10_000, 100_000])
