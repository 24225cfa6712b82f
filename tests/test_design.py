"""The experiment design: cells, matched draws, seeds, shards, extension and plan.parquet."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from synth_disco.cli import main
from synth_disco.design.cells import cell_id
from synth_disco.design.plan import plan, write_plan
from synth_disco.recipe.factorial import select_cells
from synth_disco.recipe.load import load_recipe
from synth_disco.recipe.schema import DesignConfig
from synth_disco.seeds import derive_seed

RECIPE = """\
name: design-test
seed: 9
models:
  m: {engine: tiny, model: tiny, max_new_tokens: 10}
  big: {engine: tiny, model: tiny, max_new_tokens: 50}
personas:
  users: {file: users.jsonl}
posts: {file: posts.jsonl}
discussion:
  participants: 4
  turns: 6
  instructions: Be yourself.
  variants:
    troll: {share: 0.3, instructions: Be a troll.}
factors:
  moderation:
    none: {}
    strict: {discussion.moderator: {instructions: Be strict., policy: every_k, k: 2}}
  turn_taking:
    rr: {discussion.turn_taking.policy: round_robin}
    rw: {discussion.turn_taking.policy: random_weighted, discussion.model: big}
replicates: 6
output: {shard_size: 5}
"""


def write(root: Path, recipe: str = RECIPE, n_people: int = 12, n_posts: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "users.jsonl").open("w") as f:
        for i in range(n_people):
            f.write(json.dumps({"id": f"u{i}", "username": f"user{i}", "age": 20 + i}) + "\n")
    with (root / "posts.jsonl").open("w") as f:
        for i in range(n_posts):
            f.write(json.dumps({"id": f"post{i}", "text": f"Topic {i}?"}) + "\n")
    (root / "recipe.yaml").write_text(recipe)
    return root / "recipe.yaml"


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    return write(tmp_path / "study")


def test_cells_ids_and_order(recipe: Path) -> None:
    p = plan(load_recipe(recipe))
    assert [c.levels for c in p.cells] == [
        {"moderation": "none", "turn_taking": "rr"},
        {"moderation": "none", "turn_taking": "rw"},
        {"moderation": "strict", "turn_taking": "rr"},
        {"moderation": "strict", "turn_taking": "rw"},
    ]
    assert len({c.id for c in p.cells}) == 4
    # The id depends on the levels only, not on the order factors are written in.
    assert cell_id({"a": "1", "b": "2"}) == cell_id({"b": "2", "a": "1"})
    assert cell_id({}) == "base"
    assert (p.n_cells, p.n_discussions, p.n_shards) == (4, 24, 5)


def test_factor_patches_are_applied(recipe: Path) -> None:
    p = plan(load_recipe(recipe))
    by_levels = {tuple(c.levels.values()): c.recipe for c in p.cells}
    assert by_levels[("none", "rr")].discussion.moderator is None
    assert by_levels[("strict", "rr")].discussion.moderator.instructions == "Be strict."
    assert by_levels[("strict", "rr")].discussion.moderator.k == 2
    assert by_levels[("none", "rr")].discussion.turn_taking.policy == "round_robin"
    assert by_levels[("none", "rw")].discussion.turn_taking.policy == "random_weighted"
    assert by_levels[("none", "rw")].discussion.model == "big"
    assert by_levels[("none", "rr")].discussion.model is None
    spec = next(
        s for s in p.iter_specs() if s.cell == {"moderation": "strict", "turn_taking": "rw"}
    )
    assert spec.config["discussion"]["moderator"]["instructions"] == "Be strict."
    assert spec.config["discussion"]["model"] == "big"
    assert "personas" not in spec.config and "posts" not in spec.config


def test_plan_order_ids_seeds_and_shards(recipe: Path) -> None:
    p = plan(load_recipe(recipe))
    specs = list(p.iter_specs())
    for i, s in enumerate(specs):
        assert s.index == i
        assert s.replicate == i // p.n_cells
        assert s.cell_id == p.cells[i % p.n_cells].id
        assert s.discussion_id == f"{s.cell_id}-r{s.replicate:05d}"
        assert s.seed == derive_seed(9, s.discussion_id) and 0 <= s.seed < 2**63
        assert s.shard == i // 5
    assert [len(p.specs_for_shard(k)) for k in range(p.n_shards)] == [5, 5, 5, 5, 4]
    assert p.specs_for_shard(1)[0] == specs[5]
    assert len({s.discussion_id for s in specs}) == len(specs)


def test_participants_are_distinct_and_matched_across_cells(recipe: Path) -> None:
    p = plan(load_recipe(recipe))
    by_rep: dict[int, set[tuple]] = {}
    for s in p.iter_specs():
        ids = [x.persona.id for x in s.participants]
        assert len(set(ids)) == len(ids) == 4  # nobody twice
        assert [x.name for x in s.participants] == [x.persona.name for x in s.participants]
        by_rep.setdefault(s.replicate, set()).add((s.post.id, tuple(ids)))
    # Matched design: one replicate, one post and one group of people, in every cell.
    assert all(len(v) == 1 for v in by_rep.values())
    assert len({next(iter(v)) for v in by_rep.values()}) > 1  # but replicates differ


def test_whole_pool_takes_part_when_participants_equal_pool(tmp_path: Path) -> None:
    p = plan(load_recipe(write(tmp_path / "s", n_people=4)))
    for s in p.iter_specs():
        assert sorted(x.persona.id for x in s.participants) == ["u0", "u1", "u2", "u3"]


def test_participant_range(tmp_path: Path) -> None:
    text = RECIPE.replace("participants: 4", "participants: {min: 2, max: 5}")
    p = plan(load_recipe(write(tmp_path / "s", text), ["replicates=40"]))
    sizes = Counter(len(s.participants) for s in p.iter_specs())
    assert set(sizes) == {2, 3, 4, 5}


def test_posts_are_balanced_by_replicate(recipe: Path) -> None:
    p = plan(load_recipe(recipe))
    per_cell = Counter((s.cell_id, s.post.id) for s in p.iter_specs())
    assert set(per_cell.values()) == {2}  # 6 replicates over 3 posts: each post twice per cell


def test_variants_follow_their_share(tmp_path: Path) -> None:
    p = plan(load_recipe(write(tmp_path / "s"), ["replicates=250"]))
    variants = Counter(x.variant for s in p.iter_specs() for x in s.participants)
    share = variants["troll"] / sum(variants.values())
    assert 0.26 < share < 0.34  # 4,000 draws at p = 0.3
    s = p.spec(0)
    for x in s.participants:
        assert x.instructions == ("Be a troll." if x.variant == "troll" else "Be yourself.")
        assert x.variant in ("troll", "default")


def test_same_recipe_gives_byte_identical_plan(tmp_path: Path) -> None:
    a = write_plan(plan(load_recipe(write(tmp_path / "a"))), tmp_path / "a.parquet")
    b = write_plan(plan(load_recipe(write(tmp_path / "elsewhere" / "b"))), tmp_path / "b.parquet")
    assert a.read_bytes() == b.read_bytes()
    c = write_plan(plan(load_recipe(tmp_path / "a" / "recipe.yaml", ["seed=10"])), tmp_path / "c")
    assert c.read_bytes() != a.read_bytes()
    ta, tc = pq.read_table(a), pq.read_table(c)
    assert ta.column("seed").to_pylist() != tc.column("seed").to_pylist()
    assert ta.column("participants").to_pylist() != tc.column("participants").to_pylist()


def test_raising_replicates_keeps_earlier_specs(recipe: Path) -> None:
    small = list(plan(load_recipe(recipe, ["replicates=2"])).iter_specs())
    big = list(plan(load_recipe(recipe, ["replicates=3"])).iter_specs())
    assert len(big) == len(small) + 4
    assert [s.to_dict() for s in big[: len(small)]] == [s.to_dict() for s in small]


def test_plan_parquet_contents(recipe: Path, tmp_path: Path) -> None:
    loaded = load_recipe(recipe)
    p = plan(loaded)
    t = pq.read_table(write_plan(p, tmp_path / "plan.parquet"))
    assert t.num_rows == 24
    assert t.schema.names == [
        "discussion_id",
        "index",
        "cell_id",
        "moderation",
        "turn_taking",
        "replicate",
        "seed",
        "shard",
        "post_id",
        "participants",
        "variants",
        "n_participants",
        "config_json",
    ]
    assert t.schema.metadata[b"synth_disco.fingerprint"].decode() == loaded.fingerprint
    row = t.slice(7, 1).to_pylist()[0]
    s = p.spec(7)
    assert row["discussion_id"] == s.discussion_id and row["seed"] == s.seed
    assert row["participants"] == [x.persona.id for x in s.participants]
    assert row["moderation"] == s.cell["moderation"]
    assert json.loads(row["config_json"]) == s.config


def test_random_design_keeps_a_seeded_subset() -> None:
    factors = {"a": ["1", "2", "3"], "b": ["x", "y"], "c": ["p", "q", "r", "s"]}
    full = select_cells(factors, DesignConfig(), seed=1)
    assert len(full) == 24 and full[0] == {"a": "1", "b": "x", "c": "p"}
    sub = select_cells(factors, DesignConfig(mode="random", cells=5), seed=1)
    assert len(sub) == 5 and all(c in full for c in sub)
    assert sub == sorted(sub, key=full.index)  # factorial order
    assert sub == select_cells(factors, DesignConfig(mode="random", cells=5), seed=1)
    assert sub != select_cells(factors, DesignConfig(mode="random", cells=5), seed=2)
    huge = {f"f{i}": [str(j) for j in range(10)] for i in range(12)}  # 10^12 cells
    assert len(select_cells(huge, DesignConfig(mode="random", cells=3), seed=0)) == 3


def test_no_factors_is_one_base_cell(tmp_path: Path) -> None:
    text = RECIPE.split("factors:")[0] + "replicates: 3\n"
    p = plan(load_recipe(write(tmp_path / "s", text)))
    assert [c.id for c in p.cells] == ["base"]
    assert [s.discussion_id for s in p.iter_specs()] == [
        "base-r00000",
        "base-r00001",
        "base-r00002",
    ]


def test_summary_upper_bounds(recipe: Path) -> None:
    s = plan(load_recipe(recipe)).summary()
    assert (s.n_cells, s.n_discussions, s.participants) == (4, 24, (4, 4))
    assert s.turns == 24 * 6
    # strict cells: after every 2nd turn, but not after the last one (turns 2 and 4 of 6)
    assert s.moderator_calls == 12 * 2
    assert s.annotation_calls == 0
    # rw cells use the 50-token model, rr cells the 10-token one; moderators the cell's model
    per_rep = (6 * 10) + (6 * 50) + (6 * 10 + 2 * 10) + (6 * 50 + 2 * 50)
    assert s.generated_tokens == 6 * per_rep
    assert s.calls_with_retries == (24 * 6 + 12 * 2) * 3  # max_empty_retries defaults to 2


SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"


def test_estimated_calls_are_the_calls_a_build_makes(tmp_path: Path) -> None:
    """Issue 12, defect 5: the moderator does not speak after the last turn, and the plan
    counted it (4 turns, every 2nd: 1 moderator call, not 2; after each: 3, not 4)."""
    overrides = [
        "annotation=null",
        "discussion.turns=4",
        "factors={moderation: {"
        "every_k: {discussion.moderator: {policy: every_k, k: 2}}, "
        "after_each: {discussion.moderator: {policy: after_each}}}}",
    ]
    summary = plan(load_recipe(SMOKE, overrides)).summary()
    assert summary.n_discussions == 4
    assert summary.moderator_calls == 2 * (1 + 3)

    args = [x for o in overrides for x in ("--set", o)]
    result = CliRunner().invoke(main, ["build", str(SMOKE), "--out", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    comments = pq.read_table(tmp_path / "dataset" / "data" / "comments").to_pylist()
    generated = [c for c in comments if c["role"] in ("user", "moderator")]
    assert all(c["attempts"] == 1 for c in generated)  # no retries: each comment is one call
    assert len(generated) == summary.discussion_calls + summary.moderator_calls
    assert sum(c["role"] == "moderator" for c in generated) == summary.moderator_calls
