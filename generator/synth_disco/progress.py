"""Progress lines for long stages: counts, throughput and ETA, to the console and the log."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger("synth_disco")


def fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


@dataclass
class Progress:
    """Counts for one stage; ``tick`` logs a line at most every ``every`` seconds."""

    stage: str
    total: int  # units of work (discussions or labels) this process will do
    unit: str = "discussions"
    every: float = 5.0
    done: int = 0
    failed: int = 0
    items: int = 0  # comments or labels written
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    _last: float = 0.0

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        log.info(self.line())

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        left = self.total - self.done
        eta = elapsed / self.done * left if self.done else float("nan")
        eta_s = fmt_duration(eta) if self.done else "?"
        return (
            f"{self.stage}: {self.done}/{self.total} {self.unit}"
            f" ({self.failed} failed), {self.items} items, {rate:.1f} tok/s,"
            f" elapsed {fmt_duration(elapsed)}, ETA {eta_s}"
        )
