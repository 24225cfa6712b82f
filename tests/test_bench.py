"""The benchmark scripts run end to end on a tiny workload and print the tables they promise.

They run in subprocesses, as a user runs them, with their scratch folder in a temporary
directory. What is checked is what a reader of the output relies on: every row of the table,
that reply lengths were really forced equal, and that batched greedy text equals one-at-a-time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, args: list[str], work: Path) -> str:
    env = dict(os.environ, SYNTH_DISCO_BENCH_WORK=str(work))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def table_rows(out: str) -> list[list[str]]:
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in out.splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ]
    return rows[1:]  # without the header


def test_discussions_benchmark_prints_both_sides_with_equal_text(tmp_path: Path) -> None:
    out = run_script(
        "discussions.py",
        ["--discussions", "3", "--turns", "2", "--new-tokens", "4", "--repeats", "1"],
        tmp_path,
    )
    rows = table_rows(out)
    assert [r[0] for r in rows] == [
        "synth-disco (DiscussionRunner, batched)",
        "one request at a time (same engine)",
    ]
    assert [r[2] for r in rows] == ["6", "6"]  # comments: 3 discussions x 2 turns, both sides
    assert float(rows[0][4]) > 0 and float(rows[1][4]) > 0
    assert "every reply exactly 4 tokens: yes" in out
    assert "identical texts (greedy): 3/3 discussions" in out
    assert "speed-up (comments/s, batched / one at a time):" in out


def test_gpu_benchmark_tiny_runs_every_comparison_on_cpu(tmp_path: Path) -> None:
    out = run_script(
        "gpu.py",
        ["--tiny", "--discussions", "4", "--turns", "2", "--new-tokens", "4"],
        tmp_path,
    )
    rows = table_rows(out)
    labels = [r[0] for r in rows]
    assert labels[0] == "synth-disco discussions (runner)"
    assert labels[1].startswith("(a) one request at a time")
    assert labels[2].startswith("(b) engine ceiling")
    assert labels[3].startswith("(b') model.generate ceiling")
    assert labels[4].startswith("annotation, score method, layout window")
    assert labels[5].startswith("annotation, score method, layout thread")
    assert rows[0][1] == "8" and rows[2][1] == "8"  # replay covers exactly the runner's batches
    assert rows[4][1] == rows[5][1] == "24"  # (OP + 2 comments) x 4 discussions x 2 annotators
    assert "(forced: yes)" in out
    assert "vs one at a time:" in out and "of the engine ceiling:" in out


def test_vs_syndisco_shows_both_annotators_the_same_comments(tmp_path: Path) -> None:
    # SynDisco's history_ctx_len counts the target: the thread layout shows every comment of a
    # discussion (the OP and each turn), the window layout 2 earlier ones and the target.
    code = (
        "import sys; sys.path.insert(0, 'bench'); import vs_syndisco as v; "
        "w = v.WORKLOADS['medium']; "
        "print(v.annotation_history(w, 'thread'), v.annotation_history(w, 'window'), w.turns)"
    )
    env = dict(os.environ, SYNTH_DISCO_BENCH_WORK=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    thread, window, turns = map(int, out)
    assert thread == turns + 1 and window == 3


def test_structures_benchmark_counts_calls_and_matches_texts(tmp_path: Path) -> None:
    out = run_script(
        "structures.py",
        ["--discussions", "4", "--agents", "3", "--cycles", "2", "--new-tokens", "4"],
        tmp_path,
    )
    rows = table_rows(out)
    assert [r[0] for r in rows] == [
        "synth-disco (DiscussionRunner, batched)",
        "one engine call per response (same engine)",
    ]
    assert [r[2] for r in rows] == ["24", "24"]  # 4 ensembles x 3 agents x 2 cycles
    assert [r[3] for r in rows] == ["2", "24"]  # a cycle of every ensemble per engine call
    assert "every response exactly 4 tokens: yes" in out
    assert "identical texts (greedy): 4/4 ensembles" in out
    assert "engine calls per response: 0.0833 vs 1 (12x fewer)" in out


def test_vs_syndisco_model_mode_forces_lengths_and_runs_syndisco_on_a_subset(
    tmp_path: Path,
) -> None:
    # --model DIR: both systems load a linked copy of DIR whose generation config suppresses
    # end-of-sequence; SynDisco's spec holds the first N discussions, synth-disco's all of them.
    code = (
        "import json, sys; sys.path.insert(0, 'bench'); import vs_syndisco as v; "
        "from common import Workload, forced_copy; "
        "from synth_disco.engines.tiny import EOS_ID, ensure_tiny_model; "
        f"src = ensure_tiny_model(0, {str(tmp_path / 'tiny')!r}); "
        "args = v.parse_args(['--model', str(src), '--threads', '1']); "
        "forced = forced_copy(args.model); "
        "cfg = json.loads((forced / 'generation_config.json').read_text()); "
        "w = Workload('t', discussions=3, participants=2, turns=2, new_tokens=4); "
        "sub = v.child_spec(w, args, forced, 1); full = v.child_spec(w, args, forced); "
        "r = v.synth_disco_child(sub, None); "
        "print(json.dumps({'suppressed': EOS_ID in cfg['suppress_tokens'], "
        "'linked': (forced / 'model.safetensors').is_symlink(), "
        "'sub': len(sub['discussions']), 'full': len(full['discussions']), "
        "'ran': r['discussions'], 'comments': r['comments'], "
        "'tokens': [r['min_tokens'], r['max_tokens']]}))"
    )
    env = dict(os.environ, SYNTH_DISCO_BENCH_WORK=str(tmp_path / "work"))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, check=True
    ).stdout.splitlines()[-1]
    got = json.loads(out)
    assert got["suppressed"] and got["linked"]
    assert (got["sub"], got["full"]) == (1, 3)
    assert got["ran"] == 1 and got["comments"] == 2  # one discussion of 2 turns
    assert got["tokens"] == [4, 4]  # every reply forced to the workload's length


def test_floor_prints_the_ceiling_and_compares_it_with_the_targets(tmp_path: Path) -> None:
    from synth_disco.engines.tiny import ensure_tiny_model

    model = str(ensure_tiny_model(0))
    small = ["--model", model, "--prefill-shape", "2x16", "--rows", "3", "--context", "8"]
    small += ["--new-tokens", "2", "--repeats", "1", "--syndisco-prompt", "12"]
    # Many tokens per item, so the least time prints with enough digits to check.
    small += ["--comment-prompt-tokens", "4000", "--label-tokens", "4000"]
    slow = ["--syndisco-comments-per-s", "1e-9", "--syndisco-labels-per-s", "1e-9"]
    out = run_script("floor.py", [*small, *slow], tmp_path)
    rows = {r[0]: r for r in table_rows(out)}
    assert set(rows) >= {"comments/s", "labels/s"}
    for name in ("comments/s", "labels/s"):
        least, ceiling = (
            float(rows[name][2].replace(",", "")),
            float(rows[name][3].replace(",", "")),
        )
        assert least > 0 and abs(ceiling * least / 1000 - 1) < 0.05  # ceiling = 1 / least
    assert "comments: target 8x SynDisco is within reach" in out
    assert "labels: target 10x SynDisco is within reach" in out
    fast = ["--syndisco-comments-per-s", "1e9", "--syndisco-labels-per-s", "1e9"]
    out = run_script("floor.py", [*small, *fast], tmp_path)
    assert "comments: target 8x SynDisco is above the ceiling" in out
    assert "labels: target 10x SynDisco is above the ceiling" in out
