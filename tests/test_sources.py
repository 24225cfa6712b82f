"""Persona and post sources: every source type, filters, sampling, ids and SynDisco layouts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from synth_disco.errors import SourceError
from synth_disco.recipe.schema import SourceSpec
from synth_disco.recipe.sources import handle_for, load_personas, load_posts

PEOPLE = [
    {"id": "p1", "name": "Ada", "age": 34, "job": "pilot", "region": "north", "w": 1},
    {"id": "p2", "name": "Bo", "age": 51, "job": "baker", "region": "south", "w": 0},
    {"id": "p3", "name": "Cy", "age": 27, "job": "nurse", "region": "north", "w": 5},
    {"id": "p4", "name": "Di", "age": 63, "job": "farmer", "region": "east", "w": 2},
]


def personas(tmp: Path, seed: int = 0, pool: str = "users", **spec: object) -> list:
    return load_personas(SourceSpec(**spec), tmp, seed=seed, pool=pool)


def posts(tmp: Path, seed: int = 0, **spec: object) -> list:
    return load_posts(SourceSpec(**spec), tmp, seed=seed)


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "yaml"])
def test_file_formats_give_the_same_personas(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"people.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(PEOPLE))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(p) + "\n" for p in PEOPLE))
    elif fmt == "yaml":
        path.write_text(yaml.safe_dump(PEOPLE))
    else:
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(PEOPLE[0]))
            w.writeheader()
            w.writerows(PEOPLE)
    got = personas(tmp_path, file=path.name)
    assert [p.id for p in got] == ["p1", "p2", "p3", "p4"]
    assert [p.name for p in got] == ["Ada", "Bo", "Cy", "Di"]
    assert dict(got[0].fields)["age"] == "34"  # every attribute, as text, also from CSV
    assert dict(got[0].fields)["job"] == "pilot"
    assert "Age: 34." in got[0].description and "Job: pilot." in got[0].description
    assert "Ada" not in got[0].description  # the name is given separately


def test_inline_strings_and_mappings(tmp_path: Path) -> None:
    got = personas(
        tmp_path, inline=["A retired sailor who loves puns.", {"username": "zed", "age": 40}]
    )
    assert got[0].description == "A retired sailor who loves puns."
    assert got[0].id == "users-00000"
    assert got[0].name == handle_for("users-00000")  # a deterministic handle
    assert got[1].name == "zed" and got[1].id == "users-00001"
    assert dict(got[1].fields) == {"username": "zed", "age": "40"}


def test_duplicate_names_get_a_suffix(tmp_path: Path) -> None:
    got = personas(tmp_path, inline=[{"name": "sam"}, {"name": "sam"}, {"name": "kim"}])
    assert [p.name for p in got] == ["sam", "sam_2", "kim"]


def test_duplicate_ids_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="'x'"):
        personas(tmp_path, inline=[{"id": "x"}, {"id": "x"}])


def test_syndisco_persona_directory(tmp_path: Path) -> None:
    d = tmp_path / "personas"
    d.mkdir()
    rec = {
        "username": "Emma35",
        "age": 35,
        "sex": "female",
        "sexual_orientation": "Heterosexual",
        "demographic_group": "Latino",
        "current_employment": "Registered Nurse",
        "education_level": "Bachelor's",
        "special_instructions": "",
        "personality_characteristics": ["compassionate", "patient", "diligent"],
    }
    (d / "emma.json").write_text(json.dumps(rec))
    (d / "gio.json").write_text(json.dumps({**rec, "username": "Giovanni72", "age": 72}))
    (d / "README.md").write_text("not a persona")
    got = personas(tmp_path, dir="personas")
    assert [(p.id, p.name) for p in got] == [("emma", "Emma35"), ("gio", "Giovanni72")]
    fields = dict(got[0].fields)
    assert fields["personality_characteristics"] == "compassionate, patient, diligent"
    assert fields["sexual_orientation"] == "Heterosexual"
    assert "Personality characteristics: compassionate, patient, diligent." in got[0].description
    assert "Special instructions" not in got[0].description  # empty fields are left out


def test_directory_of_txt_posts(tmp_path: Path) -> None:
    d = tmp_path / "topics"
    d.mkdir()
    (d / "b-tax.txt").write_text("Taxes should be simpler.\n")
    (d / "a-cars.txt").write_text("  Ban cars downtown?  \n")
    got = posts(tmp_path, dir="topics")
    assert [(p.id, p.op.author, p.op.text) for p in got] == [
        ("a-cars", "OP", "Ban cars downtown?"),
        ("b-tax", "OP", "Taxes should be simpler."),
    ]


def test_posts_texts_mappings_and_seed_threads(tmp_path: Path) -> None:
    got = posts(
        tmp_path,
        inline=[
            "Plain text post.",
            {"id": "m", "title": "T", "text": "With a title.", "author": "alice"},
            {
                "comments": [
                    {"author": "op_user", "text": "First."},
                    {"name": "bob", "text": "Reply."},
                ]
            },
        ],
    )
    assert got[0].id == "post-00000" and got[0].op.author == "OP"
    assert (got[1].id, got[1].title, got[1].op.author) == ("m", "T", "alice")
    assert [(c.author, c.text) for c in got[2].comments] == [
        ("op_user", "First."),
        ("bob", "Reply."),
    ]


def test_post_columns_mapping(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text(json.dumps({"pid": 9, "body": "Hello there", "who": "ann"}))
    got = posts(tmp_path, file="p.jsonl", columns={"id": "pid", "text": "body", "author": "who"})
    assert (got[0].id, got[0].op.text, got[0].op.author) == ("9", "Hello there", "ann")


def test_post_without_text_names_the_columns(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="columns: x"):
        posts(tmp_path, inline=[{"x": 1}])


@pytest.mark.parametrize(
    ("expr", "ids"),
    [
        ("region == north", ["p1", "p3"]),
        ("region != north", ["p2", "p4"]),
        ("region in [south, east]", ["p2", "p4"]),
        ("age == 51", ["p2"]),
        ("region not in [north]", ["p2", "p4"]),
    ],
)
def test_filters(tmp_path: Path, expr: str, ids: list[str]) -> None:
    assert [p.id for p in personas(tmp_path, inline=PEOPLE, filter=expr)] == ids


def test_filter_on_missing_column(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no column 'colour'") as err:
        personas(tmp_path, inline=PEOPLE, filter="colour == red")
    assert err.value.key == "filter"


def test_sample_is_seeded_by_recipe_seed_and_pool_without_replacement(tmp_path: Path) -> None:
    many = [{"id": f"x{i}"} for i in range(200)]
    a = [p.id for p in personas(tmp_path, seed=1, inline=many, sample=50)]
    assert len(a) == len(set(a)) == 50
    assert a == [p.id for p in personas(tmp_path, seed=1, inline=many, sample=50)]
    assert a != [p.id for p in personas(tmp_path, seed=2, inline=many, sample=50)]
    assert a != [p.id for p in personas(tmp_path, seed=1, pool="other", inline=many, sample=50)]
    # Ids come from the source position, so a sampled persona keeps its id.
    plain = [{"age": i} for i in range(200)]
    got = personas(tmp_path, seed=1, inline=plain, sample=5)
    for p in got:
        assert p.id == f"users-{int(dict(p.fields)['age']):05d}"


def test_weighted_sample(tmp_path: Path) -> None:
    rows = [{"id": f"x{i}", "w": 100 if i < 10 else (0 if i < 20 else 1)} for i in range(60)]
    counts = {"heavy": 0, "zero": 0}
    for seed in range(30):
        got = personas(tmp_path, seed=seed, inline=rows, sample=10, weight_column="w")
        ids = [int(p.id[1:]) for p in got]
        assert len(set(ids)) == 10  # without replacement
        counts["heavy"] += sum(i < 10 for i in ids)
        counts["zero"] += sum(10 <= i < 20 for i in ids)
    assert counts["zero"] == 0  # weight 0 is never drawn
    assert counts["heavy"] > 0.8 * 30 * 10


def test_weights_must_be_numbers(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a number"):
        personas(tmp_path, inline=[{"w": "x"}, {"w": 1}], sample=1, weight_column="w")


def test_hub_source_through_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Hub id goes through datasets.load_dataset; here a local dataset folder stands in."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    d = tmp_path / "hub-personas"
    d.mkdir()
    with (d / "train.jsonl").open("w") as f:
        for i in range(12):
            row = {
                "uuid": f"h{i}",
                "persona": f"Person {i}, a {['cook', 'pilot'][i % 2]}.",
                "k": i % 3,
            }
            f.write(json.dumps(row) + "\n")
    got = personas(
        tmp_path,
        seed=4,
        hub="hub-personas",
        split="train",
        columns={"id": "uuid"},
        filter="k in [0, 1]",
        sample=5,
    )
    assert len(got) == 5 and len({p.id for p in got}) == 5
    for p in got:
        i = int(p.id[1:])
        assert i % 3 in (0, 1)
        assert p.description == f"Person {i}, a {['cook', 'pilot'][i % 2]}."  # the persona text
        assert p.name == handle_for(p.id)
    again = personas(
        tmp_path,
        seed=4,
        hub="hub-personas",
        columns={"id": "uuid"},
        filter="k in [0, 1]",
        sample=5,
    )
    assert got == again


def test_hub_source_that_cannot_load(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot load dataset") as err:
        personas(tmp_path, hub="no-such-local-folder/../", split="train")
    assert err.value.key == "hub"


def test_missing_and_unparseable_files(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        personas(tmp_path, file="nope.jsonl")
    (tmp_path / "bad.json").write_text('[{"a": 1},')
    with pytest.raises(SourceError, match=r"bad.json:1:\d+: invalid JSON"):
        personas(tmp_path, file="bad.json")
    (tmp_path / "data.bin").write_text("x")
    with pytest.raises(SourceError, match="set `format`"):
        personas(tmp_path, file="data.bin")
