"""The assembled dataset folder: configs, files, features, manifest, idempotence, no leaks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth_disco.dataset.assembly import assemble
from synth_disco.dataset.manifest import AssembleError, read_manifest, used_pools
from synth_disco.errors import SynthDiscoError
from synth_disco.recipe.schema import Recipe
from synth_disco.records import Persona
from synth_disco.store import schemas
from synth_disco.store.run_dir import RunStore

LEVELS = {"moderation": ["none", "strict"], "tone": ["calm"]}
USERS = [Persona(f"u{i}", f"User {i}", f"person {i}", (("age", str(20 + i)),)) for i in range(4)]
ANNOTATORS = [Persona("a0", "Ann", "careful annotator")]


def make_recipe(max_rows: int = 10, annotate: bool = True, **extra: Any) -> tuple[Recipe, dict]:
    raw: dict[str, Any] = {
        "name": "unit-test",
        "version": "1.2.0",
        "license": "cc-by-4.0",
        "seed": 7,
        "models": {"main": {"engine": "tiny", "model": "tiny", "temperature": 0.7}},
        "personas": {
            "users": {"inline": [p.to_dict() for p in USERS], "license": "cc0-1.0"},
            "annotators": {"inline": [p.to_dict() for p in ANNOTATORS]},
        },
        "posts": {
            "inline": [{"id": "p0", "comments": [{"author": "op", "text": "Hi"}]}],
            "license": "mit",
        },
        "discussion": {
            "instructions": "Write like a forum user.",
            "turns": 3,
            "variants": {"troll": {"share": 0.3, "instructions": "Provoke."}},
        },
        "factors": {
            "moderation": {
                "none": {},
                "strict": {"discussion.moderator": {"instructions": "Be firm"}},
            },
            "tone": {"calm": {}},
        },
        "replicates": 2,
        "output": {"max_rows_per_file": max_rows, "tags": ["moderation"]},
        **extra,
    }
    if annotate:
        raw["annotation"] = {
            "dimensions": {
                "toxicity": {"scale": [1, 2, 3], "descriptions": {"1": "none", "3": "severe"}},
                "stance": {"categories": ["pro", "con"]},
            }
        }
    return Recipe.model_validate(raw), raw


def _discussion(
    i: int, shard: int, status: str = "ok", n_comments: int = 3, error: str = "engine crashed"
) -> dict[str, Any]:
    level = LEVELS["moderation"][i % 2]
    return {
        "discussion_id": f"d{i:04d}",
        "index": i,
        "cell_id": f"moderation={level},tone=calm",
        "moderation": level,
        "tone": "calm",
        "replicate": i // 2,
        "seed": 1000 + i,
        "post_id": "p0",
        "title": "",
        "op": "Hi",
        "op_author": "op",
        "seed_comments": [{"author": "op", "text": "Hi"}],
        "participants": [
            {"name": p.name, "persona": p.to_dict(), "variant": "", "instructions": "Write."}
            for p in USERS[:2]
        ],
        "moderator": None
        if level == "none"
        else {
            "name": "Mod",
            "policy": "every_k",
            "k": 3,
            "instructions": "Be firm",
            "model": "tiny",
        },
        "turn_policy": "round_robin",
        "turns": 3,
        "context_window": 5,
        "model": "tiny",
        "model_revision": "abc123",
        "generation": json.dumps({"temperature": 0.7}),
        "status": status,
        "error": error if status == "failed" else None,
        "n_comments": n_comments,
        "prompt_tokens": 10,
        "completion_tokens": 5,
    }


def _comments(d: dict[str, Any], n: int) -> list[dict[str, Any]]:
    rows = [
        {
            "discussion_id": d["discussion_id"],
            "comment_id": f"{d['discussion_id']}-c0",
            "index": 0,
            "parent_id": None,
            "author": "op",
            "role": "op",
            "persona_id": None,
            "variant": None,
            "text": "Hi",
            "raw_text": "Hi",
            "model": None,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "finish_reason": None,
            "attempts": 0,
        }
    ]
    for k in range(1, n + 1):
        rows.append(
            {
                "discussion_id": d["discussion_id"],
                "comment_id": f"{d['discussion_id']}-c{k}",
                "index": k,
                "parent_id": f"{d['discussion_id']}-c{k - 1}",
                "author": "User 0",
                "role": "user",
                "persona_id": "u0",
                "variant": "",
                "text": "word " * (k * 4),
                "raw_text": "word " * (k * 4),
                "model": "tiny",
                "prompt_tokens": 12,
                "completion_tokens": 4,
                "finish_reason": "stop",
                "attempts": 1,
            }
        )
    return rows


def _annotations(comments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for c in comments:
        if c["role"] == "op":
            continue
        for dim, label in (("toxicity", str(1 + c["index"] % 3)), ("stance", "pro")):
            rows.append(
                {
                    "comment_id": c["comment_id"],
                    "discussion_id": c["discussion_id"],
                    "annotator_id": "a0",
                    "annotator_persona": "careful annotator",
                    "dimension": dim,
                    "label": label,
                    "scores": [{"label": label, "prob": 0.9}],
                    "method": "score",
                    "raw_text": "",
                    "model": "tiny",
                    "status": "ok",
                    "attempts": 1,
                }
            )
    return rows


def make_run(
    root: Path,
    n_discussions: int = 5,
    shard_size: int = 2,
    annotate: bool = True,
    failed: tuple[int, ...] = (4,),
    error: str = "engine crashed",
) -> RunStore:
    """A run directory with finished discuss (and annotate) shards, built through RunStore."""
    store = RunStore(root)
    schema = schemas.discussions_schema(list(LEVELS))
    for shard, start in enumerate(range(0, n_discussions, shard_size)):
        ids = list(range(start, min(n_discussions, start + shard_size)))
        discs = [
            _discussion(i, shard, "failed" if i in failed else "ok", 0 if i in failed else 3, error)
            for i in ids
        ]
        comments = [c for d in discs for c in _comments(d, d["n_comments"])]
        events = [
            {
                "discussion_id": d["discussion_id"],
                "index": 1,
                "kind": "failed_turn",
                "author": "User 1",
                "detail": "empty",
                "raw_text": "",
            }
            for d in discs
            if d["status"] == "failed"
        ]
        members = [d["discussion_id"] for d in discs]
        store.finish_shard(
            "discuss",
            shard,
            {
                "discussions": pa.Table.from_pylist(discs, schema=schema),
                "comments": pa.Table.from_pylist(comments, schema=schemas.COMMENTS),
                "events": pa.Table.from_pylist(events, schema=schemas.EVENTS),
            },
            {"discussions": len(discs), "comments": len(comments)},
            members,
        )
        if annotate:
            ann = _annotations(comments)
            store.finish_shard(
                "annotate",
                shard,
                {"annotations": pa.Table.from_pylist(ann, schema=schemas.ANNOTATIONS)},
                {"annotations": len(ann)},
                members,
            )
    return store


AGREEMENT = {"toxicity": {"alpha": 0.41, "level": "ordinal", "n_items": 12}}


@pytest.fixture
def built(tmp_path: Path) -> tuple[RunStore, Path, Recipe]:
    store = make_run(tmp_path / "run")
    recipe, raw = make_recipe()
    out = assemble(
        store,
        recipe,
        raw,
        "fp-123",
        agreement=AGREEMENT,
        personas={"users": USERS, "annotators": ANNOTATORS},
    )
    return store, out, recipe


def test_each_config_loads_with_its_rows_and_features(built) -> None:
    _, folder, _ = built
    expected = {"discussions": 5, "comments": 4 * 4 + 1, "annotations": 4 * 3 * 2, "personas": 5}
    for config, rows in expected.items():
        ds = datasets.load_dataset(str(folder), config, split="train")
        assert ds.num_rows == rows, config
    comments = datasets.load_dataset(str(folder), "comments", split="train")
    # token counts have the discussions table's type (one type per column name)
    assert comments.features["prompt_tokens"] == datasets.Value("int64")
    disc = datasets.load_dataset(str(folder), "discussions", split="train")
    assert isinstance(disc.features["participants"], datasets.List)
    assert disc.features["participants"].feature["persona"]["name"] == datasets.Value("string")
    assert disc.features["moderator"]["k"] == datasets.Value("int32")
    assert sorted(set(disc["moderation"])) == ["none", "strict"]
    ann = datasets.load_dataset(str(folder), "annotations", split="train")
    assert ann[0]["scores"] == [{"label": ann[0]["label_text"], "prob": 0.9}]
    personas = datasets.load_dataset(str(folder), "personas", split="train")
    assert sorted(set(personas["pool"])) == ["annotators", "users"]
    assert personas.filter(lambda r: r["id"] == "u1")[0]["fields"] == [
        {"key": "age", "value": "21"}
    ]


def test_default_config_is_discussions(built) -> None:
    _, folder, _ = built
    ds = datasets.load_dataset(str(folder), split="train")
    assert "participants" in ds.column_names


def test_files_are_sharded_by_rows(built) -> None:
    _, folder, _ = built
    # 24 annotations with at most 10 rows per file -> 3 files; 17 comments -> 2 files.
    names = sorted(p.name for p in (folder / "data" / "annotations").iterdir())
    assert names == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert [pq.read_metadata(folder / "data" / "annotations" / n).num_rows for n in names] == [
        10,
        10,
        4,
    ]
    assert len(list((folder / "data" / "comments").iterdir())) == 2
    assert len(list((folder / "data" / "discussions").iterdir())) == 1


def test_rows_keep_shard_order(built) -> None:
    _, folder, _ = built
    disc = datasets.load_dataset(str(folder), "discussions", split="train")
    assert disc["discussion_id"] == [f"d{i:04d}" for i in range(5)]


def test_manifest_records_checksums_counts_and_versions(built) -> None:
    store, folder, _ = built
    manifest = read_manifest(folder)
    for stage in ("discuss", "annotate"):
        assert [s["files"] for s in manifest["shards"][stage]] == [
            i.files for i in store.done_shards(stage)
        ]
    assert manifest["fingerprint"] == "fp-123"
    assert manifest["counts"] == {
        "discussions": 5,
        "comments": 17,
        "events": 1,  # the failed turn
        "annotations": 24,
        "agreement": 1,
        "personas": 5,
    }
    assert manifest["versions"]["datasets"] == datasets.__version__
    assert {"torch", "transformers", "synth-disco"} <= manifest["versions"].keys()
    assert manifest["models"]["main"]["revision"] == "abc123"
    assert manifest["models"]["main"]["generation"]["temperature"] == 0.7
    assert manifest["failures"]["discussions"] == 1
    assert manifest["failures"]["examples"] == [
        {"discussion_id": "d0004", "error": "engine crashed"}
    ]
    assert manifest["failures"]["failed_turns"] == 1
    from synth_disco.store.files import sha256_file

    for rel, digest in manifest["files"].items():
        assert sha256_file(folder / rel) == digest


def test_recipe_copy_is_the_resolved_recipe(built) -> None:
    import yaml

    _, folder, recipe = built
    raw = yaml.safe_load((folder / "synth_disco" / "recipe.yaml").read_text())
    assert Recipe.model_validate(raw) == recipe


def test_statistics(built) -> None:
    _, folder, _ = built
    stats = read_manifest(folder)["stats"]
    assert stats["discussions"] == {
        "total": 5,
        "ok": 4,
        "failed": 1,
        "by_status": {"failed": 1, "ok": 4},
    }
    assert stats["comments"]["per_discussion"] == {"mean": 2.4, "min": 0, "max": 3}
    assert stats["comments"]["words_per_comment"] == 8.0  # 4, 8, 12 words
    assert stats["annotations"]["labels"]["toxicity"] == {"1": 4, "2": 4, "3": 4}
    strict = stats["by_level"]["moderation"]["strict"]
    assert strict["discussions"] == 2 and strict["comments"] == 6
    assert sum(c["discussions"] for c in stats["cells"]) == 5


def test_reassembly_is_byte_identical(tmp_path: Path) -> None:
    store = make_run(tmp_path / "run")
    recipe, raw = make_recipe()
    kwargs = {"agreement": AGREEMENT, "personas": {"users": USERS, "annotators": ANNOTATORS}}
    first = assemble(store, recipe, raw, "fp", **kwargs)
    before = {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}
    again = assemble(store, recipe, raw, "fp", **kwargs)
    after = {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file()}
    assert before.keys() == after.keys()
    assert [k for k in before if before[k] != after[k]] == []
    leftovers = [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".dataset")]
    assert leftovers == []


def test_no_absolute_paths_or_home_in_the_folder(tmp_path: Path) -> None:
    home = os.path.expanduser("~")
    error = f"cannot read {tmp_path / 'run' / 'journal' / 'x.jsonl'} or {home}/models/m"
    store = make_run(tmp_path / "run", error=error)
    recipe, raw = make_recipe()
    # A model loaded from a local folder must not leak its path.
    local_model = str(tmp_path / "models" / "my-model")
    raw["models"]["main"]["model"] = local_model
    recipe = Recipe.model_validate(raw)
    folder = assemble(store, recipe, raw, "fp")
    needles = [str(tmp_path), os.path.expanduser("~")]
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                assert needle.encode() not in data, (path, needle)
    manifest = read_manifest(folder)
    assert manifest["models"]["main"]["id"] == "my-model"
    assert manifest["failures"]["examples"][0]["error"] == (
        "cannot read <run>/journal/x.jsonl or ~/models/m"
    )


def test_local_model_paths_are_scrubbed_from_rows(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    recipe, raw = make_recipe(annotate=False)
    d = _discussion(0, 0)
    d["model"] = str(tmp_path / "models" / "m1")
    d["moderator"] = {
        "name": "M",
        "policy": "every_k",
        "k": 3,
        "instructions": "",
        "model": str(tmp_path / "models" / "m1"),
    }
    store.finish_shard(
        "discuss",
        0,
        {
            "discussions": pa.Table.from_pylist(
                [d], schema=schemas.discussions_schema(list(LEVELS))
            ),
            "comments": pa.Table.from_pylist(_comments(d, 1), schema=schemas.COMMENTS),
        },
        {},
        ["d0000"],
    )
    folder = assemble(store, recipe, raw, "fp")
    row = datasets.load_dataset(str(folder), "discussions", split="train")[0]
    assert row["model"] == "m1" and row["moderator"]["model"] == "m1"


def test_without_annotations_there_is_no_annotations_config(tmp_path: Path) -> None:
    store = make_run(tmp_path / "run", annotate=False)
    recipe, raw = make_recipe(annotate=False)
    folder = assemble(store, recipe, raw, "fp")
    assert not (folder / "data" / "annotations").exists()
    assert "annotations" not in read_manifest(folder)["configs"]
    # Without explicit pools, the participants found in the rows stand in.
    personas = datasets.load_dataset(str(folder), "personas", split="train")
    assert sorted(personas["id"]) == ["u0", "u1"]


def test_a_changed_shard_file_is_refused_and_the_old_dataset_kept(built) -> None:
    store, folder, recipe = built
    readme = (folder / "README.md").read_bytes()
    path = store.shard_path("discuss", 0, "comments")
    pq.write_table(pq.read_table(path).slice(0, 1), path)
    with pytest.raises(AssembleError, match="changed after"):
        assemble(store, recipe, {}, "fp")
    assert (folder / "README.md").read_bytes() == readme


def test_nothing_to_assemble(tmp_path: Path) -> None:
    recipe, raw = make_recipe()
    with pytest.raises(AssembleError, match="no finished shards"):
        assemble(RunStore(tmp_path / "empty"), recipe, raw, "fp")


def test_factor_names_clashing_with_columns_are_refused(tmp_path: Path) -> None:
    store = make_run(tmp_path / "run")
    recipe, raw = make_recipe()
    raw["factors"] = {"turn_policy": {"a": {}}}
    with pytest.raises(AssembleError, match="turn_policy"):
        assemble(store, Recipe.model_validate(raw), raw, "fp")


def test_used_pools_include_pools_switched_by_a_factor() -> None:
    recipe, raw = make_recipe()
    raw["personas"]["experts"] = {"inline": [USERS[0].to_dict()]}
    raw["factors"]["crowd"] = {"lay": {}, "expert": {"discussion.persona_pool": "experts"}}
    assert used_pools(Recipe.model_validate(raw)) == {
        "users": "participants",
        "annotators": "annotators",
        "experts": "participants",
    }


def test_an_unrelated_output_folder_is_not_replaced(tmp_path: Path) -> None:
    store = make_run(tmp_path / "run")
    recipe, raw = make_recipe()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(AssembleError, match="not a synth-disco dataset"):
        assemble(store, recipe, raw, "fp", out=precious)
    assert (precious / "notes.txt").read_text() == "mine"


def test_assemble_errors_are_messages_for_the_user() -> None:
    # Issue 12, defect 3: the CLI reports SynthDiscoErrors as one message and an exit code.
    assert issubclass(AssembleError, SynthDiscoError)


def test_a_folder_that_would_leak_is_refused_and_the_old_one_kept(built) -> None:
    store, folder, _ = built
    readme = (folder / "README.md").read_bytes()
    recipe, raw = make_recipe(description="Our token: hf_" + "x" * 34)
    with pytest.raises(AssembleError, match="README.md: contains what looks like a Hugging Face"):
        assemble(store, recipe, raw, "fp")
    assert (folder / "README.md").read_bytes() == readme
    recipe, raw = make_recipe(description=f"Built in {store.root.resolve()}.")
    with pytest.raises(AssembleError, match="README.md: contains the absolute local path"):
        assemble(store, recipe, raw, "fp")
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".dataset")] == []


def test_events_are_published_with_their_discussions_design(tmp_path: Path) -> None:
    """`no_intervention` moderator events (and every other event) are a config of their own,
    placed in the design like comments (issue 15)."""
    store = make_run(tmp_path / "run", annotate=False)
    passed = {
        "discussion_id": "d0001",
        "index": 2,
        "kind": "no_intervention",
        "author": "Mod",
        "detail": "",
        "raw_text": "NO INTERVENTION",
        "attempt": 1,
        "flags": [],
    }
    info = store.done_shards("discuss")[0]
    tables = {t: store.read_shard("discuss", 0, t) for t in info.files}
    tables["events"] = pa.Table.from_pylist([passed], schema=schemas.EVENTS)
    store.finish_shard("discuss", 0, tables, info.counts, info.members)
    recipe, raw = make_recipe(annotate=False)
    folder = assemble(store, recipe, raw, "fp")
    events = datasets.load_dataset(str(folder), "events", split="train").to_list()
    by_kind = {e["kind"]: e for e in events}
    assert set(by_kind) == {"no_intervention", "failed_turn"}
    e = by_kind["no_intervention"]
    assert (e["discussion_id"], e["moderation"], e["tone"], e["replicate"]) == (
        "d0001",
        "strict",
        "calm",
        0,
    )
    assert e["cell_id"] == "moderation=strict,tone=calm" and e["raw_text"] == "NO INTERVENTION"
