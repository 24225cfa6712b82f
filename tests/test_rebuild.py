"""A dataset that rebuilds itself (issue 15): what it ships, `rebuild` from a folder and from
the Hub at a tag (byte-identical data files with the tiny model, greedy, on the CPU), the
confinement of a downloaded recipe, Hub sources pinned to a commit, and the SynDisco export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
import yaml
from click.testing import CliRunner

from hubserver import HubServer
from synth_disco.annotation.syndisco_import import read_syndisco_dir
from synth_disco.cli import main
from synth_disco.errors import RecipeError
from synth_disco.hub.push import push_folder
from synth_disco.recipe.load import load_recipe

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

# The `init` scaffold reads files (personas, posts, instructions, one of them in a factor
# level's patch): everything a dataset must ship. Small and greedy.
SETS = ["replicates=1", "discussion.turns=3", "models.main.temperature=0"]


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def build_study(root: Path, *extra: str) -> Path:
    cli("init", root / "study")
    sets = [x for s in [*SETS, *extra] for x in ("--set", s)]
    cli("build", root / "study" / "recipe.yaml", "--out", root / "run", *sets)
    return root / "run"


def data_files(dataset: Path) -> dict[str, bytes]:
    return {
        p.relative_to(dataset).as_posix(): p.read_bytes()
        for p in sorted((dataset / "data").rglob("*.parquet"))
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return build_study(tmp_path_factory.mktemp("rebuild"))


def test_the_dataset_ships_the_recipe_and_every_file_the_run_read(run):
    meta = run / "dataset" / "synth_disco"
    study = run.parent / "study"
    for rel in (
        "personas/users.jsonl",
        "personas/annotators.jsonl",
        "posts/posts.jsonl",
        "instructions/user.md",
        "instructions/moderator.md",
    ):
        assert (meta / rel).read_bytes() == (study / rel).read_bytes(), rel
    copy = yaml.safe_load((meta / "recipe.yaml").read_text(encoding="utf-8"))
    assert copy["personas"]["users"] == {"file": "personas/users.jsonl"}
    assert copy["discussion"]["instructions"] == {"file": "instructions/user.md"}
    patch = copy["factors"]["moderation"]["moderated"]["discussion.moderator"]
    assert patch["instructions"] == {"file": "instructions/moderator.md"}
    assert copy["replicates"] == 1  # --set overrides are part of it
    manifest = json.loads((meta / "manifest.json").read_text(encoding="utf-8"))
    run_fp = json.loads((run / "run.json").read_text(encoding="utf-8"))["fingerprint"]
    assert manifest["rebuild"]["fingerprint"] == manifest["fingerprint"] == run_fp
    assert manifest["rebuild"]["relocated"] == {}


def test_rebuild_from_the_folder_gives_identical_data_files(run, tmp_path):
    out = cli("rebuild", run / "dataset", "--out", tmp_path / "again")
    n = len(data_files(run / "dataset"))
    assert f"data files: {n} of {n} identical" in out
    assert data_files(tmp_path / "again" / "dataset") == data_files(run / "dataset")
    fingerprints = [
        json.loads((r / "run.json").read_text(encoding="utf-8"))["fingerprint"]
        for r in (run, tmp_path / "again")
    ]
    assert fingerprints[0] == fingerprints[1]


def test_build_push_download_the_tag_and_rebuild(run, hub_server: HubServer, tmp_path):
    """The proof of issue 15: build, push to the (loopback) Hub, download the tag into an
    empty directory, rebuild from it alone, compare: identical data files."""
    pushed = push_folder(run / "dataset", "tester/study", "0.1.0")
    assert pushed.tag == "v0.1.0"
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    from huggingface_hub import snapshot_download

    snapshot_download("tester/study", repo_type="dataset", revision="v0.1.0", local_dir=downloaded)
    shutil.rmtree(downloaded / ".cache", ignore_errors=True)
    out = cli("rebuild", downloaded, "--out", tmp_path / "from-folder")
    assert data_files(tmp_path / "from-folder" / "dataset") == data_files(run / "dataset")
    # ... and `rebuild ORG/NAME@TAG` downloads it itself
    out = cli("rebuild", "tester/study@v0.1.0", "--out", tmp_path / "from-hub")
    assert "downloaded tester/study@v0.1.0" in out and "identical" in out
    assert data_files(tmp_path / "from-hub" / "dataset") == data_files(run / "dataset")


def _copy(run: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "dataset"
    shutil.copytree(run / "dataset", folder)
    return folder


def _edit_recipe(folder: Path, old: str, new: str) -> None:
    path = folder / "synth_disco" / "recipe.yaml"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("file: personas/users.jsonl", "file: ../../secret.jsonl", "personas.users.file"),
        ("file: instructions/user.md", "file: /etc/hostname", "discussion.instructions.file"),
        ("model: tiny", "model: /opt/models/some-model", "models.main.model"),
    ],
)
def test_a_downloaded_recipe_may_not_read_outside_its_folder(run, tmp_path, old, new, key):
    folder = _copy(run, tmp_path)
    (tmp_path / "secret.jsonl").write_text('{"id": "x", "username": "secret"}\n')
    _edit_recipe(folder, old, new)
    result = CliRunner().invoke(main, ["rebuild", str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert key in result.output and (
        "dataset folder" in result.output or "local path" in result.output
    )
    assert not (tmp_path / "out").exists()  # nothing was built


def test_a_link_out_of_the_folder_is_refused(run, tmp_path):
    folder = _copy(run, tmp_path)
    (tmp_path / "elsewhere.jsonl").write_text('{"id": "x", "username": "x"}\n')
    users = folder / "synth_disco" / "personas" / "users.jsonl"
    users.unlink()
    users.symlink_to(tmp_path / "elsewhere.jsonl")
    with pytest.raises(RecipeError) as err:
        load_recipe(folder / "synth_disco" / "recipe.yaml", confine=folder)
    assert any("leaves the dataset folder" in p.message for p in err.value.problems)


def test_a_changed_folder_is_refused_by_its_fingerprint(run, tmp_path):
    folder = _copy(run, tmp_path)
    posts = folder / "synth_disco" / "posts" / "posts.jsonl"
    posts.write_text(posts.read_text(encoding="utf-8") + '{"id": "new", "text": "Hello?"}\n')
    result = CliRunner().invoke(main, ["rebuild", str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "the folder was changed" in result.output


def test_files_outside_the_recipe_folder_are_shipped_relocated(tmp_path):
    cli("init", tmp_path / "study")
    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.move(tmp_path / "study" / "personas" / "users.jsonl", shared / "users.jsonl")
    recipe = tmp_path / "study" / "recipe.yaml"
    recipe.write_text(
        recipe.read_text().replace("file: personas/users.jsonl", "file: ../shared/users.jsonl")
    )
    sets = [x for s in SETS for x in ("--set", s)]
    cli("build", recipe, "--out", tmp_path / "run", *sets, "--set", "annotation=null")
    meta = tmp_path / "run" / "dataset" / "synth_disco"
    copy = yaml.safe_load((meta / "recipe.yaml").read_text(encoding="utf-8"))
    assert copy["personas"]["users"] == {"file": "external/0-users.jsonl"}
    assert (meta / "external" / "0-users.jsonl").read_bytes() == (
        shared / "users.jsonl"
    ).read_bytes()
    manifest = json.loads((meta / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["rebuild"]["relocated"] == {"../shared/users.jsonl": "external/0-users.jsonl"}
    assert manifest["rebuild"]["fingerprint"] != manifest["fingerprint"]  # paths are part of it
    out = cli("rebuild", tmp_path / "run" / "dataset", "--out", tmp_path / "again")
    assert "identical" in out
    assert data_files(tmp_path / "again" / "dataset") == data_files(tmp_path / "run" / "dataset")


# -- Hub sources -----------------------------------------------------------------------------


def _push_pool(rows: list[dict], tmp_path: Path, name: str) -> str:
    from huggingface_hub import HfApi

    folder = tmp_path / name
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_list(rows).to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    api = HfApi()
    api.create_repo("tester/pool", repo_type="dataset", exist_ok=True)
    return api.upload_folder(folder_path=folder, repo_id="tester/pool", repo_type="dataset").oid


def test_hub_sources_are_pinned_to_a_commit_and_a_new_one_is_a_changed_recipe(
    hub_server: HubServer, tmp_path
):
    people = [{"id": f"h{i}", "username": f"hub{i}", "age": 30 + i} for i in range(4)]
    first = _push_pool(people, tmp_path, "v1")
    cli("init", tmp_path / "study")
    recipe = tmp_path / "study" / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("file: personas/users.jsonl", "hub: tester/pool"))
    loaded = load_recipe(recipe)
    assert loaded.raw["personas"]["users"]["revision"] == first  # the commit, resolved
    assert loaded.recipe.personas["users"].revision == first
    sets = [x for s in SETS for x in ("--set", s)]
    cli("build", recipe, "--out", tmp_path / "run", *sets, "--set", "annotation=null")
    copy = yaml.safe_load(
        (tmp_path / "run" / "dataset" / "synth_disco" / "recipe.yaml").read_text(encoding="utf-8")
    )
    assert copy["personas"]["users"]["revision"] == first
    card = (tmp_path / "run" / "dataset" / "README.md").read_text(encoding="utf-8")
    assert f"revision {first}" in card
    # The pool changes on the Hub: the same recipe is now another recipe (no silent mix).
    second = _push_pool([*people, {"id": "h9", "username": "late", "age": 50}], tmp_path, "v2")
    assert second != first
    again = CliRunner().invoke(main, ["build", str(recipe), "--out", str(tmp_path / "run"), *sets,
                                      "--set", "annotation=null"])  # fmt: skip
    assert again.exit_code == 2 and "recipe changed" in again.output


# -- export ----------------------------------------------------------------------------------


def test_export_writes_syndisco_logs_that_syndisco_readers_read(run, tmp_path):
    out = cli("export", run, "--format", "syndisco", "--out", tmp_path / "logs")
    discussions = datasets.load_dataset(str(run / "dataset"), "discussions", split="train")
    assert f"wrote {len(discussions)} files" in out
    comments = datasets.load_dataset(str(run / "dataset"), "comments", split="train").to_list()
    one = json.loads((tmp_path / "logs" / f"{discussions[0]['discussion_id']}.json").read_text())
    assert set(one) == {"timestamp", "logs"}
    assert all(set(entry) == {"name", "text", "model", "prompt"} for entry in one["logs"])
    assert one["logs"][0]["model"] == "hardcoded"
    prompt = json.loads(one["logs"][-1]["prompt"])
    assert prompt["type"] in ("user", "moderator") and "online discussion forum" in prompt["system"]
    imported = read_syndisco_dir(tmp_path / "logs")
    assert len(imported.discussions) == len(discussions) and not imported.skipped
    got = sorted((c.author, c.text) for c in imported.comments)
    assert got == sorted((c["author"], c["text"]) for c in comments)


def test_a_downloaded_template_renders_in_the_sandbox(run, tmp_path):
    folder = _copy(run, tmp_path)
    _edit_recipe(
        folder,
        "discussion:\n  model: main\n",
        "discussion:\n  model: main\n  templates:\n"
        "    system: \"{{ ''.__class__.__mro__[1].__subclasses__() }}\"\n",
    )
    result = CliRunner().invoke(main, ["rebuild", str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "discussion.templates.system" in result.output and "unsafe" in result.output
    assert not (tmp_path / "out").exists()
