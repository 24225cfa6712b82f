"""Read SynDisco discussion files (2.1+ and 2.0.x/1.0.x formats) as Comment records.

SynDisco writes one JSON file per discussion:

- 2.1+: ``{"timestamp", "logs": [{"name", "text", "model", "prompt"}]}``; seed comments have
  model "hardcoded". Its annotation files look the same, but their prompts declare
  ``"type": "annotator"``; they are recognised and skipped.
- 2.0.x and 1.0.x: ``{"id": uuid, "timestamp", "users", "moderator", ..., "logs": [{"name",
  "text", "model"}]}``; annotation files (``{"conv_id", ..., "logs": [[comment, annotation]]}``)
  are skipped.

The discussion id is the file's uuid when it has one, else a hash of the file's bytes (so the
same file always gets the same id, whatever its name or location). The first hardcoded
comment is the OP, later hardcoded ones are seed comments, the named moderator's are
moderator comments, the rest are user comments. Empty entries (SynDisco logs a moderator who
stays silent as an empty comment) are skipped. SynDisco records no reply targets, so
``parent_id`` stays empty.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth_disco.records import Comment

HARDCODED = "hardcoded"


class SynDiscoFormatError(ValueError):
    """A file is not a SynDisco discussion file we can read."""


@dataclass
class ImportResult:
    """Comments of every discussion read, in file order, and what was left out and why."""

    comments: list[Comment] = field(default_factory=list)
    discussions: list[str] = field(default_factory=list)  # discussion ids, in file order
    formats: dict[str, str] = field(default_factory=dict)  # discussion id -> "2.1+" / "2.0.x"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    empty_entries: int = 0


def _is_annotation_prompt(prompt: Any) -> bool:
    if not isinstance(prompt, str) or not prompt.strip().startswith("{"):
        return False
    try:
        d = json.loads(prompt)
    except json.JSONDecodeError:
        return False
    return isinstance(d, dict) and str(d.get("type", "")).lower() == "annotator"


def detect_format(data: Any) -> str:
    """ "2.1+", "2.0.x", "annotation-2.1+" or "annotation-2.0.x"; raises when neither."""
    if not isinstance(data, dict) or not isinstance(data.get("logs"), list):
        raise SynDiscoFormatError("no 'logs' list at the top level")
    logs = data["logs"]
    if "conv_id" in data or any(isinstance(e, list) for e in logs):
        return "annotation-2.0.x"
    for i, e in enumerate(logs):
        if not isinstance(e, dict) or not {"name", "text"} <= e.keys():
            raise SynDiscoFormatError(f"logs[{i}] lacks 'name' or 'text'")
    if "id" in data or "users" in data:
        return "2.0.x"
    if logs and any(_is_annotation_prompt(e.get("prompt")) for e in logs):
        return "annotation-2.1+"
    return "2.1+"


def discussion_id_for(data: dict[str, Any], raw: bytes) -> str:
    if isinstance(data.get("id"), str) and data["id"].strip():
        return data["id"].strip()
    return "syndisco-" + hashlib.sha256(raw).hexdigest()[:16]


def parse_discussion(data: dict[str, Any], raw: bytes) -> tuple[str, str, list[Comment], int]:
    """(discussion id, format, comments, empty entries skipped) of one discussion file."""
    fmt = detect_format(data)
    if fmt.startswith("annotation"):
        raise SynDiscoFormatError(f"a SynDisco annotation file ({fmt[11:]}), not a discussion")
    did = discussion_id_for(data, raw)
    moderator = data.get("moderator") if isinstance(data.get("moderator"), str) else None
    comments: list[Comment] = []
    empty = 0
    seen_op = False
    for entry in data["logs"]:
        text = entry.get("text")
        text = "" if text is None else str(text)
        if not text.strip():
            empty += 1
            continue
        name = str(entry.get("name") or "")
        model = entry.get("model")
        if model == HARDCODED:
            role = "seed" if seen_op else "op"
            seen_op = True
            model = None
        elif moderator is not None and name == moderator:
            role = "moderator"
        else:
            role = "user"
        index = len(comments)
        comments.append(
            Comment(
                discussion_id=did,
                comment_id=f"{did}-{index:04d}",
                index=index,
                parent_id=None,
                author=name,
                role=role,
                persona_id=None,
                variant=None,
                text=text.strip(),
                raw_text=text,
                model=str(model) if model else None,
            )
        )
    return did, fmt, comments, empty


def read_syndisco_dir(path: Path) -> ImportResult:
    """Every SynDisco discussion under ``path`` (``*.json``, recursively, in path order)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    result = ImportResult()
    seen: dict[str, str] = {}
    for file in sorted(root.rglob("*.json")):
        rel = file.relative_to(root).as_posix()
        raw = file.read_bytes()
        try:
            data = json.loads(raw.decode("utf-8-sig"))
            did, fmt, comments, empty = parse_discussion(data, raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            result.skipped.append((rel, f"not JSON: {exc}"))
            continue
        except SynDiscoFormatError as exc:
            result.skipped.append((rel, str(exc)))
            continue
        if did in seen:
            result.skipped.append((rel, f"same discussion id as {seen[did]}"))
            continue
        seen[did] = rel
        result.discussions.append(did)
        result.formats[did] = fmt
        result.comments.extend(comments)
        result.empty_entries += empty
    return result
