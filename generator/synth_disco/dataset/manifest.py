"""The layout of an assembled dataset folder and its manifest.

::

    dataset/
      README.md                                   the card (``card/``)
      data/<config>/train-00000-of-00002.parquet  configs: see CONFIGS and dataset/tables.py
      figures/*.png                               drawn from the statistics (``figures.py``)
      synth_disco/recipe.yaml                     the resolved recipe
      synth_disco/manifest.json                   fingerprint, versions, models, checksums, counts, stats

The manifest holds everything needed to check the folder and to re-render its card without the
run or the rows: package versions, each model's resolved revision, the checksum of every file
and shard, the counts, the statistics and the validated recipe (its local paths made portable).
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from synth_disco.dataset.portable import portable_model_id, portable_recipe
from synth_disco.engines.registry import ENGINES
from synth_disco.errors import SynthDiscoError
from synth_disco.recipe.overrides import patch_leaves
from synth_disco.recipe.schema import Recipe
from synth_disco.store.files import sha256_file
from synth_disco.store.run_dir import RunStore

SPLIT = "train"
CONFIGS = (
    "discussions",
    "comments",
    "events",
    "annotations",
    "aggregates",
    "agreement",
    "prompts",
    "personas",
)
META_DIR = "synth_disco"
MANIFEST = f"{META_DIR}/manifest.json"
RECIPE_COPY = f"{META_DIR}/recipe.yaml"
MANIFEST_FORMAT = 1
VERSIONED_PACKAGES = (
    "synth-disco",
    "torch",
    "transformers",
    "datasets",
    "huggingface_hub",
    "pyarrow",
)


class AssembleError(SynthDiscoError):
    """The run cannot be assembled (no finished shards, a changed shard file, a leaked path), or
    a folder is not an assembled dataset."""


def data_file(config: str, index: int, count: int) -> str:
    """Relative path of one parquet file, in the Hub's ``<split>-XXXXX-of-YYYYY`` naming."""
    return f"data/{config}/{SPLIT}-{index:05d}-of-{count:05d}.parquet"


@dataclass
class ConfigFiles:
    """What was written for one config (its entry under ``configs`` in the manifest)."""

    name: str
    files: list[str]  # relative paths, in order
    num_examples: int
    num_bytes: int  # arrow (uncompressed) size
    download_size: int  # parquet size on disk

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "num_examples": self.num_examples,
            "num_bytes": self.num_bytes,
            "download_size": self.download_size,
        }


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape the output (read without importing them)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in VERSIONED_PACKAGES:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


_PUBLIC_URL = re.compile(r"^(?:https?://|git@|ssh://)")


def _public_url(url: str | None) -> str | None:
    """A repository URL fit for a card: http(s) or ssh, without credentials; None for a local
    path (it would name the machine)."""
    if not url or not _PUBLIC_URL.match(url.strip()):
        return None
    return re.sub(r"^(https?://)[^/@]+@", r"\1", url.strip())


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def install_source() -> dict[str, Any]:
    """Where the running synth-disco comes from, so a card can say how to install exactly it.

    The code itself is checked first: a package inside a git checkout (an editable install, a
    ``PYTHONPATH``) reports that checkout's commit, whether it has uncommitted changes, and its
    ``origin`` URL when that is public. Else an install from git records its commit
    (``direct_url.json``); else the package came from an index (PyPI): its version says it all.
    """
    import synth_disco

    version = package_versions()["synth-disco"]
    try:
        dist = importlib.metadata.distribution("synth-disco")
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        urls = [u.split(",", 1)[-1].strip() for u in dist.metadata.get_all("Project-URL") or []]
    except importlib.metadata.PackageNotFoundError:
        direct, urls = {}, []
    folder = Path(synth_disco.__file__).resolve().parent
    commit = _git(folder, "rev-parse", "HEAD")
    if commit:
        return {
            "kind": "git",
            "version": version or synth_disco.__version__,
            "commit": commit,
            "dirty": bool(_git(folder, "status", "--porcelain", "--", ".")),
            "url": _public_url(_git(folder, "config", "--get", "remote.origin.url"))
            or next((u for u in map(_public_url, urls) if u), None),
        }
    vcs = direct.get("vcs_info") or {}
    if vcs.get("commit_id"):
        return {
            "kind": "git",
            "version": version,
            "commit": vcs["commit_id"],
            "dirty": False,
            "url": _public_url(direct.get("url")),
        }
    return {"kind": "index", "version": version or synth_disco.__version__}


def used_pools(recipe: Recipe) -> dict[str, str]:
    """Persona pools the run draws from -> what for ("participants" / "annotators"), including
    pools that only some factor levels switch to: the pools the ``personas`` config publishes."""
    pools = {recipe.discussion.persona_pool: "participants"}
    if recipe.annotation is not None:
        pools.setdefault(recipe.annotation.annotators.pool, "annotators")
    for levels in recipe.factors.values():
        for patch in levels.values():
            for path, value in patch_leaves(patch):
                if path == ("discussion", "persona_pool") and isinstance(value, str):
                    pools.setdefault(value, "participants")
                elif path == ("annotation", "annotators", "pool") and isinstance(value, str):
                    pools.setdefault(value, "annotators")
    return pools


class _BlockDumper(yaml.SafeDumper):
    """Safe YAML with multi-line strings as ``|`` blocks, so prompts read as written."""


def _str_block(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_block)


def dump_yaml(data: Any) -> str:
    """YAML for people: keys in their order, unicode kept, multi-line strings as blocks."""
    return yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=100)


def _models_manifest(
    recipe: Recipe, seen: list[dict[str, Any]], engines: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each recipe model: id, revision (the resolved one from the rows when known), engine,
    what the loaded engine reported (``reported_id``: the id a server gave; ``loaded``: its
    ``engine_info``, e.g. the dtype ``auto`` became), the engine's reproducibility and the
    generation parameters."""
    out = {}
    for key, m in recipe.models.items():
        model_id = portable_model_id(m.model)
        # The engine's own record, minus the model as the recipe wrote it (maybe a local path).
        loaded = [
            {k: v for k, v in e.items() if k not in ("model", "reproducibility")}
            for e in engines
            if e.get("engine") == m.engine and e.get("model") == m.model
        ]
        reported = sorted({str(e["name"]) for e in loaded if e.get("name")})
        names = (m.model, model_id, key, *reported)
        resolved = sorted({s["revision"] for s in seen if s["model"] in names})
        resolved = [r for r in resolved if r]
        out[key] = {
            "id": model_id,
            "reported_id": reported[0] if len(reported) == 1 else (reported or None),
            "revision": resolved[0] if len(resolved) == 1 else (resolved or m.revision),
            "requested_revision": m.revision,
            "engine": m.engine,
            "dtype": m.dtype,
            "loaded": loaded,
            "reproducibility": ENGINES[m.engine].reproducibility if m.engine in ENGINES else None,
            "generation": {
                "max_new_tokens": m.max_new_tokens,
                "temperature": m.temperature,
                "top_p": m.top_p,
                "top_k": m.top_k,
                "repetition_penalty": m.repetition_penalty,
                "stop": list(m.stop),
            },
        }
    return out


def build_manifest(
    recipe: Recipe,
    fingerprint: str,
    store: RunStore,
    written: Mapping[str, ConfigFiles],
    stats: dict[str, Any],
    agreement: Mapping[str, Mapping[str, Any]] | None,
    folder: Path,
    *,
    repo: str | None = None,
    source_files: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The manifest of the folder being written at ``folder``."""
    configs = {name: written[name].to_dict() for name in CONFIGS if name in written}
    files = {rel: sha256_file(folder / rel) for name in configs for rel in written[name].files}
    shards = {
        stage: [
            {
                "shard": i.shard,
                "files": dict(sorted(i.files.items())),
                "counts": dict(sorted(i.counts.items())),
                "members": len(i.members),
            }
            for i in store.done_shards(stage)
        ]
        for stage in ("discuss", "annotate")
    }
    return {
        "format": MANIFEST_FORMAT,
        "name": recipe.name,
        "version": recipe.version,
        "fingerprint": fingerprint,
        "versions": package_versions(),
        "install": install_source(),
        "created": (store.read_run() or {}).get("created"),
        "models": _models_manifest(recipe, stats["models_seen"], store.read_engines()),
        "counts": {name: c["num_examples"] for name, c in configs.items()},
        "configs": configs,
        "files": files,
        "shards": shards,
        "source_files": {portable_model_id(k): v for k, v in sorted((source_files or {}).items())},
        "failures": stats["failures"],
        "agreement": {k: dict(v) for k, v in sorted((agreement or {}).items())} or None,
        "repo": repo,
        "recipe": portable_recipe(recipe.model_dump(mode="json")),
        "stats": stats,
    }


def read_manifest(dataset_dir: Path) -> dict[str, Any]:
    """The manifest of an assembled folder (``AssembleError`` when it has none)."""
    path = Path(dataset_dir) / MANIFEST
    if not path.exists():
        raise AssembleError(f"{MANIFEST} not found in the dataset folder: assemble the run first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AssembleError(f"{MANIFEST} is not valid JSON ({exc}): re-assemble the run") from exc
