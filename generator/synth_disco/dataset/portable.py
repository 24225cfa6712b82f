"""Keeping the machine out of a published dataset: local paths and tokens.

A dataset folder is written to be published, so nothing in it may name the machine it was
built on. Two steps share one list of what is private (``scrub_pairs``):

- while assembling, local paths are made portable: a model loaded from a folder is named by the
  folder's name (``portable_model_id``), the ``file`` / ``dir`` / ``model`` values of the recipe
  copy likewise (``portable_recipe``), and the run's paths in error messages are replaced by
  stand-ins (``<run>``, ``<runs>``, ``~``);
- the leak scan (``LeakScan``) then refuses what slipped through: before an assembled folder is
  swapped into place (its text files: card, recipe copy, manifest) and before each file is
  pushed to the Hub (every file, as it is hashed). A leak is a local path, the user's token, or
  anything that looks like a Hugging Face token.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What a Hugging Face token looks like; catches a token pasted into a recipe without knowing it.
TOKEN_RE = re.compile(rb"hf_[A-Za-z0-9]{30,}")
_TOKEN_MIN_LEN = 3 + 30  # the shortest string TOKEN_RE matches
# The files of an assembled folder that synth-disco writes as text (parquet rows are scrubbed as
# they are written, and their pages are compressed, so a byte search there proves little).
TEXT_SUFFIXES = (".md", ".json", ".yaml", ".yml", ".txt")


def portable_model_id(model: str) -> str:
    """A model id without local paths: a local directory becomes its folder name."""
    if os.path.isabs(model) or model.startswith(("~", "./", "../")):
        return Path(model.rstrip("/\\")).name or model
    return model


def portable_recipe(raw: Any, key: str = "") -> Any:
    """``raw`` with local paths in ``file`` / ``dir`` / ``model`` values made non-absolute."""
    if isinstance(raw, dict):
        return {k: portable_recipe(v, str(k)) for k, v in raw.items()}
    if isinstance(raw, list):
        return [portable_recipe(v, key) for v in raw]
    if isinstance(raw, str) and key in ("file", "dir", "model"):
        return portable_model_id(raw)
    return raw


def scrub_pairs(root: Path) -> list[tuple[str, str]]:
    """(local path, stand-in) pairs that must not be published, longest path first: ``root``
    (a run directory or a dataset folder), its parent (both skipped when as short as ``/tmp``:
    such a string means nothing) and the home directory."""
    root = root.resolve()
    pairs: dict[str, str] = {}
    for path, stand_in in ((root, "<run>"), (root.parent, "<runs>")):
        if len(path.parts) > 2:
            pairs.setdefault(str(path), stand_in)
    home = Path.home()
    if len(home.parts) > 1:
        pairs.setdefault(str(home), "~")
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


@dataclass(frozen=True)
class LeakScan:
    """What must never be published, and the search for it.

    ``needles`` are exact byte strings with what they are (the local paths, the user's token);
    a string matching ``TOKEN_RE`` is a leak too. Callers raise their own error with the
    finding, so assembly and push report it in their own words.
    """

    needles: tuple[tuple[bytes, str], ...] = ()

    @classmethod
    def around(cls, root: Path, *, token: str | None = None) -> LeakScan:
        """The scan for a folder at ``root``: the paths ``scrub_pairs(root)`` names and the
        user's ``token`` when known."""
        needles = [
            (path.encode(), f"the absolute local path {path}") for path, _ in scrub_pairs(root)
        ]
        if token:
            needles.insert(0, (token.encode(), "the Hugging Face token"))
        return cls(tuple(needles))

    @property
    def overlap(self) -> int:
        """Bytes to carry from one chunk into the next, so that a leak split by a chunk
        boundary is still found when a file is read in chunks."""
        return max([_TOKEN_MIN_LEN, *(len(n) for n, _ in self.needles)]) - 1

    def find(self, data: bytes) -> str | None:
        """What ``data`` would leak (the first finding), or None."""
        for needle, what in self.needles:
            if needle in data:
                return what
        if TOKEN_RE.search(data):
            return "what looks like a Hugging Face token"
        return None

    def find_in_folder(
        self, folder: Path, suffixes: Iterable[str] = TEXT_SUFFIXES
    ) -> tuple[str, str] | None:
        """(relative path, finding) of the first file of ``folder`` with one of ``suffixes``
        that leaks, in path order; None when all are clean."""
        suffixes = tuple(suffixes)
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix in suffixes:
                what = self.find(path.read_bytes())
                if what is not None:
                    return path.relative_to(folder).as_posix(), what
        return None
