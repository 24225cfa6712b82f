"""What a dataset ships so that it can be rebuilt from itself alone (``synth-disco rebuild``).

Under ``synth_disco/`` in the dataset folder:

- ``recipe.yaml``: the resolved recipe (``--set`` overrides applied, Hub sources pinned to a
  commit) with every file reference kept as a reference, so that loading it reads the same
  files and gives the same fingerprint as the run;
- every file the run read (persona pools, posts, instruction and template files), at the same
  path relative to the recipe as in the run (``personas/users.jsonl`` next to the recipe
  becomes ``synth_disco/personas/users.jsonl``).

A reference that leaves the recipe's folder (``../shared/users.jsonl``, an absolute path) cannot
keep its path: it is shipped as ``external/<n>-<name>`` and the recipe copy points there, and a
model loaded from a local folder is named by the folder's name. Paths are part of the
fingerprint, so such a copy has a fingerprint of its own; the manifest records it (``rebuild``)
next to the run's, and ``rebuild`` checks the copy against it.
"""

from __future__ import annotations

import copy
import posixpath
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth_disco.dataset.manifest import META_DIR, AssembleError
from synth_disco.dataset.portable import portable_model_id
from synth_disco.recipe.load import fingerprint_of
from synth_disco.recipe.overrides import KeyPath
from synth_disco.store.files import sha256_file

EXTERNAL = "external"


@dataclass
class Bundle:
    """The recipe copy and the files a dataset ships, and the fingerprint the copy loads with."""

    recipe: dict[str, Any]  # the recipe copy (as written to synth_disco/recipe.yaml)
    files: dict[
        str, str
    ]  # shipped path (relative to synth_disco/) -> path relative to the run's recipe
    digests: dict[str, str]  # shipped path -> sha256
    fingerprint: str  # what loading the copy gives
    relocated: dict[str, str] = field(default_factory=dict)  # reference in the run -> in the copy

    def to_manifest(self) -> dict[str, Any]:
        return {
            "recipe": f"{META_DIR}/recipe.yaml",
            "fingerprint": self.fingerprint,
            "files": dict(sorted(self.digests.items())),
            "relocated": dict(sorted(self.relocated.items())),
        }


def _clean(ref: str) -> bool:
    """A reference that stays inside the recipe's folder, as a relative path."""
    if ref.startswith(("/", "\\", "~")) or (len(ref) > 1 and ref[1] == ":"):
        return False
    norm = posixpath.normpath(ref.replace("\\", "/"))
    return norm != ".." and not norm.startswith("../")


def _norm(ref: str) -> str:
    return posixpath.normpath(ref.replace("\\", "/"))


def _source_refs(raw: Mapping[str, Any]) -> list[tuple[KeyPath, str]]:
    """(key path, reference) of every file or folder a persona or post source names."""
    out: list[tuple[KeyPath, str]] = []
    pools = raw.get("personas") if isinstance(raw.get("personas"), Mapping) else {}
    for path, spec in [
        *((("personas", p), s) for p, s in pools.items()),
        (("posts",), raw.get("posts")),
    ]:
        if isinstance(spec, Mapping):
            for key in ("file", "dir", "hub"):
                if isinstance(spec.get(key), str):
                    out.append(((*path, key), spec[key]))
    return out


def _set(data: Any, path: KeyPath, value: Any) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def make_bundle(
    raw: Mapping[str, Any], files: Mapping[str, str], text_refs: Mapping[KeyPath, str]
) -> Bundle:
    """The bundle of a loaded recipe: ``raw`` (resolved), ``files`` (path relative to the
    recipe -> sha256) and ``text_refs`` (where each file text sits in ``raw``)."""
    refs = [*_source_refs(raw), *text_refs.items()]
    relocated: dict[str, str] = {}
    for _, ref in sorted(refs, key=lambda kv: _norm(kv[1])):
        if not _clean(ref) and ref not in relocated:
            name = posixpath.basename(_norm(ref)) or "source"
            relocated[ref] = f"{EXTERNAL}/{len(relocated)}-{name}"
    prefixes = sorted(((_norm(a), b) for a, b in relocated.items()), key=lambda kv: -len(kv[0]))

    def shipped(path: str) -> str:
        norm = _norm(path)
        for old, new in prefixes:
            if norm == old or norm.startswith(old + "/"):
                return new + norm[len(old) :]
        return norm

    shipped_files = {shipped(p): p for p in files}
    if len(shipped_files) != len(files):
        raise AssembleError("two files the recipe read would be shipped at the same path")
    digests = {s: files[p] for s, p in shipped_files.items()}

    resolved = copy.deepcopy(dict(raw))  # as the copy loads: texts inline
    recipe = copy.deepcopy(dict(raw))  # as the copy is written: file references kept
    for path, ref in _source_refs(raw):
        if ref in relocated:
            _set(resolved, path, relocated[ref])
            _set(recipe, path, relocated[ref])
    for path, ref in text_refs.items():
        _set(recipe, path, {"file": relocated.get(ref, ref)})
    for data in (resolved, recipe):
        for key, model in (data.get("models") or {}).items():
            if isinstance(model, dict) and isinstance(model.get("model"), str):
                portable = portable_model_id(model["model"])
                if portable != model["model"]:
                    relocated[f"models.{key}.model"] = portable
                model["model"] = portable
    return Bundle(recipe, shipped_files, digests, fingerprint_of(resolved, digests), relocated)


def write_bundle(bundle: Bundle, recipe_dir: Path, meta_dir: Path) -> None:
    """Copy the files the run read from ``recipe_dir`` into ``meta_dir`` (``synth_disco/``),
    refusing one whose content changed since the recipe was loaded."""
    for shipped, source in sorted(bundle.files.items()):
        src = recipe_dir / source
        dest = meta_dir / shipped
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(src, dest)
        except OSError as exc:
            raise AssembleError(f"cannot ship {source}: {exc.strerror or exc}") from exc
        if sha256_file(dest) != bundle.digests[shipped]:
            raise AssembleError(
                f"{source} changed since the recipe was loaded: it is not the file the run read"
            )
