"""Two worker processes on one run directory give the same dataset as one process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "smoke.yaml"
SETS = ["--set", "replicates=1", "--set", "discussion.turns=3", "--set", "output.shard_size=1"]


def dataset_rows(run: Path, config: str) -> list[dict]:
    files = sorted((run / "dataset" / "data" / config).glob("*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_two_processes_build_the_same_dataset_as_one(tmp_path):
    one = tmp_path / "one"
    args = ["-m", "synth_disco", "build", str(RECIPE), *SETS]
    done = subprocess.run(
        [sys.executable, *args, "--out", str(one)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["torchrun", "--nproc-per-node", "2", "--master-port", port, *args, "--out", str(two)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = (two / "logs" / "run.log").read_text()
    # Each rank really took its own shards: 4 shards split 2 + 2.
    assert log.count("(2 for this process)") == 2, log[-2000:]
    for config in ("discussions", "comments"):
        a = sorted(map(str, dataset_rows(one, config)))
        b = sorted(map(str, dataset_rows(two, config)))
        assert a == b, config
    # Label probabilities come from batched float arithmetic: other batch companions change
    # the last bits, so they are compared to float precision; everything else exactly.
    key = lambda r: (r["comment_id"], r["annotator_id"], r["dimension"])  # noqa: E731
    a = sorted(dataset_rows(one, "annotations"), key=key)
    b = sorted(dataset_rows(two, "annotations"), key=key)
    assert [key(r) for r in a] == [key(r) for r in b]
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.items() if k != "scores"} == {
            k: v for k, v in y.items() if k != "scores"
        }
        assert [s["label"] for s in x["scores"]] == [s["label"] for s in y["scores"]]
        assert [s["prob"] for s in x["scores"]] == pytest.approx(
            [s["prob"] for s in y["scores"]], abs=1e-5
        )
