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
from huggingface_hub import DatasetCard

from synth_disco.card import CARD_BEGIN, CARD_END, TEMPLATE, rerender_card, size_category
from synth_disco.dataset import assemble
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
    assert list(configs) == ["discussions", "comments", "annotations", "personas"]
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
        "annotations",
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
        "**0.410** over 12 items",  # agreement
        "2.40 / 0 / 3",  # comments per discussion
        "pip install synth-disco==",
        "synth-disco build synth_disco/recipe.yaml",
        "fp-abc",
        "| datasets | " + datasets.__version__,
        "Limitations and intended use",
        "@misc{unit_test_1_2_0",
    ):
        assert needle in body, needle


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
    assert figures == ["comment_length_by_moderation.png", "comment_length_by_tone.png"]
    data = DatasetCard.load(folder / "README.md").data.to_dict()
    assert data["task_categories"] == ["text-generation"]
    assert "annotations" not in {c["config_name"] for c in data["configs"]}
    assert "## Annotation scheme" not in (folder / "README.md").read_text()


def test_stale_figures_are_removed(tmp_path: Path) -> None:
    store = make_run(tmp_path / "run")
    recipe, raw = make_recipe()
    folder = assemble(store, recipe, raw, "fp")
    recipe2, raw2 = make_recipe()
    raw2["factors"] = {}
    # Same rows, but a recipe without factors: one overall figure replaces the per-factor ones.
    from synth_disco.card import render_card
    from synth_disco.dataset import read_manifest

    manifest = read_manifest(folder)
    stats = {**manifest["stats"], "by_level": {}}
    render_card(
        folder, recipe2.model_copy(update={"factors": {}}), raw2, "fp", stats, manifest=manifest
    )
    assert sorted(p.name for p in (folder / "figures").iterdir()) == ["labels_overall.png"]


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
    shutil.copytree(ROOT / "dataset_cards", src / "dataset_cards")
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
        shipped = zf.read(f"synth_disco/dataset_cards/{TEMPLATE}")
    assert shipped == (ROOT / "dataset_cards" / TEMPLATE).read_bytes()


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
