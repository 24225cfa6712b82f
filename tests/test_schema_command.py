"""`synth-disco schema`: a JSON Schema editors can check recipes with."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from synth_disco.cli import main
from synth_disco.recipe.yaml_marks import parse_yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = [
    *sorted((ROOT / "recipes").glob("*.yaml")),
    ROOT / "generator/synth_disco/scaffold/recipe.yaml",
]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    jsonschema.Draft202012Validator.check_schema(doc)
    return jsonschema.Draft202012Validator(doc)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_passes_the_schema(validator, path):
    data = parse_yaml(path.read_text(encoding="utf-8"), str(path)).data
    assert [e.message for e in validator.iter_errors(data)] == []


def test_the_schema_catches_what_validate_catches(validator):
    data = parse_yaml((ROOT / "recipes/smoke.yaml").read_text(), "smoke.yaml").data
    data["discussion"]["turnz"] = 3  # a typo
    data["replicates"] = "many"
    errors = {tuple(e.absolute_path) for e in validator.iter_errors(data)}
    assert ("discussion",) in errors and ("replicates",) in errors
