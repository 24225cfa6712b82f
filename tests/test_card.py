"""The dataset card: a header the Hub and `datasets` parse, the generated body, figures,
re-rendering that keeps a person's edits, and the template shipped in the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import datasets
import pytest
import yaml
from click.testing import CliRunner
from huggingface_hub import DatasetCard

from synth_disco.cli import main
from synth_disco.dataset.assembly import assemble
from synth_disco.dataset.card import (
    TEMPLATE,
    prompt_templates,
    render_card,
    rerender_card,
    size_category,
    template_dir,
)
from synth_disco.dataset.manifest import read_manifest
from synth_disco.dataset.readme import CARD_BEGIN, CARD_END
from synth_disco.discussion.prompts import builtin_template
from synth_disco.recipe.schema import Recipe
from test_dataset import AGREEMENT, ANNOTATORS, USERS, make_recipe, make_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = make_run(tmp_path_factory.mktemp("card") / "run")
    recipe, raw = make_recipe(
        description="Moderation strategies in small forums.",
        license="cc-by-sa-4.0",
    )
    return assemble(
        store,
        recipe,
        raw,
        "fp-abc",
        agreement=AGREEMENT,
        personas={"users": USERS, "annotators": ANNOTATORS},
        repo="org/unit-test",
    )


def test_header_parses_with_huggingface_hub(folder: Path) -> None:
    card = DatasetCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "cc-by-sa-4.0"
    assert data["language"] == ["en"]
    assert {"synthetic", "synth-disco", "moderation"} <= set(data["tags"])
    assert data["task_categories"] == ["text-generation", "text-classification"]
    assert data["size_categories"] == ["n<1K"]
    assert data["pretty_name"] == "unit-test"
    configs = {c["config_name"]: c for c in data["configs"]}
    # events: the failed turn; agreement: the dimension with figures; no aggregates or prompts
    # (the hand-made shards have none): configs without rows are left out
    assert list(configs) == [
        "discussions",
        "comments",
        "events",
        "annotations",
        "agreement",
        "personas",
    ]
    assert configs["discussions"]["default"] is True
    assert configs["comments"]["data_files"] == [
        {"split": "train", "path": "data/comments/train-*"}
    ]
    infos = {i["config_name"]: i for i in data["dataset_info"]}
    assert infos["comments"]["splits"][0]["num_examples"] == 17


def test_datasets_reads_configs_and_infos_from_the_card(folder: Path) -> None:
    assert datasets.get_dataset_config_names(str(folder)) == [
        "discussions",
        "comments",
        "events",
        "annotations",
        "agreement",
        "personas",
    ]
    builder = datasets.load_dataset_builder(str(folder), "annotations")
    assert builder.info.splits["train"].num_examples == 24
    assert isinstance(builder.info.features["scores"], datasets.List)


def test_body_sections(folder: Path) -> None:
    text = (folder / "README.md").read_text()
    body = text[text.index(CARD_BEGIN) : text.index(CARD_END)]
    for needle in (
        'load_dataset("org/unit-test", "comments", revision="v1.2.0")',
        "Moderation strategies in small forums.",
        "| none | calm | 3 | 1 | 6 |",  # design table: levels, discussions, failed, comments
        "temperature=0.7",  # generation parameters
        "abc123",  # resolved model revision
        "Write like a forum user.",  # participant instructions
        "| `troll` | 30% | Provoke. |",  # variants with shares
        "cc0-1.0",  # persona source licence
        "| `3` | severe | 4 | 33.3% |",  # label distribution
        "**0.410** over 12 comments with two or more labels.",  # agreement
        "2.40 / 0 / 3",  # comments per discussion
        "synth-disco rebuild org/unit-test@v1.2.0 --out rebuilt",
        "fp-abc",
        "| datasets | " + datasets.__version__,
        "Limitations and intended use",
        "@misc{unit_test_1_2_0",
    ):
        assert needle in body, needle


def test_a_meaning_column_only_when_labels_have_descriptions(folder: Path) -> None:
    text = (folder / "README.md").read_text()
    toxicity = text[text.index("### `toxicity`") : text.index("### `stance`")]
    stance = text[text.index("### `stance`") : text.index("## Statistics")]
    assert "| label | meaning | count | share |" in toxicity  # "1": none, "3": severe
    assert "| label | count | share |" in stance and "meaning" not in stance
    assert "| `pro` | 12 | 100.0% |" in stance


def test_header_says_how_the_data_was_made_and_from_what(folder: Path) -> None:
    data = DatasetCard.load(folder / "README.md").data.to_dict()
    assert data["annotations_creators"] == ["machine-generated"]
    assert data["language_creators"] == ["machine-generated"]
    assert data["source_datasets"] == ["original"]  # no Hub sources in this recipe


def test_citation_has_authors_and_the_year_the_run_started(tmp_path: Path) -> None:
    store = make_run(tmp_path / "run")
    store.write_run({"name": "unit-test", "version": "1.2.0", "fingerprint": "fp",
                     "replicates": 2, "created": "2031-05-06T07:08:09Z", "history": []})  # fmt: skip
    recipe, raw = make_recipe(output={"authors": ["Ada Lovelace", "Alan Turing"]})
    folder = assemble(store, recipe, raw, "fp", repo="org/unit-test")
    text = (folder / "README.md").read_text()
    bib = text[text.index("```bibtex") :]
    assert "author = {Ada Lovelace and Alan Turing}," in bib
    assert "year = {2031}," in bib
    recipe, raw = make_recipe()  # no authors: the Hub organisation, as one name
    folder = assemble(store, recipe, raw, "fp", repo="org/unit-test")
    assert "author = {{org}}," in (folder / "README.md").read_text()


@pytest.mark.parametrize(
    ("install", "command", "note"),
    [
        ({"kind": "index", "version": "0.1.0"}, "pip install synth-disco==0.1.0", ""),
        (
            {"kind": "git", "commit": "c0ffee", "dirty": False, "url": "https://git.example/sd"},
            'pip install "synth-disco @ git+https://git.example/sd@c0ffee"',
            "at commit `c0ffee` (not from PyPI)",
        ),
        (
            {"kind": "git", "commit": "c0ffee", "dirty": True, "url": None},
            'pip install "git+<the synth-disco repository>@c0ffee"',
            "uncommitted changes",
        ),
    ],
)
def test_the_card_says_how_to_install_the_exact_version(install, command, note) -> None:
    from synth_disco.dataset.card.reproduce import _install

    got = _install({"install": install}, "0.1.0")
    assert got["command"] == command and note in got["note"]


def test_only_public_repository_urls_reach_a_card() -> None:
    from synth_disco.dataset.manifest import _public_url

    assert _public_url("https://user:secret@github.com/o/r.git") == "https://github.com/o/r.git"
    assert _public_url("git@github.com:o/r.git") == "git@github.com:o/r.git"
    assert _public_url("/home/me/src/synth-disco") is None
    assert _public_url("file:///home/me/src") is None


def test_figure_is_a_png_referenced_from_the_card(folder: Path) -> None:
    png = folder / "figures" / "labels_by_moderation.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](figures/labels_by_moderation.png)" in (folder / "README.md").read_text()


def test_rerender_gives_the_same_card(folder: Path) -> None:
    before = (folder / "README.md").read_bytes()
    figure = (folder / "figures" / "labels_by_moderation.png").read_bytes()
    rerender_card(folder.parent)
    assert (folder / "README.md").read_bytes() == before
    assert (folder / "figures" / "labels_by_moderation.png").read_bytes() == figure


def test_rerender_keeps_text_and_tags_added_outside_the_markers(tmp_path: Path) -> None:
    store = make_run(tmp_path / "run")
    recipe, raw = make_recipe()
    folder = assemble(store, recipe, raw, "fp")
    readme = folder / "README.md"
    text = readme.read_text()
    text = text.replace("tags:\n", "tags:\n- my-tag\n", 1)
    text = text.replace(CARD_BEGIN, "Intro by a person.\n\n" + CARD_BEGIN)
    text = text.replace(CARD_END, CARD_END + "\n\n## Notes\nKept.\n")
    text = text.replace("## Summary", "## Edited inside the markers")
    readme.write_text(text)

    rerender_card(tmp_path / "run")
    new = readme.read_text()
    assert "Intro by a person." in new and "## Notes\nKept." in new
    assert "Edited inside the markers" not in new and "## Summary" in new
    assert "my-tag" in DatasetCard.load(readme).data.tags
    # ... and a full re-assembly keeps them too.
    assemble(store, recipe, raw, "fp")
    assert "## Notes\nKept." in readme.read_text()


def test_card_without_factors_or_annotations(tmp_path: Path) -> None:
    store = make_run(tmp_path / "run", annotate=False)
    recipe, raw = make_recipe(annotate=False, output={"max_rows_per_file": 100})
    folder = assemble(store, recipe, raw, "fp")
    figures = sorted(p.name for p in (folder / "figures").iterdir())
    assert figures == [
        "comment_length_by_moderation.png",
        "comment_length_by_tone.png",
        "quality_by_moderation.png",
        "quality_by_tone.png",
    ]
    data = DatasetCard.load(folder / "README.md").data.to_dict()
    assert data["task_categories"] == ["text-generation"]
    assert "annotations" not in {c["config_name"] for c in data["configs"]}
    assert "## Annotation scheme" not in (folder / "README.md").read_text()


def test_stale_figures_are_removed(tmp_path: Path) -> None:
    store = make_run(tmp_path / "run")
    recipe, raw = make_recipe()
    folder = assemble(store, recipe, raw, "fp")
    recipe2, _ = make_recipe()
    # Same rows, but a recipe without factors: one overall figure replaces the per-factor ones.
    manifest = read_manifest(folder)
    stats = {**manifest["stats"], "by_level": {}}
    render_card(folder, recipe2.model_copy(update={"factors": {}}), "fp", stats, manifest=manifest)
    assert sorted(p.name for p in (folder / "figures").iterdir()) == [
        "labels_overall.png",
        "quality_overall.png",
    ]


@pytest.mark.parametrize(
    ("n", "bucket"),
    [
        (0, "n<1K"),
        (999, "n<1K"),
        (1000, "1K<n<10K"),
        (12_345, "10K<n<100K"),
        (2_000_000, "1M<n<10M"),
    ],
)
def test_size_categories(n: int, bucket: str) -> None:
    assert size_category(n) == bucket


def test_template_is_shipped_in_the_wheel(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    (src / "README.md").write_text("x\n")
    shutil.copytree(
        ROOT / "generator" / "synth_disco",
        src / "generator" / "synth_disco",
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(src),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "wheel"),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = zf.read(f"synth_disco/dataset/templates/{TEMPLATE}")
    assert shipped == (template_dir() / TEMPLATE).read_bytes()


def test_the_template_has_one_home_and_dataset_cards_points_at_it() -> None:
    # The template lives in the package only; the top-level folder users look in says where.
    packaged = template_dir() / TEMPLATE
    assert packaged.is_file() and not packaged.is_symlink()
    assert packaged.parent == ROOT / "generator" / "synth_disco" / "dataset" / "templates"
    assert sorted(p.name for p in (ROOT / "dataset_cards").iterdir()) == ["README.md"]
    note = (ROOT / "dataset_cards" / "README.md").read_text()
    assert f"generator/synth_disco/dataset/templates/{TEMPLATE}" in note


def test_an_edited_copy_of_the_template_renders_the_card(folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "my_cards"
    copy.mkdir()
    text = (template_dir() / TEMPLATE).read_text()
    (copy / TEMPLATE).write_text(text.replace("## Summary", "## Our summary", 1))
    manifest = read_manifest(folder)
    recipe = Recipe.model_validate(manifest["recipe"])
    out = tmp_path / "copy"
    shutil.copytree(folder, out)
    render_card(out, recipe, "fp", manifest["stats"], manifest=manifest, templates=copy)
    card = (out / "README.md").read_text()
    assert "## Our summary" in card and "## Summary" not in card


def test_header_round_trips_through_yaml(folder: Path) -> None:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["configs"][0]["config_name"] == "discussions"


def test_undefined_agreement_is_said_so(tmp_path: Path) -> None:
    store = make_run(tmp_path / "run")
    recipe, raw = make_recipe()
    agreement = {"toxicity": {"alpha": None, "level": "ordinal", "n_items": 0}}
    folder = assemble(store, recipe, raw, "fp", agreement=agreement)
    assert "undefined for this dimension" in (folder / "README.md").read_text()


# -- issue 12 ------------------------------------------------------------------------------------


def test_rerender_merges_a_crlf_readme(tmp_path: Path) -> None:
    # Defect 7: a README saved with CRLF line endings used to come back with mixed ones.
    store = make_run(tmp_path / "run")
    recipe, raw = make_recipe()
    folder = assemble(store, recipe, raw, "fp")
    readme = folder / "README.md"
    text = readme.read_text().replace("tags:\n", "tags:\n- my-tag\n", 1)
    text = text.replace(CARD_END, CARD_END + "\n\n## Notes\nKept.\n")
    readme.write_bytes(text.replace("\n", "\r\n").encode())

    rerender_card(tmp_path / "run")

    new = readme.read_bytes()
    assert b"\r" not in new
    assert b"## Notes\nKept." in new and new.count(CARD_BEGIN.encode()) == 1
    assert "my-tag" in DatasetCard.load(readme).data.tags
    rerender_card(tmp_path / "run")
    assert readme.read_bytes() == new


def test_rerender_keeps_a_readme_without_markers_after_the_card(tmp_path: Path) -> None:
    # Defect 7: the same rule as pushing (test_hub.py): a README without markers is kept.
    store = make_run(tmp_path / "run")
    recipe, raw = make_recipe()
    folder = assemble(store, recipe, raw, "fp")
    readme = folder / "README.md"
    readme.write_text("---\nlicense: mit\ntags:\n- my-tag\n---\n# Our dataset\n\nWritten by us.\n")

    rerender_card(tmp_path / "run")

    new = readme.read_text()
    assert new.count(CARD_BEGIN) == 1
    assert new.endswith(f"{CARD_END}\n\n# Our dataset\n\nWritten by us.\n")
    data = DatasetCard.load(readme).data
    assert data.license == "cc-by-4.0" and "my-tag" in data.tags  # generated keys win
    rerender_card(tmp_path / "run")
    assert readme.read_text() == new


def test_card_on_an_unassembled_run_is_one_message(tmp_path: Path) -> None:
    # Defect 3: AssembleError was not a SynthDiscoError, so the CLI printed a traceback.
    make_run(tmp_path / "run")  # finished shards, never assembled
    result = CliRunner().invoke(main, ["card", str(tmp_path / "run")], catch_exceptions=False)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "manifest.json not found in the dataset folder: assemble the run first" in result.output


def test_card_prints_the_exact_text_of_every_template_used(tmp_path: Path) -> None:
    # Defect 1: the card named templates "set by the recipe" that nothing rendered; now every
    # template the discussion and annotation code render is printed verbatim, and only those.
    system = "You are in a forum about {{ context }}.\n```\nNo `code` here.\n```"
    moderator = "MODERATOR TEMPLATE {{ context }}"
    annotation = "ANNOTATION TEMPLATE {{ target.text }}"
    store = make_run(tmp_path / "run")
    recipe, raw = make_recipe()
    raw["discussion"]["templates"] = {
        "system": system,
        "moderator_system": moderator,
        "annotation": annotation,
    }
    recipe = Recipe.model_validate(raw)
    folder = assemble(store, recipe, raw, "fp")

    turn = builtin_template("turn.j2")
    shown = dict(prompt_templates(recipe))
    assert shown["system"] == system and shown["turn"] == turn
    assert shown["moderator_system"] == moderator  # a factor level adds a moderator
    assert shown["annotation: annotation (set by the recipe)"] == annotation
    assert "annotation: window.j2" not in shown  # replaced by the recipe's
    body = (folder / "README.md").read_text()
    assert f"````jinja\n{system}\n````" in body  # a fence longer than the template's own
    assert f"```jinja\n{turn.rstrip()}\n```" in body
    assert moderator in body and annotation in body


def test_card_lists_no_template_nothing_renders(tmp_path: Path) -> None:
    recipe, raw = make_recipe(annotate=False)
    raw["factors"] = {"tone": {"calm": {}}}
    raw["discussion"]["templates"] = {"moderator_system": "NEVER RENDERED"}
    recipe = Recipe.model_validate(raw)
    shown = dict(prompt_templates(recipe))
    assert set(shown) == {"system", "turn"}
