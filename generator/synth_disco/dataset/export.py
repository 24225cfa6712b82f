"""Exports of an assembled dataset to other tools' formats: ``syndisco``.

``syndisco``: SynDisco 2.1+'s discussion logs, one JSON file per discussion, so analysis
scripts written for SynDisco keep working: ``{"timestamp", "logs": [{"name", "text", "model",
"prompt"}]}``. The original post and seed comments have ``model: "hardcoded"`` (as SynDisco
writes them); ``prompt`` is, as in SynDisco, a JSON object as a string: the speaker's
``type`` ("user" or "moderator"), ``name``, ``persona``, ``instructions`` and, from the
``prompts`` config, the ``system`` message the comment was generated with (empty for
hardcoded comments). ``timestamp`` is SynDisco's ``%y-%m-%d-%H-%M`` of the run's creation.
Files are named ``<discussion_id>.json``. Failed discussions are exported with the comments they
have. Labels are not exported: SynDisco's annotation files hold free text, not a label set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from synth_disco.dataset.manifest import AssembleError, read_manifest
from synth_disco.store.files import atomic_write_text

FORMATS = ("syndisco",)
HARDCODED = "hardcoded"


def _rows(folder: Path, manifest: dict[str, Any], config: str) -> Iterator[dict[str, Any]]:
    for rel in manifest["configs"].get(config, {}).get("files", []):
        yield from pq.read_table(folder / rel).to_pylist()


def _timestamp(created: str | None) -> str:
    if created:
        try:
            return time.strftime("%y-%m-%d-%H-%M", time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            pass
    return "00-01-01-00-00"


def export_syndisco(dataset_dir: Path, out: Path, created: str | None = None) -> list[Path]:
    """Write one SynDisco log file per discussion of ``dataset_dir`` into ``out``."""
    dataset_dir = Path(dataset_dir)
    manifest = read_manifest(dataset_dir)
    systems = {p["prompt_id"]: p["system"] for p in _rows(dataset_dir, manifest, "prompts")}
    discussions = {d["discussion_id"]: d for d in _rows(dataset_dir, manifest, "discussions")}
    comments: dict[str, list[dict[str, Any]]] = {d: [] for d in discussions}
    for c in _rows(dataset_dir, manifest, "comments"):
        comments.setdefault(c["discussion_id"], []).append(c)
    stamp = _timestamp(created)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for did, d in discussions.items():
        people = {p["name"]: p for p in d["participants"] or []}
        mod = d["moderator"] or {}
        logs = []
        for c in sorted(comments[did], key=lambda c: c["index"]):
            if c["role"] in ("op", "seed"):
                logs.append(
                    {"name": c["author"], "text": c["text"], "model": HARDCODED, "prompt": ""}
                )
                continue
            moderator = c["role"] == "moderator"
            who = people.get(c["author"], {})
            prompt = {
                "type": "moderator" if moderator else "user",
                "name": c["author"],
                "persona": "" if moderator else (who.get("persona") or {}).get("description", ""),
                "instructions": (mod if moderator else who).get("instructions") or "",
                "system": systems.get(c["prompt_id"], ""),
            }
            logs.append(
                {
                    "name": c["author"],
                    "text": c["text"],
                    "model": c["model"] or "",
                    "prompt": json.dumps(prompt, ensure_ascii=False),
                }
            )
        path = out / f"{did}.json"
        atomic_write_text(
            path,
            json.dumps({"timestamp": stamp, "logs": logs}, indent=2, ensure_ascii=False) + "\n",
        )
        written.append(path)
    return written


def export(run_or_dataset: Path, fmt: str, out: Path | None = None) -> tuple[Path, list[Path]]:
    """Export the dataset of a run directory (or a dataset folder) as ``fmt``; returns the
    output folder (default ``<run>/export-<fmt>``) and the files written."""
    if fmt not in FORMATS:
        raise AssembleError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    root = Path(run_or_dataset)
    dataset = root if (root / "synth_disco" / "manifest.json").exists() else root / "dataset"
    created = None
    run_json = dataset.parent / "run.json"
    if run_json.exists():
        created = json.loads(run_json.read_text(encoding="utf-8")).get("created")
    out = out or (dataset.parent if dataset != root else root) / f"export-{fmt}"
    return out, export_syndisco(dataset, out, created)
