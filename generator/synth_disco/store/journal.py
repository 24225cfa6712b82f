"""Append-only JSON-lines journals: what a stage has finished, durable at every ``sync``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Journal:
    """An append-only JSON-lines log; ``sync`` makes everything appended so far durable."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open across steps)

    def _repair(self) -> None:
        """Drop a torn last line left by a crash in the middle of a write."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        keep = data[: data.rfind(b"\n") + 1]
        with open(self.path, "r+b") as f:
            f.truncate(len(keep))
            os.fsync(f.fileno())

    def append(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self.sync()
            self._f.close()

    @staticmethod
    def read(path: Path) -> Iterator[dict[str, Any]]:
        """Every complete record of a journal (a torn last line is skipped)."""
        if not path.exists():
            return
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    break
