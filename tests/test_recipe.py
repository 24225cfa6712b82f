"""Recipe loading and validation: every problem reported with file, line and key path."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from synth_disco.cli import main
from synth_disco.errors import Problem, RecipeError
from synth_disco.recipe.load import load_recipe

REPO = Path(__file__).resolve().parents[1]

# Line numbers matter: the bad-recipe table below edits these lines by number.
BASE = """\
name: study
version: 1.0.0
seed: 5
models:
  main: {engine: tiny, model: tiny, max_new_tokens: 16}
personas:
  users: {file: users.jsonl}
  annotators: [careful rater, lenient rater]
posts: {file: posts.jsonl}
discussion:
  model: main
  participants: 3
  turns: 4
  turn_taking: {policy: random_weighted, p_respond: 0.4}
  instructions: {file: user.md}
  variants:
    troll: {share: 0.3, instructions: Stir things up.}
factors:
  moderation:
    none: {}
    strict:
      discussion.moderator: {instructions: Be strict., k: 2}
replicates: 2
annotation:
  model: main
  annotators: {pool: annotators, per_comment: 2}
  dimensions:
    toxicity: {scale: [1, 2, 3]}
output: {shard_size: 2}
"""

USERS = [
    {"id": f"p{i}", "username": f"user{i}", "age": 20 + i, "hobby": h}
    for i, h in enumerate(["chess", "running", "baking", "birds", "radio"])
]
POSTS = [
    {"id": "a", "text": "Should the pool open earlier?"},
    {"id": "b", "text": "Is the new bus timetable better?"},
    {
        "id": "c",
        "comments": [{"author": "OP", "text": "Dogs in cafes?"}, {"author": "k", "text": "No."}],
    },
]


def write_study(root: Path, recipe: str = BASE) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "users.jsonl").write_text("".join(json.dumps(u) + "\n" for u in USERS))
    (root / "posts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in POSTS))
    (root / "user.md").write_text("Write one short comment.\n")
    (root / "recipe.yaml").write_text(recipe)
    return root / "recipe.yaml"


def with_lines(**edits: str) -> str:
    """BASE with lines replaced: with_lines(l13="  turns: -2")."""
    lines = BASE.splitlines()
    for key, text in edits.items():
        lines[int(key[1:]) - 1] = text
    return "\n".join(lines) + "\n"


@pytest.fixture
def study(tmp_path: Path) -> Path:
    return write_study(tmp_path / "study")


def run_cli(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# (id, recipe text, extra setup, expected line, expected key path, expected words)
Setup = Callable[[Path], None]
BAD: list[tuple[str, str, Setup | None, int, str, str]] = [
    ("malformed-yaml", with_lines(l13="  turns: 4: 5"), None, 13, "", "invalid YAML"),
    (
        "python-tag",
        with_lines(l3="seed: !!python/object/apply:os.system ['touch pwned']"),
        None,
        3,
        "seed",
        "not allowed",
    ),
    ("wrong-type", with_lines(l13="  turns: many"), None, 13, "discussion.turns", "valid integer"),
    ("negative-turns", with_lines(l13="  turns: -2"), None, 13, "discussion.turns", "greater than"),
    ("unknown-key", with_lines(l13="  turnz: 4"), None, 13, "discussion.turnz", "'turns'"),
    ("unknown-top-key", with_lines(l23="replicate: 2"), None, 23, "replicate", "'replicates'"),
    ("bad-semver-number", with_lines(l2="version: 1.0"), None, 2, "version", "semantic version"),
    ("bad-semver-text", with_lines(l2="version: v1"), None, 2, "version", "semantic version"),
    ("bad-name", with_lines(l1="name: my study"), None, 1, "name", "letters, digits"),
    (
        "missing-persona-file",
        with_lines(l7="  users: {file: nobody.jsonl}"),
        None,
        7,
        "personas.users.file",
        "not found",
    ),
    (
        "missing-text-file",
        with_lines(l15="  instructions: {file: nothing.md}"),
        None,
        15,
        "discussion.instructions.file",
        "not found",
    ),
    (
        "bad-jsonl",
        BASE,
        lambda d: (d / "users.jsonl").write_text('{"id": "x"}\n{"id": \n'),
        7,
        "personas.users.file",
        "users.jsonl:2",
    ),
    ("empty-pool", with_lines(l8="  annotators: []"), None, 8, "personas.annotators", "empty"),
    (
        "too-many-participants",
        with_lines(l12="  participants: 9"),
        None,
        12,
        "discussion.participants",
        "only 5 personas",
    ),
    (
        "range-max-over-pool",
        with_lines(l12="  participants: {min: 2, max: 6}"),
        None,
        12,
        "discussion.participants",
        "only 5 personas",
    ),
    (
        "range-min-over-max",
        with_lines(l12="  participants: {min: 4, max: 2}"),
        None,
        12,
        "discussion.participants",
        "greater than max",
    ),
    (
        "factor-unknown-key",
        with_lines(l22="      discussion.moderatr: {k: 2}"),
        None,
        22,
        "factors.moderation.strict.discussion.moderatr",
        "did you mean 'moderator'",
    ),
    (
        "factor-invalid-value",
        with_lines(l22="      discussion.moderator: {k: 0}"),
        None,
        22,
        "factors.moderation.strict.discussion.moderator.k",
        "'strict'",
    ),
    (
        "factor-shared-key",
        with_lines(l22="      seed: 4"),
        None,
        22,
        "factors.moderation.strict.seed",
        "shared by all cells",
    ),
    (
        "factor-reserved-name",
        with_lines(l19="  seed:"),
        None,
        19,
        "factors.seed",
        "column",
    ),
    (
        "template-undefined",
        with_lines(l16="  templates:", l17="    system: 'Forum rules. {{ contxt }}'"),
        None,
        17,
        "discussion.templates.system",
        "did you mean 'context'",
    ),
    (
        "template-syntax",
        with_lines(l16="  templates:", l17="    turn: '{% if %}'"),
        None,
        17,
        "discussion.templates.turn",
        "syntax error",
    ),
    ("unknown-model", with_lines(l11="  model: mian"), None, 11, "discussion.model", "'main'"),
    (
        "unknown-annotator-pool",
        with_lines(l26="  annotators: {pool: annotatrs, per_comment: 2}"),
        None,
        26,
        "annotation.annotators.pool",
        "'annotators'",
    ),
    (
        "too-many-annotators",
        with_lines(l26="  annotators: {pool: annotators, per_comment: 3}"),
        None,
        26,
        "annotation.annotators.per_comment",
        "only 2",
    ),
    (
        "bad-policy",
        with_lines(l14="  turn_taking: {policy: randomly}"),
        None,
        14,
        "discussion.turn_taking.policy",
        "did you mean 'random'",
    ),
    (
        "probability-over-one",
        with_lines(l14="  turn_taking: {p_respond: 1.5}"),
        None,
        14,
        "discussion.turn_taking.p_respond",
        "less than or equal to 1",
    ),
    ("duplicate-key", with_lines(l12="  turns: 5"), None, 13, "discussion.turns", "duplicate"),
    (
        "one-label-dimension",
        with_lines(l28="    toxicity: {scale: [1]}"),
        None,
        28,
        "annotation.dimensions.toxicity",
        "at least 2 labels",
    ),
    (
        "two-source-kinds",
        with_lines(l7="  users: {file: users.jsonl, dir: people}"),
        None,
        7,
        "personas.users",
        "exactly one of",
    ),
    (
        "bad-filter",
        with_lines(l7="  users: {file: users.jsonl, filter: 'age >> 3'}"),
        None,
        7,
        "personas.users.filter",
        "cannot parse filter",
    ),
    (
        "filter-empties-pool",
        with_lines(l7="  users: {file: users.jsonl, filter: 'hobby == golf'}"),
        None,
        7,
        "personas.users",
        "empty after `filter`",
    ),
    (
        "random-design-too-many-cells",
        with_lines(l29="design: {mode: random, cells: 5}"),
        None,
        29,
        "design.cells",
        "only 2",
    ),
    (
        "factors-overlap",
        with_lines(
            l22="      discussion.turn_taking.policy: random",
            l23="  second:\n    a: {discussion.turn_taking: {policy: round_robin}}\nreplicates: 2",
        ),
        None,
        24,
        "factors.second.a.discussion.turn_taking",
        "also set by factor 'moderation'",
    ),
    (
        "text-ref-typo",
        with_lines(l15="  instructions: {fiel: user.md}"),
        None,
        15,
        "discussion.instructions.fiel",
        "did you mean 'file'",
    ),
]


@pytest.mark.parametrize(
    ("text", "setup", "line", "key", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD],
)
def test_bad_recipe_is_reported_with_line_and_key(
    tmp_path: Path, text: str, setup: Setup | None, line: int, key: str, words: str
) -> None:
    recipe = write_study(tmp_path / "s", text)
    if setup:
        setup(recipe.parent)
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    wanted = [
        ln
        for ln in result.stderr.splitlines()
        if f"recipe.yaml:{line}:" in ln and (not key or f" {key}:" in ln)
    ]
    assert wanted, result.stderr
    assert any(words in ln for ln in wanted), result.stderr


def test_python_tags_are_never_constructed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = write_study(
        tmp_path / "s", with_lines(l3="seed: !!python/object/apply:os.system ['touch pwned']")
    )
    monkeypatch.chdir(recipe.parent)
    with pytest.raises(RecipeError):
        load_recipe(recipe)
    assert not (recipe.parent / "pwned").exists()


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    text = with_lines(l2="version: 1", l11="  model: other", l13="  turns: 0", l23="replicates: x")
    with pytest.raises(RecipeError) as err:
        load_recipe(write_study(tmp_path / "s", text))
    keys = {p.key_path for p in err.value.problems}
    assert {"version", "discussion.model", "discussion.turns", "replicates"} <= keys
    # str(err) lists every problem as file:line:column: key: message
    first = str(err.value).splitlines()[0]
    assert first.endswith("recipe.yaml:2:1: version: '1' is not a semantic version like 1.0.0")


def test_custom_templates_that_render_are_accepted(tmp_path: Path) -> None:
    text = with_lines(
        l16="  templates:",
        l17="    turn: '{{ op.text }} {% for c in comments %}{{ c.author }}{% endfor %} "
        "{{ speaker.name }}'",
    )
    loaded = load_recipe(write_study(tmp_path / "s", text))
    assert loaded.recipe.discussion.templates.turn.startswith("{{ op.text }}")


def test_builtin_prompt_templates_pass_the_template_check() -> None:
    """The sample contexts validation renders with match what the prompt builders pass."""
    from synth_disco.annotation.prompts import WINDOW
    from synth_disco.annotation.prompts import builtin_template as annotation_template
    from synth_disco.discussion.prompts import builtin_template
    from synth_disco.recipe.templates import check_template, template_environment

    env = template_environment()
    assert check_template(env, builtin_template("system.j2"), "system") is None
    assert check_template(env, builtin_template("turn.j2"), "turn") is None
    assert check_template(env, annotation_template(WINDOW), "annotation") is None
    assert check_template(env, '{% include "_dimension.j2" %}', "annotation") is None
    assert check_template(env, '{% include "../../errors.py" %}', "annotation") is not None
    assert check_template(env, "{{ persona.name }}", "turn") is not None


def test_problem_format() -> None:
    p = Problem("recipe.yaml", 12, 5, "discussion.turns", "Input should be greater than 0")
    assert str(p) == "recipe.yaml:12:5: discussion.turns: Input should be greater than 0"
    assert str(Problem("--set a=1", None, None, "a", "unknown key")) == "--set a=1: a: unknown key"


def test_valid_recipe_resolves_text_files_and_pools(study: Path) -> None:
    loaded = load_recipe(study)
    assert loaded.recipe.discussion.instructions == "Write one short comment."
    assert loaded.raw["discussion"]["instructions"] == "Write one short comment."
    assert [p.id for p in loaded.personas("users")] == ["p0", "p1", "p2", "p3", "p4"]
    assert [p.name for p in loaded.personas("annotators")][0]  # generated handles
    assert [p.id for p in loaded.posts()] == ["a", "b", "c"]
    assert len(loaded.fingerprint) == 64
    assert set(loaded.files) == {"users.jsonl", "posts.jsonl", "user.md"}
    json.dumps(loaded.raw)  # JSON-able


def test_overrides_apply_before_validation(study: Path) -> None:
    loaded = load_recipe(
        study,
        [
            "replicates=5",
            "discussion.turns=8",
            "discussion.turn_taking={policy: random}",
            "posts=[just one post]",
        ],
    )
    assert loaded.recipe.replicates == 5
    assert loaded.recipe.discussion.turns == 8
    assert loaded.recipe.discussion.turn_taking.policy == "random"
    assert loaded.recipe.discussion.turn_taking.p_respond == 0.4  # replaced: back to default
    assert [p.op.text for p in loaded.posts()] == ["just one post"]


@pytest.mark.parametrize(
    ("arg", "words"),
    [
        ("discussion.turnz=3", "did you mean 'turns'"),
        ("discussion.turns=0", "greater than or equal to 1"),
        ("discussion.turns", "KEY=VALUE"),
        ("name.sub=3", "is a str"),
    ],
)
def test_bad_override_is_an_error(study: Path, arg: str, words: str) -> None:
    result = CliRunner().invoke(main, ["validate", str(study), "--set", arg])
    assert result.exit_code == 2
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith(f"--set {arg}"))
    assert words in line


def test_fingerprint_tracks_content_not_location(tmp_path: Path) -> None:
    a = load_recipe(write_study(tmp_path / "a"))
    b = load_recipe(write_study(tmp_path / "elsewhere" / "b"))
    assert a.fingerprint == b.fingerprint
    assert (
        load_recipe(tmp_path / "a" / "recipe.yaml", ["replicates=3"]).fingerprint != a.fingerprint
    )
    # Changing a referenced file (not the recipe) changes the fingerprint.
    users = tmp_path / "elsewhere" / "b" / "users.jsonl"
    users.write_text(users.read_text().replace("chess", "go"))
    assert load_recipe(tmp_path / "elsewhere" / "b" / "recipe.yaml").fingerprint != a.fingerprint


def test_shorthands(tmp_path: Path) -> None:
    text = BASE.replace("  users: {file: users.jsonl}", "  users: users.jsonl").replace(
        "posts: {file: posts.jsonl}", "posts: [one, two]"
    )
    text = text.replace("    none: {}", "    none:")
    loaded = load_recipe(write_study(tmp_path / "s", text))
    assert len(loaded.personas("users")) == 5
    assert len(loaded.posts()) == 2
    assert loaded.recipe.factors["moderation"]["none"] == {}


def test_yaml_keys_keep_their_text(tmp_path: Path) -> None:
    # YAML 1.1 would read `on:` / `off:` as booleans; as keys they stay the words written.
    text = BASE.replace("    none: {}", "    off: {}").replace("    strict:", "    on:")
    loaded = load_recipe(write_study(tmp_path / "s", text))
    assert list(loaded.recipe.factors["moderation"]) == ["off", "on"]


@pytest.mark.parametrize("name", ["smoke", "quickstart", "moderation-strategies"])
def test_example_recipes_validate(name: str) -> None:
    loaded = load_recipe(REPO / "recipes" / f"{name}.yaml")
    assert loaded.recipe.name == name


def test_moderation_strategies_matches_the_research_design() -> None:
    r = load_recipe(REPO / "recipes" / "moderation-strategies.yaml")
    d = r.recipe.discussion
    assert (d.participants, d.turns, d.context_window) == (7, 15, 3)
    assert d.turn_taking.p_respond == 0.4 and d.turn_taking.policy == "random_weighted"
    assert d.variants["troll"].share == 0.3
    assert r.recipe.replicates == 30
    assert "none" in r.recipe.factors["moderation"] and len(r.recipe.factors["moderation"]) >= 3
    assert len(r.personas("users")) >= 40


def test_recipe_can_live_in_a_copied_folder(tmp_path: Path) -> None:
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    a = load_recipe(tmp_path / "recipes" / "quickstart.yaml")
    b = load_recipe(REPO / "recipes" / "quickstart.yaml")
    assert a.fingerprint == b.fingerprint


def _column_names() -> list[str]:
    from synth_disco.store import schemas

    names = [*schemas.discussions_schema([]).names, *schemas.plan_schema([]).names]
    # Factor columns are on the comments, events, annotations and aggregates tables too.
    for schema in (
        schemas.COMMENTS,
        schemas.EVENTS,
        schemas.published_annotations({}),
        schemas.AGGREGATES,
    ):
        names += schema.names
    return list(dict.fromkeys(names))


@pytest.mark.parametrize("name", ["turns", "generation", "error", "model_revision"])
def test_factor_named_like_a_discussions_column_is_refused_at_its_line(
    tmp_path: Path, name: str
) -> None:
    """Issue 12, defect 2: these passed validate and plan, then failed at assembly."""
    recipe = write_study(tmp_path / "s", with_lines(l19=f"  {name}:"))
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 2, result.output
    assert f"recipe.yaml:19:3: factors.{name}: '{name}' is a column" in result.stderr


@pytest.mark.parametrize("name", _column_names())
def test_every_column_a_factor_joins_is_reserved(tmp_path: Path, name: str) -> None:
    """Factors become columns of plan.parquet and of the dataset's per-discussion tables: every
    other column of theirs (read from the table schemas, not a copy) is refused as a factor
    name."""
    with pytest.raises(RecipeError) as err:
        load_recipe(write_study(tmp_path / "s", with_lines(l19=f"  {name}:")))
    (problem,) = [p for p in err.value.problems if p.key_path == f"factors.{name}"]
    assert (problem.line, problem.column) == (19, 3)
    assert "column" in problem.message


@pytest.mark.parametrize("name", ["label", "text", "moderation"])
def test_a_dimension_named_like_an_annotations_column_is_refused(tmp_path: Path, name: str) -> None:
    """Each dimension names a typed column of the annotations table (issue 15)."""
    with pytest.raises(RecipeError) as err:
        load_recipe(
            write_study(tmp_path / "s", with_lines(l29=f"    {name}: {{scale: [1, 2, 3]}}"))
        )
    (problem,) = [p for p in err.value.problems if p.key_path == f"annotation.dimensions.{name}"]
    assert problem.line == 29 and "column of the annotations table" in problem.message


def test_key_paths_take_list_items_with_dots_or_brackets(study: Path) -> None:
    from synth_disco.recipe.overrides import dotted, parse_key

    assert parse_key("posts.inline[0].text") == ("posts", "inline", 0, "text")
    assert parse_key("posts.inline.0.text") == ("posts", "inline", 0, "text")
    assert parse_key("models.m2.stop[1]") == ("models", "m2", "stop", 1)
    assert dotted(parse_key("a.b[2][3].c")) == "a.b.2.3.c"
    for bad in ("a..b", ".a", "a."):
        with pytest.raises(ValueError, match="not a dotted key path"):
            parse_key(bad)
    loaded = load_recipe(study, ["posts=[first, second]", "posts[1]=changed"])
    assert [p.op.text for p in loaded.posts()] == ["first", "changed"]


def test_an_unreadable_factor_patch_key_is_reported(tmp_path: Path) -> None:
    recipe = write_study(tmp_path / "s", with_lines(l22="      discussion..k: 2"))
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    (problem,) = [p for p in err.value.problems if p.line == 22]
    assert "not a dotted key path" in problem.message
