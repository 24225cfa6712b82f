"""synth-disco side by side with SynDisco 2.2.1: same discussions, same model files, same CPU.

What runs (per workload, per repetition, the two systems interleaved, each in a fresh child
process under the same thread and allocator environment):

- discussions: N discussions x P participants x T turns (T comments each), the same personas,
  posts and context window (the last ``context_window`` comments), round robin, greedy; every
  reply is exactly ``new_tokens`` tokens on both sides because both load the same copy of the
  tiny model whose generation config suppresses end-of-sequence (checked: each child reports
  how many tokens it really generated);
- annotation: every comment (the OP included, as SynDisco annotates it), 2 annotators,
  1 dimension (toxicity on a 1-5 scale), each side on the discussions it just generated, each
  annotator shown the same comments on both sides: the whole discussion up to the target
  with synth-disco's ``thread`` layout (its default), the last 2 comments and the target
  with ``--annotation-layout window``.
  synth-disco uses its ``score`` method (one forward pass per label, batched); SynDisco
  generates its answer with ``max_out_tokens`` = ``--annotation-tokens`` (default 1, the
  least that can hold a 1-5 label: the most favourable setting for SynDisco).

SynDisco is installed into its own virtual environment under ``bench/_work/`` (gitignored) on
first use, with torch from the same local wheel and every shared dependency pinned to the
versions of this interpreter, so both systems run the same torch and transformers. Its driver
is generated into ``bench/_work/`` and only calls SynDisco's public API.

    python bench/vs_syndisco.py                     # small and medium, median of 3
    python bench/vs_syndisco.py --workloads small --repeats 1
    python bench/vs_syndisco.py --threads 1         # both sides on one core
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 (after the path tweak that lets bench/ scripts share it)
    CONTEXT,
    INSTRUCTIONS,
    WORK_DIR,
    Timer,
    Workload,
    forced_copy,
    forced_length_tiny_model,
    machine_info,
    make_discussions,
    markdown_table,
    median,
    peak_rss_mb,
    persona_text,
    pinned_env,
    ratio,
    run_json_child,
    set_torch_threads,
    synth_disco_specs,
)

SYNDISCO_VERSION = "2.2.1"
VENV = WORK_DIR / "syndisco-venv"
# synth-disco runs from its own venv too, installed as the README says (`pip install -e .`):
# a shared interpreter with unrelated packages (scipy, boto3, ...) makes transformers import
# them while loading a model, which adds ~45 MiB of RSS that is not synth-disco's.
SD_VENV = WORK_DIR / "synth-disco-venv"
REPO = Path(__file__).resolve().parent.parent
WORKLOADS = {
    "small": Workload("small", discussions=8),
    "medium": Workload("medium", discussions=64),
}
DIMENSION = "toxicity"
SCALE = ["1", "2", "3", "4", "5"]
DIMENSION_TEXT = (
    "Rate how toxic the last comment is, from 1 (not toxic) to 5 (very toxic). "
    "Answer with the number only."
)
ANNOTATORS = [
    {"name": "Annotator1", "persona": {"age": "34", "occupation": "content moderator"}},
    {"name": "Annotator2", "persona": {"age": "58", "occupation": "retired teacher"}},
]
# Earlier comments shown to an annotator besides the target in synth-disco's ``window`` layout.
# SynDisco's history length counts the target itself, so it gets this + 1. In the ``thread``
# layout an annotator sees every earlier comment, and so does SynDisco's (see child_spec).
ANNOTATION_CONTEXT = 2


# -- SynDisco's environment ---------------------------------------------------------------------
def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def _new_venv(venv: Path) -> list[str]:
    """Create ``venv`` with torch of this interpreter's version; its pip install command.

    Every package this interpreter has (torch, transformers, numpy, ...) is written to a
    constraints file, so that both systems run the same libraries."""
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pins = [ln for ln in freeze.splitlines() if "==" in ln and not ln.startswith("-")]
    constraints = WORK_DIR / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    pip = [str(venv_python(venv)), "-m", "pip", "install", "-q"]
    import torch

    subprocess.run([*pip, f"torch=={torch.__version__.split('+')[0]}"], check=True)
    return [*pip, "-c", str(constraints)]


def _venv_reports(venv: Path, code: str, expected: str) -> bool:
    py = venv_python(venv)
    if not py.exists():
        return False
    done = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip() == expected


def ensure_syndisco() -> Path:
    """Create the SynDisco venv if missing; return its python."""
    check = "import syndisco; print(syndisco.__version__)"
    if not _venv_reports(VENV, check, SYNDISCO_VERSION):
        print(f"installing SynDisco {SYNDISCO_VERSION} into bench/_work ...", file=sys.stderr)
        # SynDisco 2.x declares Python >= 3.12, hence the flag (a plain install on 3.11
        # silently picks the old 1.0.2 with another API).
        pip = _new_venv(VENV)
        subprocess.run(
            [*pip, "--ignore-requires-python", f"syndisco=={SYNDISCO_VERSION}"], check=True
        )
        if not _venv_reports(VENV, check, SYNDISCO_VERSION):
            raise RuntimeError("SynDisco install failed")
    return venv_python(VENV)


def ensure_synth_disco_venv() -> Path:
    """Create synth-disco's venv (an editable install of this checkout) if missing."""
    check = "import synth_disco, pathlib; print(pathlib.Path(synth_disco.__file__).resolve())"
    expected = str(REPO / "generator" / "synth_disco" / "__init__.py")
    if not _venv_reports(SD_VENV, check, expected):
        print("installing synth-disco (editable) into bench/_work ...", file=sys.stderr)
        pip = _new_venv(SD_VENV)
        subprocess.run([*pip, "-e", str(REPO)], check=True)
        if not _venv_reports(SD_VENV, check, expected):
            raise RuntimeError("synth-disco install into its benchmark venv failed")
    return venv_python(SD_VENV)


# The SynDisco driver, generated into bench/_work/. It uses SynDisco's public API only.
SYNDISCO_DRIVER = r'''
"""Generated by bench/vs_syndisco.py: run one workload through SynDisco, print a JSON line."""
import json, resource, sys, time

spec = json.load(open(sys.argv[1]))
start = time.perf_counter()
import torch

torch.set_num_threads(spec["threads"])
torch.set_num_interop_threads(1)
import syndisco

model = syndisco.TransformersModel(
    model_path=spec["model_path"], name="tiny", max_out_tokens=spec["new_tokens"]
)
annotator_model = syndisco.TransformersModel(
    model_path=spec["model_path"], name="tiny", max_out_tokens=spec["annotation_tokens"]
)
# Count the tokens generate() really produced (SynDisco strips and decodes the text).
generated = []
for m in (model, annotator_model):
    inner = m.model.generate

    def counted(*args, _inner=inner, **kwargs):
        out = _inner(*args, **kwargs)
        generated.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    m.model.generate = counted
startup_s = time.perf_counter() - start
rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

t0 = time.perf_counter()
logs = []
for d in spec["discussions"]:
    users = [
        syndisco.Actor(
            model=model,
            persona=p["persona"],
            context=spec["context"],
            instructions=spec["instructions"],
            name=p["name"],
        )
        for p in d["participants"]
    ]
    discussion = syndisco.Discussion(
        next_turn_manager=syndisco.QueueTurnManager(),
        users=users,
        history_context_len=spec["context_window"],
        conv_len=spec["turns"],
        seed_opinions=[d["op"]],
        seed_opinion_usernames=[d["op_author"]],
    )
    discussion.begin(verbose=False)
    logs.append(discussion.get_logs())
discuss_s = time.perf_counter() - t0
discuss_tokens = list(generated)
generated.clear()
rss_discussed = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

t0 = time.perf_counter()
labels = 0
for a in spec["annotators"]:
    annotator = syndisco.Actor(
        model=annotator_model,
        persona=a["persona"],
        context=spec["context"],
        instructions=spec["annotation_instructions"],
        is_annotator=True,
        name=a["name"],
    )
    for log in logs:
        job = syndisco.Annotation(annotator, log, history_ctx_len=spec["annotation_history"])
        job.begin(verbose=False)
        labels += len(job.get_logs())
annotate_s = time.perf_counter() - t0

comments = sum(len(log) - 1 for log in logs)  # minus the OP (a seed opinion)
print(json.dumps({
    "discussions": len(logs),
    "startup_s": startup_s,
    "discuss_s": discuss_s,
    "annotate_s": annotate_s,
    "comments": comments,
    "generated_tokens": sum(discuss_tokens),
    "min_tokens": min(discuss_tokens),
    "max_tokens": max(discuss_tokens),
    "labels": labels,
    "annotated_comments": sum(len(log) for log in logs),
    "annotation_tokens": sum(generated),
    "rss_loaded_mb": rss_loaded,
    "rss_discussed_mb": rss_discussed,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
}))
'''


# -- the synth-disco driver (this file, run with --driver) --------------------------------------
def synth_disco_child(spec: dict[str, Any], max_batch_tokens: int | None) -> dict[str, Any]:
    """Run one workload through synth-disco's runner and annotation stage; return measures.

    ``max_batch_tokens`` is the engine's padded-token budget per batch (None: the recipe
    default, rows bounded by ``max_batch_size`` only)."""
    import time

    start = time.perf_counter()
    set_torch_threads(spec["threads"])
    from synth_disco.annotation.stage import run_annotation_stage
    from synth_disco.discussion.stage import DiscussionRunner
    from synth_disco.engines.base import EngineConfig
    from synth_disco.engines.hf import TransformersEngine
    from synth_disco.recipe.schema import AnnotationConfig
    from synth_disco.records import Persona
    from synth_disco.store.run_dir import RunStore

    logging.getLogger("synth_disco").setLevel(logging.WARNING)
    config = EngineConfig(
        spec["model_path"],
        dtype="float32",
        device="cpu",
        max_batch_size=spec["max_batch_size"],
        max_batch_tokens=max_batch_tokens,
    )
    engine = TransformersEngine(config, model_id="tiny")
    startup_s = time.perf_counter() - start
    rss_loaded = peak_rss_mb()
    w = Workload(**spec["workload"])
    model_cfg = {"engine": "tiny", "model": "tiny", "max_new_tokens": w.new_tokens}
    specs = synth_disco_specs(w, model_cfg)[: len(spec["discussions"])]
    cfg = AnnotationConfig.model_validate(
        {
            "annotators": {"pool": "annotators", "per_comment": "all"},
            "layout": spec["annotation_layout"],
            **(
                {"context_window": ANNOTATION_CONTEXT}
                if spec["annotation_layout"] == "window"
                else {}
            ),
            "method": "score",
            "include_seed": True,
            "instructions": spec["context"],
            "dimensions": {DIMENSION: {"scale": SCALE, "instructions": DIMENSION_TEXT}},
        }
    )
    annotators = [
        Persona(id=f"a{i}", name=a["name"], description=persona_text(a["persona"]))
        for i, a in enumerate(spec["annotators"])
    ]
    with tempfile.TemporaryDirectory(prefix="bench-vs-") as tmp:
        store = RunStore(Path(tmp))
        runner = DiscussionRunner(
            store,
            lambda shard: specs,
            lambda c: engine,
            [],
            max_concurrent=spec["max_concurrent"],
        )
        with Timer() as t_disc:
            result = runner.run([0])
        if result.failed:
            raise RuntimeError(f"{result.failed} discussions failed: {result.failures[:3]}")
        comments = store.read_shard("discuss", 0, "comments")
        rss_discussed = peak_rss_mb()
        with Timer() as t_ann:
            ann = run_annotation_stage(
                store,
                lambda shard: store.read_shard("discuss", shard, "comments"),
                [0],
                cfg,
                annotators,
                engine,
                model_name="tiny",
                seed=w.seed,
                progress=lambda n: None,
            )
        labels = store.read_shard("annotate", 0, "annotations").num_rows
    tokens = [
        r["completion_tokens"] for r in comments.to_pylist() if r["role"] not in ("op", "seed")
    ]
    return {
        "discussions": len(specs),
        "startup_s": startup_s,
        "discuss_s": t_disc.seconds,
        "annotate_s": t_ann.seconds,
        "comments": len(tokens),
        "generated_tokens": sum(tokens),
        "min_tokens": min(tokens),
        "max_tokens": max(tokens),
        "labels": labels,
        "label_failures": ann.failed,
        "annotated_comments": comments.num_rows,
        "annotation_tokens": 0,
        "annotation_layout": spec["annotation_layout"],
        "rss_loaded_mb": rss_loaded,
        "rss_discussed_mb": rss_discussed,
        "peak_rss_mb": peak_rss_mb(),
    }


# -- orchestration ------------------------------------------------------------------------------
def child_spec(
    w: Workload, args: argparse.Namespace, model_path: Path, limit: int | None = None
) -> dict[str, Any]:
    """What one child run reads; ``limit``: run only the first ``limit`` discussions."""
    return {
        "workload": w.to_dict(),
        "discussions": make_discussions(w)[:limit],
        "turns": w.turns,
        "new_tokens": w.new_tokens,
        "context_window": w.context_window,
        "model_path": str(model_path),
        "threads": args.threads,
        "context": CONTEXT,
        "instructions": INSTRUCTIONS,
        "annotators": ANNOTATORS,
        "annotation_instructions": DIMENSION_TEXT,
        "annotation_history": annotation_history(w, args.annotation_layout),
        "annotation_tokens": args.annotation_tokens,
        "annotation_layout": args.annotation_layout,
        "max_concurrent": args.max_concurrent,
        "max_batch_size": args.max_batch_size,
    }


def annotation_history(w: Workload, layout: str) -> int:
    """SynDisco's ``history_ctx_len`` (comments shown, the target included) that shows its
    annotator what synth-disco's layout shows: the target and the last ``ANNOTATION_CONTEXT``
    comments (``window``), or the whole discussion up to the target (``thread``: the OP and
    every turn fit)."""
    return ANNOTATION_CONTEXT + 1 if layout == "window" else w.turns + 1


def system_label(max_batch_tokens: int | None) -> str:
    if max_batch_tokens is None:
        return "synth-disco"
    return f"synth-disco, max_batch_tokens={max_batch_tokens}"


def run_side(
    system: str,
    spec_path: Path,
    threads: int,
    timeout: float,
    max_batch_tokens: int | None,
    sd_python: Path,
) -> dict[str, Any]:
    """One child run of ``system``; synth-disco's runs under ``sd_python``."""
    env = pinned_env(threads)
    env["TQDM_DISABLE"] = "1"  # SynDisco draws progress bars; neither side should print
    if system == "SynDisco":
        driver = WORK_DIR / "syndisco_driver.py"
        driver.write_text(SYNDISCO_DRIVER)
        cmd = [str(venv_python()), str(driver), str(spec_path)]
    else:
        cmd = [str(sd_python), str(Path(__file__).resolve()), "--driver", str(spec_path)]
        if max_batch_tokens is not None:
            cmd += ["--max-batch-tokens", str(max_batch_tokens)]
    with Timer() as t:
        out = run_json_child(cmd, env, timeout)
    out["wall_s"] = t.seconds
    return out


def summarise(w: Workload, runs: dict[str, list[dict[str, Any]]]) -> list[list[Any]]:
    """Table rows (discussions then annotation) for one workload, medians over runs."""
    rows: list[list[Any]] = []
    rates: dict[tuple[str, str], float] = {}
    for stage in ("discussions", "annotation"):
        for system, rs in runs.items():
            rss = median([r["peak_rss_mb"] for r in rs])
            if stage == "discussions":
                secs = median([r["discuss_s"] for r in rs])
                comments = rs[-1]["comments"]
                rate = comments / secs
                row = [
                    w.name,
                    stage,
                    system,
                    rs[-1]["discussions"] / secs,
                    rate,
                    float("nan"),
                    rs[-1]["generated_tokens"] / secs,
                    f"{rs[-1]['min_tokens']}-{rs[-1]['max_tokens']}",
                ]
            else:
                secs = median([r["annotate_s"] for r in rs])
                rate = rs[-1]["labels"] / secs
                row = [
                    w.name,
                    stage,
                    system,
                    rs[-1]["discussions"] / secs,
                    rs[-1]["annotated_comments"] / secs,
                    rate,
                    rs[-1]["annotation_tokens"] / secs,
                    "generate"
                    if system == "SynDisco"
                    else f"score, {rs[-1].get('annotation_layout', 'window')}",
                ]
            rates[(stage, system)] = rate
            row += [rss, secs, median([r["startup_s"] for r in rs])]
            row.append(ratio(rate, rates[(stage, "SynDisco")]))
            rows.append(row)
    return rows


HEADERS = [
    "workload",
    "stage",
    "system",
    "discussions/s",
    "comments/s",
    "labels/s",
    "generated tokens/s",
    "tokens per reply / method",
    "peak RSS MiB",
    "seconds",
    "start-up s",
    "synth-disco / SynDisco",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="small,medium", help="comma list: small, medium")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch/OpenMP threads, the same for both sides (default: every CPU this process "
        "may use, what torch itself would take)",
    )
    ap.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a model directory (transformers format, e.g. the built-in SmolLM2 as safetensors: "
        "see bench/README.md) that both systems load instead of the tiny model; replies are "
        "still forced to the workload's length by a copy whose generation config suppresses EOS",
    )
    ap.add_argument(
        "--syndisco-discussions",
        type=int,
        default=None,
        help="run SynDisco on the first N discussions of each workload only and compare per "
        "comment and per label (SynDisco runs one discussion after another, so its rates do not "
        "depend on N); default: all with the tiny model, 8 with --model (64 discussions of a "
        "real model take SynDisco most of an hour per run)",
    )
    ap.add_argument("--annotation-tokens", type=int, default=1)
    ap.add_argument(
        "--annotation-layout",
        choices=("thread", "window"),
        default="thread",
        help="synth-disco's annotation layout (thread: each discussion runs once for all its "
        "labels; window: one prompt per label with the last 2 comments)",
    )
    ap.add_argument("--max-concurrent", type=int, default=64)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument(
        "--max-batch-tokens",
        type=int,
        action="append",
        default=None,
        help="also run synth-disco with this engine token budget per batch (repeatable); "
        "the plain synth-disco row uses the recipe default (none)",
    )
    ap.add_argument(
        "--own-venv",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run synth-disco from its own venv in bench/_work, like SynDisco (default); "
        "--no-own-venv runs it with this interpreter",
    )
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per child run")
    ap.add_argument("--json", type=Path, default=None, help="also write every run here")
    ap.add_argument("--driver", type=Path, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.driver is not None:  # child: synth-disco side of one run
        spec = json.loads(args.driver.read_text())
        budget = args.max_batch_tokens[-1] if args.max_batch_tokens else None
        print(json.dumps(synth_disco_child(spec, budget)))
        return

    ensure_syndisco()
    sd_python = ensure_synth_disco_venv() if args.own_venv else Path(sys.executable)
    if args.model is not None and not (args.model / "config.json").is_file():
        raise SystemExit(f"--model {args.model}: not a model directory (no config.json)")
    model_path = forced_copy(args.model) if args.model else forced_length_tiny_model()
    model_label = f"model {args.model.name}" if args.model else "tiny model"
    limit = args.syndisco_discussions or (8 if args.model else None)
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}: use {', '.join(WORKLOADS)}")
    specs: dict[tuple[str, str], Path] = {}
    for name in names:
        for side, n in (("synth-disco", None), ("SynDisco", limit)):
            path = WORK_DIR / f"workload-{name}-{side}.json"
            path.write_text(json.dumps(child_spec(WORKLOADS[name], args, model_path, n)))
            specs[(name, side)] = path

    budgets: list[int | None] = [None, *(args.max_batch_tokens or [])]
    systems = ["SynDisco", *(system_label(b) for b in budgets)]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {n: {s: [] for s in systems} for n in names}
    loads = []
    for rep in range(args.repeats):
        for name in names:
            order = list(zip(systems, [None, *budgets], strict=True))
            if rep % 2:
                order.reverse()
            for system, budget in order:
                loads.append(os.getloadavg()[0])
                spec_path = specs[(name, "SynDisco" if system == "SynDisco" else "synth-disco")]
                r = run_side(system, spec_path, args.threads, args.timeout, budget, sd_python)
                runs[name][system].append(r)
                print(
                    f"rep {rep + 1} {name} {system}: discuss {r['discuss_s']:.1f}s, "
                    f"annotate {r['annotate_s']:.1f}s, rss {r['peak_rss_mb']:.0f} MiB",
                    file=sys.stderr,
                )

    rows = [row for name in names for row in summarise(WORKLOADS[name], runs[name])]
    info = machine_info()
    print(
        f"SynDisco {SYNDISCO_VERSION} vs synth-disco; {model_label} (forced "
        f"{WORKLOADS[names[0]].new_tokens}"
        f" new tokens per reply), greedy, float32, {args.threads} threads, pinned allocator; "
        f"median of {args.repeats} interleaved runs, each in a fresh process"
    )
    print(
        f"machine: {info['cpu']}, {info['cores']} cores; torch {info.get('torch')}, "
        f"transformers {info.get('transformers')}; 1-min load at run starts "
        f"{min(loads):.1f}-{max(loads):.1f}"
    )
    for name in names:
        w = WORKLOADS[name]
        print(
            f"{name}: {w.discussions} discussions (SynDisco: {min(limit or w.discussions, w.discussions)}) "
            f"x {w.participants} participants x {w.turns} "
            f"turns x {w.new_tokens} tokens, context window {w.context_window}; annotation: "
            f"{len(ANNOTATORS)} annotators x 1 dimension x every comment incl. the OP, "
            f"layout {args.annotation_layout} (SynDisco history_ctx_len "
            f"{annotation_history(w, args.annotation_layout)})"
        )
    print()
    print(markdown_table(HEADERS, rows))
    print()
    for name in names:
        by = {(r[1], r[2]): r for r in rows if r[0] == name}
        base_rss = by[("discussions", "SynDisco")][8]
        for system in systems[1:]:
            d, a = by[("discussions", system)], by[("annotation", system)]
            print(
                f"{name}, {system}: comments/s {d[-1]:.1f}x, annotation labels/s {a[-1]:.1f}x, "
                f"peak RSS {ratio(d[8], base_rss):.2f}x SynDisco's"
            )
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": info, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
