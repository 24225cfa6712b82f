"""Stop strings and batching: name-free header stops vs stops with every speaker's name.

The same discussions (``DiscussionRunner``, forced-length tiny model, greedy) run with three
stop-string designs, each on a fresh engine:

- ``header``: what synth-disco sends (``quality.header_stop_strings``: the turn template's
  comment headers without names; one set for every discussion of a cell);
- ``names``: ``quality.default_stop_strings(turn, names)`` per discussion: every name of the
  discussion with each header ("\\nalder wrote:", ...), so every discussion has its own set;
- ``none``: no stop strings at all (the floor).

The transformers engine batches only requests with the same stop strings and builds one
``StopStringCriteria`` per distinct set, so ``names`` runs each discussion as its own batch.
The forced-length model never writes a stop string: the difference is batching and criteria
alone. Prints a markdown table with each design's time and its ratio to ``header``.

    python bench/stop_strings.py                  # 32 discussions x 4 participants x 6 turns
    python bench/stop_strings.py --discussions 8  # a quick sanity run
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from dataclasses import replace
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
    set_torch_threads,
    synth_disco_specs,
)


class NameStops:
    """An engine wrapper that gives each request its discussion's name stop strings."""

    def __init__(self, engine: Any, stops_by_discussion: dict[str, tuple[str, ...]]):
        self.engine = engine
        self.stops = stops_by_discussion

    def generate(self, requests: list[Any]) -> list[Any]:
        out = []
        for r in requests:
            stop = self.stops[r.id.split("/")[0]]
            out.append(replace(r, params=replace(r.params, stop=stop)))
        return self.engine.generate(out)


class NoStops(NameStops):
    def generate(self, requests: list[Any]) -> list[Any]:
        return self.engine.generate(
            [replace(r, params=replace(r.params, stop=())) for r in requests]
        )


def run(specs: list[Any], engine: Any, max_concurrent: int) -> tuple[float, int]:
    from synth_disco.discussion.stage import DiscussionRunner
    from synth_disco.store.run_dir import RunStore

    with tempfile.TemporaryDirectory(prefix="bench-stops-") as tmp:
        store = RunStore(Path(tmp))
        runner = DiscussionRunner(
            store, lambda shard: specs, lambda cfg: engine, [], max_concurrent=max_concurrent
        )
        with Timer() as t:
            result = runner.run([0])
    if result.failed:
        raise RuntimeError(f"{result.failed} discussions failed: {result.failures[:3]}")
    return t.seconds, result.engine_calls


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--discussions", type=int, default=32)
    ap.add_argument("--participants", type=int, default=4)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    reexec_pinned(args.threads)
    set_torch_threads(args.threads)
    logging.getLogger("synth_disco").setLevel(logging.WARNING)

    from synth_disco.discussion.prompts import builtin_template
    from synth_disco.discussion.quality import default_stop_strings, header_stop_strings
    from synth_disco.engines.base import EngineConfig
    from synth_disco.engines.hf import TransformersEngine

    w = Workload("stops", args.discussions, args.participants, args.turns, args.new_tokens)
    model_cfg = {"engine": "tiny", "model": "tiny", "max_new_tokens": w.new_tokens}
    specs = synth_disco_specs(w, model_cfg)
    turn = builtin_template("turn.j2")
    by_discussion = {
        s.discussion_id: tuple(
            default_stop_strings(
                turn, [*(p.name for p in s.participants), s.post.op.author, "Moderator"]
            )
        )
        for s in specs
    }
    path = forced_length_tiny_model()

    def engine() -> Any:
        return TransformersEngine(EngineConfig(str(path), dtype="float32", device="cpu"))

    designs = {
        "header": lambda e: e,
        "names": lambda e: NameStops(e, by_discussion),
        "none": lambda e: NoStops(e, by_discussion),
    }
    times: dict[str, list[float]] = {k: [] for k in designs}
    calls: dict[str, int] = {}
    warm = engine()
    run(specs[:2], warm, 64)
    warm.close()
    for rep in range(args.repeats):
        order = list(designs) if rep % 2 == 0 else list(reversed(designs))
        for name in order:
            e = engine()
            secs, n_calls = run(specs, designs[name](e), 64)
            e.close()
            times[name].append(secs)
            calls[name] = n_calls
        print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))

    base = median(times["header"])
    n_stops = {
        "header": len(header_stop_strings(turn)),
        "names": round(sum(map(len, by_discussion.values())) / len(by_discussion)),
        "none": 0,
    }
    distinct = {"header": 1, "names": len(by_discussion), "none": 1}
    info = machine_info()
    print(
        f"\n{w.discussions} discussions x {w.participants} participants x {w.turns} turns x "
        f"{w.new_tokens} tokens, forced-length tiny model, greedy, {args.threads} thread(s); "
        f"median of {args.repeats}; machine: {info['cpu']}, load {info['loadavg']}\n"
    )
    print(
        markdown_table(
            [
                "stop strings",
                "strings per request",
                "distinct sets",
                "seconds",
                "comments/s",
                "time vs header",
            ],
            [
                [
                    k,
                    n_stops[k],
                    distinct[k],
                    median(v),
                    w.comments / median(v),
                    ratio(median(v), base),
                ]
                for k, v in times.items()
            ],
        )
    )


if __name__ == "__main__":
    main()
