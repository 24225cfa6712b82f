"""Survey microdata as personas: weighted draws whose weight the model never sees, and
``persona_template`` writing each row as the persona description."""

from __future__ import annotations

from pathlib import Path

import pytest

from synth_disco.errors import SourceError
from synth_disco.recipe.schema import SourceSpec
from synth_disco.recipe.sources import load_personas

ROOT = Path(__file__).resolve().parents[1]
SURVEY = ROOT / "recipes" / "personas" / "survey-respondents.csv"


def people(**kw):
    spec = SourceSpec(file=str(SURVEY.relative_to(ROOT / "recipes")), **kw)
    return load_personas(spec, ROOT / "recipes", seed=3, pool="respondents")


def test_weight_is_never_part_of_the_description() -> None:
    got = people(sample=10, weight_column="weight")
    assert len(got) == 10
    for p in got:
        fields = dict(p.fields)
        assert "weight" in fields  # kept for analyses (reweighting) ...
        assert "Weight" not in p.description and "weight" not in p.description  # ... not shown
        assert f" {fields['weight']}." not in p.description
        assert f"State: {fields['state']}." in p.description
    # Without weight_column the column is an ordinary attribute.
    assert "Weight:" in people(sample=3)[0].description


def test_persona_template_renders_rows_without_the_weight() -> None:
    template = "A {{ age }}-year-old {{ ideology }} {{ party }} from {{ row['state'] }}."
    got = people(filter='state == "MO" and age >= 40', persona_template=template)
    assert [p.id for p in got] == ["r0102", "r0109"]
    assert got[0].description == "A 61-year-old conservative Republican from MO."
    with pytest.raises(SourceError) as err:
        people(sample=2, weight_column="weight", persona_template="Weight {{ weight }}")
    assert err.value.key == "persona_template" and "'weight' is undefined" in err.value.message
    assert "weight" not in err.value.message.split("its columns:")[1]


def test_persona_template_needs_columns_and_persona_pools(tmp_path: Path) -> None:
    from synth_disco.recipe.sources import load_posts

    with pytest.raises(SourceError, match="plain text"):
        load_personas(
            SourceSpec(inline=["A nurse."], persona_template="{{ x }}"), tmp_path, seed=0, pool="u"
        )
    with pytest.raises(SourceError, match="persona pools, not posts"):
        load_posts(SourceSpec(inline=["Hello?"], persona_template="{{ x }}"), tmp_path, seed=0)


def test_weighted_draw_favours_heavy_rows_and_is_seeded() -> None:
    heavy = {"r0107", "r0115", "r0102"}  # weights 1.44, 1.26, 1.31
    light = {"r0114", "r0108", "r0104"}  # weights 0.49, 0.58, 0.64
    counts = {"heavy": 0, "light": 0}
    for seed in range(300):
        spec = SourceSpec(file="personas/survey-respondents.csv", sample=4, weight_column="weight")
        got = {p.id for p in load_personas(spec, ROOT / "recipes", seed=seed, pool="r")}
        counts["heavy"] += len(got & heavy)
        counts["light"] += len(got & light)
    assert counts["heavy"] > 1.6 * counts["light"]
    assert people(sample=4, weight_column="weight") == people(sample=4, weight_column="weight")
