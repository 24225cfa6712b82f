"""The init / validate / plan commands as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from click.testing import CliRunner

from synth_disco.cli import main

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "recipes" / "smoke.yaml")


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_plan_prints_the_design(tmp_path: Path) -> None:
    out = tmp_path / "plan.parquet"
    r = invoke("plan", SMOKE, "--output", str(out))
    assert r.exit_code == 0, r.output
    text = r.stdout
    assert "moderation: none, every_k" in text
    assert "turn_taking: round_robin, random_weighted" in text
    assert "cells:                 4" in text
    assert "discussions:           8" in text
    assert "participants each:     3" in text
    assert "turns (total):         32" in text
    assert "LLM calls (at most):" in text and "generated tokens (at most):" in text
    assert "shards:                4" in text
    assert "fingerprint:" in text
    assert pq.read_table(out).num_rows == 8


def test_plan_with_overrides() -> None:
    r = invoke("plan", SMOKE, "--set", "replicates=5", "--set", "discussion.turns=8")
    assert r.exit_code == 0, r.output
    assert "discussions:           20" in r.stdout
    assert "turns (total):         160" in r.stdout


def test_validate_ok_and_errors() -> None:
    r = invoke("validate", SMOKE)
    assert r.exit_code == 0 and "ok (4 cells, 8 discussions" in r.stdout
    r = invoke("validate", SMOKE, "--set", "discussion.participants=10")
    assert r.exit_code == 2
    assert "discussion.participants: 10 participants per discussion" in r.stderr
    assert "Traceback" not in r.output
    r = invoke("validate", "no/such/recipe.yaml")
    assert r.exit_code == 2 and "recipe file not found" in r.stderr


def test_init_validate_plan_round_trip(tmp_path: Path) -> None:
    study = tmp_path / "my-study"
    r = invoke("init", str(study))
    assert r.exit_code == 0, r.output
    assert (study / "recipe.yaml").is_file()
    assert "name: my-study" in (study / "recipe.yaml").read_text()
    r = invoke("validate", str(study / "recipe.yaml"))
    assert r.exit_code == 0, r.output
    r = invoke("plan", str(study), "--output", str(study / "plan.parquet"))  # a folder works too
    assert r.exit_code == 0, r.output
    assert (study / "plan.parquet").is_file()
    # A second init does not overwrite the user's work.
    r = invoke("init", str(study))
    assert r.exit_code == 1 and "already exists" in r.stderr
    assert invoke("init", str(study), "--force").exit_code == 0


def test_python_dash_m() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "synth_disco", "validate", SMOKE],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout
