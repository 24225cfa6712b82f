"""Source filters: comparisons joined with and/or/not, parsed by a small parser (never eval'd)."""

from __future__ import annotations

from pathlib import Path

import pytest

from synth_disco.errors import SourceError
from synth_disco.recipe.filters import FilterError, evaluate, parse_filter
from synth_disco.recipe.schema import SourceSpec
from synth_disco.recipe.sources import load_personas

ROWS = [
    {"id": "r1", "age": "34", "state": "MO", "party": "D", "job": "postal worker", "score": "NA"},
    {"id": "r2", "age": "61", "state": "MO", "party": "R", "job": "farmer", "score": "7.5"},
    {"id": "r3", "age": "29", "state": "TX", "party": "D", "job": "nurse", "score": "3"},
    {"id": "r4", "age": "45", "state": "IL", "party": "I", "job": "postal worker", "score": ""},
    {"id": "r5", "age": 30, "state": "MO", "party": "I", "job": "and so on", "score": 10},
]


def kept(expr: str) -> list[str]:
    node = parse_filter(expr)
    holds = evaluate(node, lambda col: [r.get(col) for r in ROWS], len(ROWS))
    return [r["id"] for r, h in zip(ROWS, holds, strict=True) if h]


@pytest.mark.parametrize(
    ("expr", "ids"),
    [
        ('age >= 30 and state == "MO"', ["r1", "r2", "r5"]),
        ("age >= 30 and state == MO", ["r1", "r2", "r5"]),
        ("age > 30 and state == 'MO'", ["r1", "r2"]),
        ("age < 30 or party == R", ["r2", "r3"]),
        ("age <= 29", ["r3"]),
        # and binds tighter than or
        ("party == D or party == I and age > 40", ["r1", "r3", "r4"]),
        ("(party == D or party == I) and age > 40", ["r4"]),
        ("not state == MO", ["r3", "r4"]),
        ("not (state == MO or state == TX)", ["r4"]),
        ("state in [TX, IL] and age != 45", ["r3"]),
        ("state not in [MO]", ["r3", "r4"]),
        ("job == postal worker and age < 40", ["r1"]),  # bare words up to `and`
        ('job == "and so on"', ["r5"]),  # a value holding a keyword is quoted
        ("age == 30.0", ["r5"]),  # numbers compare canonically
        # a cell that is not a number never satisfies an ordering comparison
        ("score >= 0", ["r2", "r3", "r5"]),
        ("not score >= 0", ["r1", "r4"]),
    ],
)
def test_filter_expressions(expr: str, ids: list[str]) -> None:
    assert kept(expr) == ids


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("age >= thirty", "compares numbers"),
        ("age >= 30 and", "expected a column name at character 14, found the end"),
        ("(age >= 30", "expected `)`"),
        ("age => 30", "unexpected '=' at character 5"),
        ("state in MO", "a list like [a, b]"),
        ("__import__('os').system('x')", "expected a comparison"),
        ("age >= 30 state == MO", "expected `and`, `or` or the end at character 11"),
        ("", "the filter is empty"),
    ],
)
def test_bad_filters_say_where(expr: str, words: str) -> None:
    with pytest.raises(FilterError, match=None) as err:
        parse_filter(expr)
    assert words in str(err.value)


def test_source_filter_error_points_at_the_filter_key(tmp_path: Path) -> None:
    spec = SourceSpec(inline=ROWS, filter="age >= 30 and")
    with pytest.raises(SourceError) as err:
        load_personas(spec, tmp_path, seed=0, pool="users")
    assert err.value.key == "filter" and "cannot parse filter" in err.value.message


def test_filter_in_a_recipe_is_reported_at_its_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from synth_disco.cli import main

    (tmp_path / "recipe.yaml").write_text(
        "name: s\nmodels: {m: {engine: tiny}}\npersonas:\n  users:\n"
        "    inline: [{age: 40}, {age: 20}]\n    filter: age >= 30 or or\n"
        "posts: [Hello?]\ndiscussion: {participants: 1}\n"
    )
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "recipe.yaml")])
    assert result.exit_code == 2
    assert "recipe.yaml:6:" in result.stderr and " personas.users.filter:" in result.stderr
