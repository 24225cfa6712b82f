"""The Python API a notebook uses: build from a path, a dict or a Recipe, with an engine
loaded once and reused."""

from __future__ import annotations

from pathlib import Path

import pytest

import synth_disco as sd

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke.yaml"
SMALL = ["replicates=1", "annotation.annotators.per_comment=1"]


def test_build_from_a_path_returns_every_config(tmp_path):
    data = sd.build(SMOKE, out=tmp_path / "run", overrides=SMALL)
    assert set(data) >= {"discussions", "comments", "annotations", "personas"}
    assert data["discussions"].num_rows == 4  # 2 x 2 cells, 1 replicate
    assert data["comments"].num_rows > 0 and data["annotations"].num_rows > 0
    # load() reads the same dataset back, from the run or the dataset folder.
    again = sd.load(tmp_path / "run")
    assert again["comments"].to_list() == data["comments"].to_list()
    assert sd.load(tmp_path / "run" / "dataset")["discussions"].num_rows == 4


def test_a_dict_recipe_and_a_shared_engine_give_the_cli_dataset(tmp_path):
    raw = sd.Recipe.from_yaml(SMOKE).to_dict()
    recipe = sd.Recipe.from_dict(raw, base_dir=SMOKE.parent, overrides=SMALL)
    assert recipe.name == "smoke" and len(recipe.fingerprint) == 64
    engine = sd.load_engine({"engine": "tiny", "model": "tiny"})
    try:
        a = sd.build(recipe, out=tmp_path / "a", engine=engine)
        # The engine stays open: a second build reuses it.
        b = sd.build(SMOKE, out=tmp_path / "b", overrides=SMALL, engine=engine)
    finally:
        engine.close()
    assert a["comments"]["text"] == b["comments"]["text"]
    # Same text as a build that loads its own engine, as the CLI does.
    c = sd.build(SMOKE, out=tmp_path / "c", overrides=SMALL)
    assert c["comments"]["text"] == a["comments"]["text"]


def test_recipe_errors_are_raised_with_every_problem(tmp_path):
    raw = sd.Recipe.from_yaml(SMOKE).to_dict()
    raw["discussion"]["turns"] = 0
    raw["replicates"] = "many"
    with pytest.raises(sd.RecipeError) as err:
        sd.Recipe.from_dict(raw, base_dir=SMOKE.parent)
    where = {p.key_path for p in err.value.problems}
    assert {"discussion.turns", "replicates"} <= where


def test_load_of_a_folder_without_a_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(sd.SynthDiscoError, match="no assembled dataset"):
        sd.load(tmp_path)
