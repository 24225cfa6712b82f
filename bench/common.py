"""Shared pieces of the benchmarks: pinned environment, workload, tiny model, measuring, tables.

Everything a fair comparison needs to keep identical between the systems being compared lives
here, so both sides of every benchmark read it from one place: the thread and allocator
environment (set before the interpreter starts, because glibc and OpenMP read it only then), the
discussions (personas, posts, seeds), and the model files.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
# Venvs, model copies, generated drivers: gitignored; SYNTH_DISCO_BENCH_WORK moves it elsewhere.
WORK_DIR = Path(os.environ.get("SYNTH_DISCO_BENCH_WORK") or BENCH_DIR / "_work").resolve()

# glibc returns big freed blocks to the OS and re-faulting them costs seconds per new tensor
# shape on these VMs (see the performance notes); these keep the heap mapped. The values are
# the ones the notes measured with.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "17179869184",
    "MALLOC_TRIM_THRESHOLD_": "17179869184",
    "MALLOC_TOP_PAD_": "1073741824",
}
_PIN_MARK = "SYNTH_DISCO_BENCH_PINNED"


def pinned_env(
    threads: int, base: dict[str, str] | None = None, allocator: bool = True
) -> dict[str, str]:
    """``base`` (default: this process's environment) with threads pinned, and the allocator
    too unless ``allocator`` is False. Pinning glibc's allocator (``MALLOC_ENV``) makes the
    peak RSS of two processes comparable; it also slows large batches down (~25% for 256-row
    batches of the tiny model), so benchmarks that measure no memory leave it alone. The
    tokenizers' thread pool gets the same ``threads``."""
    env = dict(os.environ if base is None else base)
    for var in MALLOC_ENV:  # a parent's pinned allocator must not leak into an unpinned run
        if allocator:
            env[var] = MALLOC_ENV[var]
        else:
            env.pop(var, None)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    # Tokenizers batch-encode on the same CPUs, as they do for a user (their library
    # default); switching them off cost a structure run 6% of its time in tokenising.
    env["TOKENIZERS_PARALLELISM"] = "true"
    env["RAYON_NUM_THREADS"] = str(threads)
    env["TRANSFORMERS_VERBOSITY"] = "error"
    env["HF_HUB_OFFLINE"] = "1"
    env[_PIN_MARK] = f"{threads}:{int(allocator)}"
    return env


def reexec_pinned(threads: int, allocator: bool = True) -> None:
    """Restart this script under :func:`pinned_env` unless it already runs under it.

    The allocator and OpenMP read their settings once at start-up, so setting them from inside
    a running interpreter would do nothing.
    """
    if os.environ.get(_PIN_MARK) == f"{threads}:{int(allocator)}":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], pinned_env(threads, allocator=allocator))


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    # One inter-op thread: both systems run their work from a single Python thread.
    with contextlib.suppress(RuntimeError):  # already set once in this process
        torch.set_num_interop_threads(1)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats get a precision that suits their size."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # NaN: not measured
                return "n/a"
            if abs(v) >= 100:
                return f"{v:,.0f}"
            if abs(v) >= 10:
                return f"{v:.1f}"
            return f"{v:.2f}"
        return str(v)

    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


# -- machine and versions ----------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """What RESULTS.md records about where a number was measured (no host names or paths)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    for name in ("torch", "transformers"):
        try:
            mod = __import__(name)
            info[name] = mod.__version__
        except ImportError:
            pass
    return info


# -- the workload ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    """N discussions x P participants x T turns (T comments per discussion, as both systems
    count them: synth-disco's ``turns`` and SynDisco's ``conv_len``), each reply forced to
    exactly ``new_tokens`` tokens."""

    name: str
    discussions: int
    participants: int = 4
    turns: int = 8
    new_tokens: int = 32
    context_window: int = 5
    seed: int = 7

    @property
    def comments(self) -> int:
        return self.discussions * self.turns

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CONTEXT = "An online forum where people discuss current affairs."
INSTRUCTIONS = "Reply to the discussion in one or two sentences, in your own voice."
FIRST_NAMES = "Alex Sam Maria Chen Priya Omar Lena Jonas Aiko Diego Fatima Noah Ivy Tariq Rosa Ben"
JOBS = "teacher nurse engineer farmer student chef lawyer driver artist retiree clerk coder"
TRAITS = "calm blunt curious sarcastic kind stubborn cheerful anxious witty formal"
TOPICS = [
    ("Car-free city centres", "Should cities ban private cars from their centres?"),
    ("Four-day week", "Would a four-day working week make us more productive or just tired?"),
    ("Homework", "Is homework for primary school children worth it?"),
    ("Remote work", "Remote work is killing office culture, and that is a good thing."),
    ("Tipping", "Tipping should be abolished and wages raised instead."),
    ("Nuclear power", "We cannot reach our climate targets without new nuclear plants."),
    ("Social media age limit", "Nobody under sixteen should have a social media account."),
    ("Public transport", "Public transport should be free for everyone."),
]


def make_discussions(w: Workload) -> list[dict[str, Any]]:
    """The discussions of ``w`` as plain dicts (JSON-able, read by both systems' drivers).

    Each has an id, a seed, a post (title, OP author and text) and P participants with a
    persona dict. Deterministic in ``w.seed``.
    """
    rng = random.Random(w.seed)
    first, jobs = FIRST_NAMES.split(), JOBS.split()
    out = []
    for i in range(w.discussions):
        title, op = TOPICS[i % len(TOPICS)]
        names = rng.sample(first, w.participants)
        participants = [
            {
                "name": name,
                "persona": {
                    "username": name,
                    "age": str(rng.randint(18, 80)),
                    "occupation": rng.choice(jobs),
                    "personality": ", ".join(rng.sample(TRAITS.split(), 2)),
                },
            }
            for name in names
        ]
        out.append(
            {
                "id": f"d{i:05d}",
                "seed": rng.randrange(2**31),
                "title": title,
                "op_author": "OriginalPoster",
                "op": op,
                "participants": participants,
            }
        )
    return out


def persona_text(persona: dict[str, str]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in persona.items())


def synth_disco_specs(w: Workload, model_config: dict[str, Any]) -> list[Any]:
    """synth-disco ``DiscussionSpec`` objects for ``w`` (round robin, no moderator)."""
    from synth_disco.records import DiscussionSpec, Participant, Persona, Post, SeedComment

    specs = []
    for i, d in enumerate(make_discussions(w)):
        participants = tuple(
            Participant(
                name=p["name"],
                persona=Persona(
                    id=f"{d['id']}-p{j}",
                    name=p["name"],
                    description=persona_text(p["persona"]),
                ),
                variant="default",
                instructions=INSTRUCTIONS,
            )
            for j, p in enumerate(d["participants"])
        )
        specs.append(
            DiscussionSpec(
                discussion_id=d["id"],
                index=i,
                cell_id="base",
                cell={},
                replicate=i,
                seed=d["seed"],
                shard=0,
                post=Post(
                    id=f"post{i % len(TOPICS)}",
                    comments=(SeedComment(d["op_author"], d["op"]),),
                    title=d["title"],
                ),
                participants=participants,
                config={
                    "models": {"m": model_config},
                    "discussion": {
                        "turns": w.turns,
                        "context_window": w.context_window,
                        "context": CONTEXT,
                        "turn_taking": {"policy": "round_robin"},
                        "moderator": None,
                    },
                    # No stop strings: SynDisco has none, so a real model's replies would
                    # otherwise end early on synth-disco's side only (unequal work).
                    "quality": {"stop_strings": False},
                },
            )
        )
    return specs


def run_discussions(
    specs: list[Any],
    engine: Any,
    max_concurrent: int | None = None,
    order: Callable[[dict[str, Any]], Any] | None = None,
) -> tuple[float, dict[str, list]]:
    """All discussions through synth-disco's ``DiscussionRunner`` (a temporary run store);
    returns seconds and each discussion's generated comments as (text, tokens).
    ``max_concurrent``: discussions in flight (None: the runner's default); ``order``: a sort
    key over the comment rows (None: the order the shard holds them in)."""
    import tempfile

    from synth_disco.discussion.stage import DiscussionRunner
    from synth_disco.store.run_dir import RunStore

    limits = {} if max_concurrent is None else {"max_concurrent": max_concurrent}
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as tmp:
        store = RunStore(Path(tmp))
        runner = DiscussionRunner(store, lambda shard: specs, lambda cfg: engine, [], **limits)
        with Timer() as t:
            result = runner.run([0])
        if result.failed:
            raise RuntimeError(f"{result.failed} discussions failed: {result.failures[:3]}")
        rows = store.read_shard("discuss", 0, "comments").to_pylist()
    out: dict[str, list] = {}
    for r in rows if order is None else sorted(rows, key=order):
        if r["role"] not in ("op", "seed"):
            out.setdefault(r["discussion_id"], []).append((r["text"], r["completion_tokens"]))
    return t.seconds, out


# -- the model ---------------------------------------------------------------------------------
def forced_tiny_dir(seed: int = 0) -> Path:
    """Where the forced-length copy of the tiny model lives, keyed by the tiny model's version
    so that a copy of an older tiny model is never picked up after the model changes."""
    from synth_disco.engines.tiny import TINY_VERSION

    return WORK_DIR / f"{TINY_VERSION}-seed{seed}-forced"


def forced_length_tiny_model(dest: Path | None = None, seed: int = 0) -> Path:
    """A copy of synth-disco's tiny model whose generation config suppresses end-of-sequence.

    Both systems load these same files, and both call ``generate`` without overriding
    ``suppress_tokens``, so the model's own generation config applies on both sides: every
    reply runs to exactly ``max_new_tokens`` and both do the same number of decoding steps.
    """
    from synth_disco.engines.tiny import EOS_ID, ensure_tiny_model, tiny_model_dir

    dest = forced_tiny_dir(seed) if dest is None else dest
    marker = dest / "forced_length.json"
    src = ensure_tiny_model(seed)
    if (
        marker.is_file()
        and json.loads(marker.read_text()).get("source") == tiny_model_dir(seed).name
    ):
        return dest
    forced_copy(src, dest)
    marker.write_text(json.dumps({"source": tiny_model_dir(seed).name, "suppressed": [EOS_ID]}))
    return dest


def run_json_child(cmd: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run a driver that prints one JSON object as its last stdout line; return that object."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:3])} ... failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"no result from {cmd[:3]}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def forced_copy(model: Path, dest: Path | None = None) -> Path:
    """A copy of the model directory ``model`` at ``dest`` (default
    ``WORK_DIR/<name>-forced``) whose generation config suppresses end-of-sequence (files
    linked, not copied), so every reply of both systems runs to exactly ``max_new_tokens``."""
    dest = WORK_DIR / f"{model.name}-forced" if dest is None else dest
    cfg_path = model / "generation_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    config = json.loads((model / "config.json").read_text())
    eos = cfg.get("eos_token_id", config.get("eos_token_id"))
    eos_ids = sorted({eos} if isinstance(eos, int) else set(eos or []))
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in model.iterdir():
        (dest / f.name).symlink_to(f.resolve())
    (dest / "generation_config.json").unlink(missing_ok=True)
    cfg["suppress_tokens"] = sorted(set(cfg.get("suppress_tokens") or []) | set(eos_ids))
    (dest / "generation_config.json").write_text(json.dumps(cfg, indent=2))
    return dest
