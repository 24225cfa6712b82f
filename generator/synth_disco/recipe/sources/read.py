"""Reading a source's raw records from local files, directories and Hub datasets.

A source yields raw records (a string, or a mapping of columns), each a ``RawRecord`` that keeps
its position in the source and, when files name the records, a file-based key. A file is parsed
by its format (from the extension, or ``format``); a directory gives a record per ``.json``,
``.jsonl``, ``.yaml`` or ``.txt`` file (one per item when a file holds a list); a ``hub:``
source is a Hub dataset id, or a local dataset folder or file next to the recipe, loaded with
``datasets``. ``hub_commit`` resolves a Hub source to the commit every later load reads, and
``source_files`` lists the local files a source reads, for the recipe fingerprint.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from synth_disco.errors import SourceError
from synth_disco.recipe.schema import SourceSpec

FILE_FORMATS = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".txt": "txt",
    ".md": "txt",
}
# In a directory, only these make records; anything else (a README, .DS_Store) is skipped.
DIR_FORMATS = {".json": "json", ".jsonl": "jsonl", ".yaml": "yaml", ".yml": "yaml", ".txt": "txt"}


@dataclass(frozen=True)
class RawRecord:
    """One record as read: ``index`` is its position in the source, ``key`` a file-based id."""

    index: int
    key: str | None
    value: Any


def _fmt(spec: SourceSpec, path: Path) -> str:
    if spec.format != "auto":
        return spec.format
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SourceError(
            f"cannot tell the format of {path.name!r} from its extension; set `format` "
            f"(one of json, jsonl, csv, yaml, txt)",
            "file",
        )
    return fmt


def _parse_text(text: str, fmt: str, shown: str, key: str) -> list[Any]:
    """Parse one file's text into a list of records (a single object counts as one record)."""
    if fmt == "txt":
        return [text.strip()]
    if fmt == "jsonl":
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SourceError(f"{shown}:{n}:{e.colno}: invalid JSON: {e.msg}", key) from e
        return out
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SourceError(f"{shown}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}", key) from e
    elif fmt == "yaml":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e)
            raise SourceError(f"{shown}{at}: invalid YAML: {problem}", key) from e
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        return [dict(r) for r in rows]
    else:  # pragma: no cover - guarded by the schema's Literal
        raise SourceError(f"unknown format {fmt!r}", "format")
    if data is None:
        return []
    return data if isinstance(data, list) else [data]


def _read_file(path: Path, shown: str, key: str) -> str:
    if not path.is_file():
        what = "a directory, not a file" if path.is_dir() else "not found"
        raise SourceError(f"{shown}: {what}", key)
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{shown}: cannot read: {e}", key) from e


def _read_dir(spec: SourceSpec, base_dir: Path) -> list[RawRecord]:
    assert spec.dir is not None
    root = base_dir / spec.dir
    if not root.is_dir():
        what = "a file, not a directory" if root.exists() else "not found"
        raise SourceError(f"{spec.dir}: {what}", "dir")
    files = [
        p
        for p in sorted(root.iterdir(), key=lambda p: p.name)
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in DIR_FORMATS
    ]
    if not files:
        raise SourceError(f"{spec.dir}: no .json, .jsonl, .yaml or .txt files in it", "dir")
    out: list[RawRecord] = []
    for path in files:
        fmt = spec.format if spec.format != "auto" else DIR_FORMATS[path.suffix.lower()]
        shown = f"{spec.dir.rstrip('/')}/{path.name}"
        items = _parse_text(_read_file(path, shown, "dir"), fmt, shown, "dir")
        for i, item in enumerate(items):
            key = path.stem if len(items) == 1 else f"{path.stem}-{i}"
            out.append(RawRecord(len(out), key, item))
    return out


def _hub_path(spec: SourceSpec, base_dir: Path) -> str:
    """A Hub id, or a local dataset folder / file relative to the recipe when one exists."""
    assert spec.hub is not None
    local = base_dir / spec.hub
    return str(local) if local.exists() else spec.hub


FULL_SHA = re.compile(r"[0-9a-f]{40}")


def is_local_hub(spec: SourceSpec, base_dir: Path) -> bool:
    """Whether a ``hub:`` source names a local dataset folder or file (next to the recipe)."""
    return spec.hub is not None and (base_dir / spec.hub).exists()


def hub_commit(spec: SourceSpec, base_dir: Path) -> str | None:
    """The commit a Hub source reads: its ``revision`` (a branch, a tag, or none: the default
    branch) resolved to the full commit id, so that every later load, a resume or a rebuild
    reads the same version of the pool. None for a local dataset folder."""
    if spec.hub is None or is_local_hub(spec, base_dir):
        return None
    if spec.revision and FULL_SHA.fullmatch(spec.revision):
        return spec.revision
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(spec.hub, revision=spec.revision).sha
    except Exception as e:  # the client raises many kinds; all mean "cannot resolve it"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        at = f" at {spec.revision!r}" if spec.revision else ""
        raise SourceError(
            f"cannot resolve dataset {spec.hub!r}{at} to a commit: {msg}", "hub"
        ) from e


def _load_hub(spec: SourceSpec, base_dir: Path) -> Any:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise SourceError("the `datasets` package is needed for hub sources", "hub") from e
    try:
        ds = datasets.load_dataset(
            _hub_path(spec, base_dir), spec.config, split=spec.split, revision=spec.revision
        )
    except Exception as e:  # datasets raises many kinds; all mean "cannot load this source"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        # Keep machine-specific paths out of the message.
        msg = msg.replace(str(base_dir), ".")
        raise SourceError(f"cannot load dataset {spec.hub!r}: {msg}", "hub") from e
    return ds


def source_files(spec: SourceSpec, base_dir: Path) -> list[Path]:
    """The local files a source reads, for the recipe fingerprint (missing ones are skipped)."""
    if spec.file is not None:
        p = base_dir / spec.file
        return [p] if p.is_file() else []
    if spec.dir is not None:
        root = base_dir / spec.dir
        if not root.is_dir():
            return []
        return [
            p
            for p in sorted(root.iterdir(), key=lambda p: p.name)
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in DIR_FORMATS
        ]
    if spec.hub is not None:
        local = base_dir / spec.hub
        if local.is_file():
            return [local]
        if local.is_dir():
            return sorted(
                (
                    p
                    for p in local.rglob("*")
                    if p.is_file() and not any(part.startswith(".") for part in p.parts[-1:])
                ),
                key=lambda p: p.as_posix(),
            )
    return []
