"""The checker: collects a recipe's problems while it loads, each at the line it came from.

Every check reports through one ``Checker``, which knows where each key path was written (its
YAML mark, or the ``--set`` argument that wrote it), turns pydantic's validation errors into
one plain message per key, and reads the files a recipe refers to (recording their digests for
the fingerprint).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from synth_disco.errors import Problem
from synth_disco.recipe.overrides import KeyPath, dotted, overlaps
from synth_disco.recipe.schema_walk import accepts_fileref, field_names, next_types, suggest
from synth_disco.recipe.yaml_marks import Mark


def display_path(path: Path) -> str:
    """A path as shown in messages: relative to the working directory when below it."""
    try:
        return Path(os.path.relpath(path)).as_posix() if path.is_absolute() else path.as_posix()
    except ValueError:  # another drive on Windows
        return path.as_posix()


class Checker:
    """Collects problems while a recipe is loaded; knows where each key came from."""

    def __init__(self, path: Path, confine: Path | None = None) -> None:
        self.path = path
        self.file = display_path(path)
        self.base_dir = path.parent
        # With ``confine`` (a dataset folder being rebuilt), files outside it are refused.
        self.confine = confine.resolve() if confine is not None else None
        self.marks: dict[KeyPath, Mark] = {}
        self.override_paths: list[tuple[KeyPath, str]] = []
        self.problems: list[Problem] = []
        self.files: dict[str, str] = {}
        self.text_refs: dict[KeyPath, str] = {}  # where a {file: ...} text was read from
        self.yaml_bad: list[KeyPath] = []  # paths whose YAML value was refused

    # -- locations --------------------------------------------------------------------------

    def where(self, path: KeyPath) -> tuple[str, int | None, int | None]:
        """The file (or ``--set`` argument), line and column that wrote ``path``."""
        for opath, arg in reversed(self.override_paths):
            if overlaps(opath, path) and len(path) >= len(opath):
                return f"--set {arg}", None, None
        for n in range(len(path), -1, -1):
            mark = self.marks.get(tuple(path[:n]))
            if mark is not None:
                return self.file, mark[0], mark[1]
        return self.file, None, None

    def add(self, path: KeyPath, message: str) -> None:
        """A problem at ``path``."""
        file, line, col = self.where(path)
        p = Problem(file, line, col, dotted(path), message)
        if p not in self.problems:
            self.problems.append(p)

    def add_at(self, mark_path: KeyPath, shown: str, message: str) -> None:
        """A problem shown as key ``shown``, located where ``mark_path`` was written."""
        file, line, col = self.where(mark_path)
        p = Problem(file, line, col, shown, message)
        if p not in self.problems:
            self.problems.append(p)

    def sorted_problems(self) -> list[Problem]:
        """Problems in file order; those without a line (e.g. from --set) last."""
        return sorted(
            self.problems,
            key=lambda p: (p.file != self.file, p.line is None, p.line or 0, p.column or 0),
        )

    # -- pydantic errors --------------------------------------------------------------------

    def pydantic_problems(self, err: ValidationError, data: Any) -> list[tuple[KeyPath, str]]:
        """(config key path, message) for each error, union branches folded."""
        items = []
        for e in err.errors(include_url=False):
            path, tag_at = _clean_loc(e["loc"], data)
            items.append((path, tag_at, e))
        # When one branch of a union accepted the value's type (its error is deeper, or about
        # the value itself), the other branches' "wrong type" errors are noise.
        matched = {
            path[:tag_at]
            for path, tag_at, e in items
            if tag_at is not None and (len(path) > tag_at or not _is_type_error(e))
        }
        out: dict[KeyPath, list[str]] = {}
        for path, tag_at, e in items:
            if tag_at is not None and len(path) == tag_at and path in matched and _is_type_error(e):
                continue
            if any(path[: len(bad)] == bad for bad in self.yaml_bad):
                continue  # already reported by the YAML reader (e.g. a refused tag)
            out.setdefault(path, [])
            msg = _message(e, path)
            if msg not in out[path]:
                out[path].append(msg)
        return [(path, _join(msgs)) for path, msgs in out.items()]

    # -- files ------------------------------------------------------------------------------

    def record_file(self, p: Path) -> None:
        """Record a file the recipe uses (path relative to the recipe -> sha256)."""
        try:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
        except OSError:
            return
        try:
            rel = Path(os.path.relpath(p, self.base_dir)).as_posix()
        except ValueError:
            rel = p.as_posix()
        self.files[rel] = digest

    def outside(self, ref: str) -> str | None:
        """Why ``ref`` (relative to the recipe) may not be read, or None: with ``confine``,
        an absolute path or one that leaves the confining folder (by ``..`` or a link)."""
        if self.confine is None:
            return None
        if Path(ref).is_absolute() or re.match(r"^[A-Za-z]:", ref) or ref.startswith("~"):
            return (
                f"{ref!r} is an absolute path: a recipe being rebuilt may read only files "
                "inside its dataset folder"
            )
        if not (self.base_dir / ref).resolve().is_relative_to(self.confine):
            return (
                f"{ref!r} leaves the dataset folder: a recipe being rebuilt may read only "
                "files inside it"
            )
        return None

    def read_text_file(self, ref: str, path: KeyPath) -> str | None:
        """The text of a ``{file: ref}`` (trailing whitespace dropped), or None after
        reporting why it cannot be read."""
        refused = self.outside(ref)
        if refused is not None:
            self.add((*path, "file"), refused)
            return None
        p = self.base_dir / ref
        if not p.is_file():
            what = "is a directory" if p.is_dir() else "not found"
            self.add((*path, "file"), f"file {ref!r} {what}")
            return None
        try:
            text = p.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            self.add((*path, "file"), f"cannot read {ref!r}: {e}")
            return None
        self.record_file(p)
        return text.rstrip()

    def resolve_texts(self, value: Any, types_: list[Any], path: KeyPath) -> Any:
        """Replace ``{file: ...}`` by the file's text wherever the schema takes Text."""
        if not types_:
            return value
        if isinstance(value, dict):
            if (
                accepts_fileref(types_)
                and set(value) == {"file"}
                and isinstance(value["file"], str)
            ):
                text = self.read_text_file(value["file"], path)
                if text is None:
                    return value
                self.text_refs[path] = value["file"]
                return text
            return {
                k: self.resolve_texts(v, next_types(types_, k), (*path, k))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [
                self.resolve_texts(v, next_types(types_, i), (*path, i))
                for i, v in enumerate(value)
            ]
        return value


_TYPE_TAGS = {"int", "str", "float", "bool", "none", "list", "dict", "literal", "nullable"}


def _is_tag(el: Any) -> bool:
    return isinstance(el, str) and (el[:1].isupper() or "[" in el or el in _TYPE_TAGS)


def _is_type_error(e: dict[str, Any]) -> bool:
    kind = str(e["type"])
    return kind.endswith(("_type", "_parsing")) or kind == "is_instance_of"


def _has(cur: Any, el: Any) -> bool:
    if isinstance(cur, dict):
        return isinstance(el, str) and el in cur
    return isinstance(cur, list) and isinstance(el, int) and 0 <= el < len(cur)


def _clean_loc(loc: Sequence[Any], data: Any) -> tuple[KeyPath, int | None]:
    """Drop pydantic's union-branch tags from an error location, keeping the data's keys.
    Returns the key path and the position of the first union tag (None if none)."""
    out: list[str | int] = []
    cur = data
    tag_at = None
    for el in loc:
        if _has(cur, el):
            out.append(el)
            cur = cur[el]
        elif _is_tag(el):
            if tag_at is None:
                tag_at = len(out)
        else:
            out.append(el)
            cur = None
    return tuple(out), tag_at


def _message(e: dict[str, Any], path: KeyPath) -> str:
    kind = e["type"]
    if kind == "extra_forbidden":
        return "unknown key" + suggest(str(path[-1]), field_names(path[:-1]))
    if kind == "missing":
        return "required key is missing"
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    msg = re.sub(r"a valid dictionary or instance of \w+", "a mapping", msg)
    msg = msg.replace("a valid dictionary", "a mapping")
    if kind == "literal_error" and isinstance(e.get("input"), str):
        options = re.findall(r"'([^']*)'", (e.get("ctx") or {}).get("expected", ""))
        msg += suggest(e["input"], options)
    return msg


def _join(msgs: list[str]) -> str:
    """Fold the messages of several union branches into one."""
    if len(msgs) > 1 and all(m.startswith("Input should be ") for m in msgs):
        return "Input should be " + " or ".join(m[len("Input should be ") :] for m in msgs)
    return "; ".join(msgs)
