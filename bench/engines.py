"""The same discussion workload through each engine, and through raw ``vllm.LLM.generate``.

What it measures: how much of vLLM's own throughput the ``vllm`` engine keeps once the
discussion machinery (prompts from templates, turn-taking, journals, shards) drives it. On one
loaded :class:`~synth_disco.engines.vllm.VLLMEngine`:

- ``engine: vllm``: the discussions through the ``DiscussionRunner`` (temporary run store), every
  active discussion's next turn in one ``generate`` call per step; every call's requests are
  recorded;
- raw vLLM: the recorded steps replayed through ``engine.llm.generate`` directly, the prompts
  already templated and tokenised (for free), the same step structure (a turn's prompt holds the
  earlier replies, so raw vLLM cannot run the steps at once either);
- ``engine: transformers`` (``--engines``): the same workload through the transformers engine on
  the same weights, for scale.

Reply lengths are forced equal: vLLM sides with ``ignore_eos`` and ``min_tokens`` (the engine's
``sampling_overrides``), the transformers engine through a copy of the model whose generation
config suppresses end-of-sequence. Greedy decoding; each timed vLLM run starts with an empty
prefix cache (``reset_prefix_cache``), runs alternate which side goes first, tables report
medians. Target: ``engine: vllm`` at least 90% of raw vLLM.

vLLM lives in a venv of its own (``scripts/vllm-env.sh``); run this with that venv's python, or
set ``SYNTH_DISCO_VLLM_PYTHON`` and it restarts itself there::

    PYTHONPATH=generator ~/.cache/synth-disco/vllm-venv/bin/python bench/engines.py \\
        --model ~/.cache/synth-disco/models/smollm2-135m-instruct/safetensors-float32
    python bench/engines.py --model DIR --discussions 256 --participants 4 --turns 8 \\
        --new-tokens 128 --engines vllm --compile --engine-arg gpu_memory_utilization=0.9  # GPU
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 (after the path tweak that lets bench/ scripts share it)
    Timer,
    Workload,
    forced_copy,
    machine_info,
    markdown_table,
    median,
    ratio,
    run_discussions,
    set_torch_threads,
    synth_disco_specs,
)


def reexec_in_vllm_venv() -> None:
    """Restart under ``$SYNTH_DISCO_VLLM_PYTHON`` when vLLM is not importable here."""
    import importlib.util

    target = os.environ.get("SYNTH_DISCO_VLLM_PYTHON")
    if importlib.util.find_spec("vllm") is not None:
        return
    # (Venv pythons are symlinks to one interpreter: a marker, not paths, stops a loop.)
    if not target or os.environ.get("_SYNTH_DISCO_BENCH_IN_VLLM_VENV"):
        sys.exit(
            "bench/engines.py needs vLLM: run it with the python of a venv that has it "
            "(scripts/vllm-env.sh prints one), or set SYNTH_DISCO_VLLM_PYTHON to that python"
        )
    env = dict(os.environ, _SYNTH_DISCO_BENCH_IN_VLLM_VENV="1")
    generator = str(Path(__file__).resolve().parents[1] / "generator")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [generator, env.get("PYTHONPATH")]))
    sys.stdout.flush()
    os.execve(target, [target, *sys.argv], env)


class Recorder:
    """An engine that passes every call on and keeps each ``generate`` call and its replies."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.steps: list[list[Any]] = []
        self.replies: list[list[Any]] = []
        self.model_id = engine.model_id
        self.revision = engine.revision
        self.capabilities = engine.capabilities

    def generate(self, requests: list[Any]) -> list[Any]:
        self.steps.append(list(requests))
        self.replies.append(self.engine.generate(requests))
        return self.replies[-1]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def run_raw(engine: Any, steps: list[list[Any]], new_tokens: int) -> tuple[float, list[int], list]:
    """The recorded steps through ``vllm.LLM.generate``: seconds, tokens per reply, texts."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prepared = [
        (
            [TokensPrompt(prompt_token_ids=engine._encode(r.messages)) for r in step],
            [
                SamplingParams(
                    max_tokens=new_tokens,
                    min_tokens=new_tokens,
                    ignore_eos=True,
                    temperature=0.0,
                    seed=r.seed,
                )
                for r in step
            ],
        )
        for step in steps
    ]
    lengths: list[int] = []
    texts: list[str] = []
    with Timer() as t:
        for prompts, params in prepared:
            for out in engine.llm.generate(prompts, params, use_tqdm=False):
                lengths.append(len(out.outputs[0].token_ids))
                texts.append(out.outputs[0].text)
    return t.seconds, lengths, texts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a model directory vLLM can load")
    ap.add_argument("--discussions", type=int, default=8)
    ap.add_argument("--participants", type=int, default=3)
    ap.add_argument("--turns", type=int, default=4, help="comments per discussion")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--context-window", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engines", default="vllm,transformers", help="comma list: vllm, transformers")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the transformers engine (vLLM's CPU worker binds its own: "
        "one core of two here)",
    )
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument(
        "--compile", action="store_true", help="let vLLM compile (default: enforce_eager)"
    )
    ap.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more vllm.LLM arguments (VALUE read as JSON when it parses)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    return ap.parse_args(argv)


def engine_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"max_model_len": args.max_model_len, "enforce_eager": not args.compile}
    if not any(
        a.startswith(("gpu_memory_utilization=", "kv_cache_memory_bytes=")) for a in args.engine_arg
    ):
        import torch

        if not torch.cuda.is_available():  # the CPU build reserves 92% of RAM otherwise
            out["kv_cache_memory_bytes"] = 2 << 30
    for item in args.engine_arg:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    reexec_in_vllm_venv()
    logging.getLogger("synth_disco").setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import vllm

    from synth_disco.engines.vllm import VLLMConfig, VLLMEngine

    model = args.model.expanduser().resolve()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    w = Workload(
        "engines",
        args.discussions,
        args.participants,
        args.turns,
        args.new_tokens,
        args.context_window,
    )
    n = w.new_tokens
    rows: list[list[Any]] = []
    results: dict[str, Any] = {"workload": w.to_dict(), "machine": machine_info()}

    if "transformers" in engines:  # first: vLLM's engine process is not running yet
        from synth_disco.engines.base import EngineConfig
        from synth_disco.engines.hf import TransformersEngine

        set_torch_threads(args.threads)
        forced = forced_copy(model)
        cfg = {"engine": "transformers", "model": str(forced), "max_new_tokens": n}
        specs = synth_disco_specs(w, cfg)
        hf_s: list[float] = []
        hf_out: dict[str, list] = {}
        for rep in range(args.repeats):
            # A fresh engine per run: its prefix store would find the last run's prompts.
            engine = TransformersEngine(EngineConfig(str(forced), dtype=args.dtype), model_id="m")
            secs, hf_out = run_discussions(specs, engine)
            engine.close()
            hf_s.append(secs)
            print(f"transformers rep {rep + 1}: {secs:.2f}s", file=sys.stderr)
        hf_tokens = [t for v in hf_out.values() for _, t in v]
        results["transformers_s"] = hf_s
        rows.append(["engine: transformers", hf_s, hf_tokens])

    vllm_s: list[float] = []
    raw_s: list[float] = []
    same = total = 0
    if "vllm" in engines:
        config = VLLMConfig(model=str(model), dtype=args.dtype, engine_args=engine_args(args))
        engine = VLLMEngine(config, sampling_overrides={"ignore_eos": True, "min_tokens": n})
        cfg = {"engine": "vllm", "model": str(model), "max_new_tokens": n}
        specs = synth_disco_specs(w, cfg)
        # Warm-up: every code path once, outside the timings.
        warm = synth_disco_specs(Workload("warm", 2, w.participants, 2, 4, w.context_window), cfg)
        recorder = Recorder(engine)
        run_discussions(warm, recorder)
        run_raw(engine, recorder.steps, 4)
        out: dict[str, list] = {}
        steps: list[list[Any]] = []
        replies: list[list[Any]] = []
        raw_lengths: list[int] = []
        raw_texts: list[str] = []
        for rep in range(args.repeats):
            # Interleave, alternating which side goes first; the first run is the engine's,
            # whose recorded steps raw vLLM replays (greedy: every engine run sends the same).
            order = ("engine", "raw") if rep % 2 == 0 else ("raw", "engine")
            for side in order:
                engine.llm.reset_prefix_cache()
                if side == "engine":
                    recorder = Recorder(engine)
                    secs, out = run_discussions(specs, recorder)
                    vllm_s.append(secs)
                    steps, replies = recorder.steps, recorder.replies
                else:
                    secs, raw_lengths, raw_texts = run_raw(engine, steps, n)
                    raw_s.append(secs)
            print(
                f"vllm rep {rep + 1}: engine {vllm_s[-1]:.2f}s, raw {raw_s[-1]:.2f}s",
                file=sys.stderr,
            )
        ours = [c.text for step in replies for c in step]
        same = sum(a == b for a, b in zip(ours, raw_texts, strict=True))
        total = len(raw_texts)
        engine.close()
        tokens = [t for v in out.values() for _, t in v]
        rows.append(["engine: vllm", vllm_s, tokens])
        rows.append(["raw vllm.LLM.generate (same prompts, same steps)", raw_s, raw_lengths])
        results.update({"vllm_s": vllm_s, "raw_s": raw_s, "same_text": [same, total]})

    raw_rate = w.comments / median(raw_s) if raw_s else float("nan")
    table = []
    for name, secs, tokens in rows:
        rate = w.comments / median(secs)
        table.append(
            [
                name,
                median(secs),
                rate,
                rate * n,
                f"{min(tokens)}-{max(tokens)}",
                ratio(rate, raw_rate),
            ]
        )
    info = results["machine"]
    print(
        f"workload: {w.discussions} discussions x {w.participants} participants x {w.turns} "
        f"turns x {n} new tokens (forced), context window {w.context_window}, greedy, "
        f"{args.dtype}, model {model.name}; median of {args.repeats}; transformers engine "
        f"{args.threads} thread(s)"
    )
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, load {info['loadavg']}; "
        f"vllm {vllm.__version__}, torch {info.get('torch')}, "
        f"transformers {info.get('transformers')}; engine_args {engine_args(args)}"
    )
    print()
    print(
        markdown_table(
            ["system", "seconds", "comments/s", "tokens/s", "tokens per reply", "vs raw vLLM"],
            table,
        )
    )
    if raw_s:
        print()
        print(
            f"engine: vllm / raw vLLM = {ratio(median(raw_s), median(vllm_s)):.2f} "
            f"(target >= 0.90); identical greedy replies: {same}/{total}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":  # vLLM starts its engine in another process
    main()
