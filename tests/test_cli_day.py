"""A researcher's day on the command line: ordinary failures are one message and an exit code
(2 bad input, 1 failure while running), `validate` checks the machine before a long run, the
build ends with a summary, `show` prints whole comments."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from synth_disco.cli import WORKFLOW, main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "smoke.yaml")
SMALL = ["--set", "replicates=1"]


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("day") / "run"
    result = run("build", SMOKE, *SMALL, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out, result.output


def test_build_ends_with_a_summary_and_the_next_command(built):
    out, output = built
    tail = output.strip().splitlines()[-6:]
    assert any(line.startswith("discussions: 4 (0 failed)") for line in tail)
    assert any("agreement (Krippendorff's alpha): " in line for line in tail)
    assert any(line.startswith("wall time: ") for line in tail)
    assert tail[-1] == f"next: synth-disco push {out.as_posix()} --repo ORG/NAME"
    assert "Loading weights" not in output  # transformers' own bars are silent without -v


def test_status_eta_comes_from_active_time(built):
    out, _ = built
    result = run("status", str(out))
    assert result.exit_code == 0
    assert "active 0:" in result.output  # not hours since the run directory was created
    assert (out / "logs" / "progress-discuss.json").exists()


def test_show_lists_levels_and_titles_and_prints_whole_comments(built):
    out, _ = built
    listing = run("show", str(out)).output.splitlines()
    assert len(listing) == 4 and all("moderation=" in line for line in listing)
    assert any("Parking" in line for line in listing)
    first = listing[0].split()[0]
    thread = run("show", str(out), "--discussion", first).output
    import pyarrow.parquet as pq

    from synth_disco.store.run_dir import RunStore

    store = RunStore(out)
    texts = [
        r["text"]
        for p in store.shard_files("discuss", "comments")
        for r in pq.read_table(p).to_pylist()
        if r["discussion_id"] == first and r["role"] == "user"
    ]
    longest = max(texts, key=len)
    # Every word of the longest comment is printed (wrapped, not cut at a width).
    assert all(word in thread for word in longest.split())
    assert "-- labels: " in thread


def test_show_on_a_folder_that_is_not_a_run_is_bad_input(tmp_path):
    result = run("show", str(tmp_path))
    assert result.exit_code == 2
    assert "not a synth-disco run directory" in result.output


def test_validate_finds_a_hub_model_missing_offline_at_its_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    text = (
        Path(SMOKE)
        .read_text()
        .replace(
            "tiny: {engine: tiny, model: tiny,",
            "tiny: {engine: transformers, model: org/not-cached,",
        )
    )
    recipe.write_text(text)
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = run("validate", str(recipe), env=env)
    assert result.exit_code == 2
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "org/not-cached" in t)
    assert f"r.yaml:{line}:" in result.output and "HF_HUB_OFFLINE" in result.output
    # build refuses it the same way, before creating a run directory
    result = run("build", str(recipe), "--out", str(tmp_path / "run"), env=env)
    assert result.exit_code == 2 and not (tmp_path / "run").exists()


def test_validate_bad_tiny_name_and_missing_local_model(tmp_path):
    result = run("validate", SMOKE, "--set", "models.tiny.model=SmolLM2")
    assert result.exit_code == 2 and "tiny" in result.output
    result = run(
        "validate",
        SMOKE,
        "--set",
        "models.tiny.engine=transformers",
        "--set",
        f"models.tiny.model={tmp_path / 'nope'}",
    )
    assert result.exit_code == 2 and "no such file or directory" in result.output


def test_validate_warns_about_unused_models_and_greedy_replicates():
    result = run(
        "validate",
        SMOKE,
        "--set",
        "models.tiny.temperature=0",
        "--set",
        "models.tinyy={engine: tiny, model: tiny}",
    )
    assert result.exit_code == 0
    assert "models.tinyy: no discussion, moderator, annotation or factor level uses" in (
        result.output
    )
    assert "did you mean 'tiny'" in result.output
    assert "temperature 0 (greedy) with 2 replicates" in result.output


def test_annotating_a_folder_with_no_syndisco_data_is_one_message(tmp_path):
    (tmp_path / "x.json").write_text('{"logs": [')
    result = run("annotate", str(tmp_path), SMOKE)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_help_lists_commands_in_workflow_order_with_examples():
    out = run("--help").output
    positions = [out.index(f"\n  {name} ") for name in WORKFLOW]
    assert positions == sorted(positions)
    assert "e.g. synth-disco build my-study/recipe.yaml --out runs/my-study" in out


def test_init_prints_the_whole_next_sequence(tmp_path):
    out = run("init", str(tmp_path / "study")).output
    for step in ("validate", "plan", "build", "show", "push"):
        assert f"synth-disco {step} " in out


def test_show_prints_a_running_discussion_from_its_post(tmp_path):
    import os
    import subprocess
    import sys

    import pyarrow.parquet as pq

    out = tmp_path / "run"
    env = {**os.environ, "SYNTH_DISCO_KILL_AT": "discuss.step:1"}
    subprocess.run(
        [sys.executable, "-m", "synth_disco", "build", SMOKE, *SMALL, "--out", str(out)],
        env=env,
        capture_output=True,
    )
    assert not list((out / "shards" / "discuss").glob("*.done.json"))  # killed mid-way
    first = pq.read_table(out / "plan.parquet").column("discussion_id")[0].as_py()
    thread = run("show", str(out), "--discussion", first).output
    assert thread.startswith("[0] ") and "(OP)" in thread.splitlines()[0]
    assert len(thread.splitlines()) > 3  # the post, then the comments journaled so far


def test_cells_of_a_thread_layout_recipe_validate_for_the_card():
    # The card lists each cell's discussion config; re-validating a dumped recipe must not
    # take defaults (annotation.context_window) as set next to layout: thread.
    from synth_disco.recipe.factorial import cell_discussions
    from synth_disco.recipe.load import load_recipe

    loaded = load_recipe(ROOT / "recipes" / "demo.yaml")  # layout: thread, a moderator factor
    assert loaded.recipe.annotation.layout == "thread"
    assert len(cell_discussions(loaded.recipe)) == 2


def test_quiet_builds_silence_library_tqdm_bars_imported_before_the_build():
    # Libraries draw bars with plain tqdm (transformers' GGUF de-quantizing): tqdm reads
    # TQDM_DISABLE only when imported, so quiet mode must switch the default itself.
    import io

    from tqdm.auto import tqdm

    from synth_disco.pipeline.build import quiet_libraries

    def drawn(**kwargs) -> str:
        out = io.StringIO()
        for _ in tqdm(range(3), file=out, desc="library bar", mininterval=0, **kwargs):
            pass
        return out.getvalue()

    with quiet_libraries(verbose=False):
        assert drawn() == ""
        assert "library bar" in drawn(disable=False)  # synth-disco's own bar asks for itself
    assert "library bar" in drawn()  # restored afterwards
    with quiet_libraries(verbose=True):
        assert "library bar" in drawn()
