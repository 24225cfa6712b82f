"""``synth-disco rebuild``: re-create a run from a dataset folder alone, and compare.

A dataset folder ships its recipe and every file the run read (``dataset/bundle.py``). A
downloaded dataset is not trusted: its recipe is loaded confined to the folder (absolute paths,
``..`` and links that leave it are refused with the key and line; models are named by Hub id or
built-in name only; templates render in the sandbox as always), its fingerprint must be the one
the manifest records, and only then is it built, into a run directory of its own. Finally each
data file of the new dataset is compared with the shipped one by checksum: with the same model
revisions, engine and hardware (the tiny model, greedy, on a CPU in the tests) all are identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from synth_disco.dataset.manifest import META_DIR, RECIPE_COPY, AssembleError, read_manifest
from synth_disco.errors import SynthDiscoError
from synth_disco.pipeline.build import BuildReport, build
from synth_disco.recipe.load import load_recipe
from synth_disco.store.files import sha256_file


class RebuildError(SynthDiscoError):
    """The folder cannot be rebuilt (no manifest, no shipped recipe, another fingerprint)."""

    exit_code = 2


@dataclass
class RebuildReport:
    """The build, and how its data files compare with the ones the dataset shipped."""

    build: BuildReport
    fingerprint: str
    identical: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # shipped, but not made by the rebuild
    extra: list[str] = field(default_factory=list)  # made by the rebuild, not shipped

    @property
    def same(self) -> bool:
        return not (self.differing or self.missing or self.extra)


def rebuild(folder: Path, out: Path, *, verbose: bool = False) -> RebuildReport:
    """Rebuild the run of the dataset folder ``folder`` into the run directory ``out``."""
    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
    except AssembleError as e:
        raise RebuildError(f"{folder.as_posix()} is not a synth-disco dataset folder: {e}") from e
    shipped = manifest.get("rebuild")
    recipe = folder / RECIPE_COPY
    if not shipped or not recipe.is_file():
        raise RebuildError(
            f"{folder.as_posix()} ships no recipe to rebuild from ({RECIPE_COPY}): it was made "
            "by an older synth-disco"
        )
    if out.resolve().is_relative_to(folder.resolve()):
        raise RebuildError("--out must be outside the dataset folder being rebuilt")
    loaded = load_recipe(recipe, confine=folder)
    if loaded.fingerprint != shipped["fingerprint"]:
        raise RebuildError(
            f"the recipe in {RECIPE_COPY} has fingerprint {loaded.short_fingerprint}, not "
            f"{shipped['fingerprint'][:12]} as its manifest records: the folder was changed "
            f"(or a file under {META_DIR}/ is missing)"
        )
    report = build(recipe, out=out, verbose=verbose, confine=folder)
    result = RebuildReport(report, loaded.fingerprint)
    made = read_manifest(report.dataset_dir or out / "dataset")
    for rel, digest in sorted(manifest["files"].items()):
        if rel not in made["files"]:
            result.missing.append(rel)
        elif sha256_file((report.dataset_dir or out / "dataset") / rel) == digest:
            result.identical.append(rel)
        else:
            result.differing.append(rel)
    result.extra = sorted(set(made["files"]) - set(manifest["files"]))
    return result
