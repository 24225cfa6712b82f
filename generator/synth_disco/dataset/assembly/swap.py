"""The dataset folder is built next to its destination and swapped in whole: temp folders an
interrupted assembly left are removed, every file is made durable, and two renames replace the
old folder, so an interruption never leaves half a dataset.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from synth_disco.store.files import fsync_dir


def _cleanup_stale(parent: Path, name: str) -> None:
    """Remove temp folders an interrupted assembly left behind."""
    for stale in parent.glob(f".{name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    """Make every file of ``folder`` durable before it is renamed into place."""
    for path in sorted(folder.rglob("*"), reverse=True):  # files before their folders
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(folder)


def _swap_in(tmp: Path, dest: Path) -> None:
    """Replace ``dest`` by ``tmp``: two renames, the old folder deleted only afterwards."""
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    fsync_dir(dest.parent)
