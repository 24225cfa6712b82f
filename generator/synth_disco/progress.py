"""Progress of a long stage: LLM calls against the plan's totals, tokens/s, ETA from active time.

On a terminal it is a tqdm bar; otherwise (a log file, CI, ``--quiet``/``-v``) a plain line
every few seconds. Either way the line also goes to the run log, and ``logs/progress.json``
keeps the latest figures with the stage's *active* seconds, so ``synth-disco status`` computes
an ETA from time spent working, not from when the run was created (a run resumed a day later
would otherwise expect to take a day more).

Units: a stage counts LLM calls (discussion turns and moderator turns, or labels), since they
are what the engine does; a discussion ends only after all its turns, so counting discussions
would leave the ETA unknown for half a real run.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("synth_disco")

MODES = ("auto", "bar", "lines", "quiet")


def fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


@dataclass
class Progress:
    """Counts for one stage of one process. Call ``tick`` after each engine call.

    ``total`` and ``done`` count LLM calls (``unit``); ``units_done`` counts what the stage
    finishes (discussions, shards of labels); ``resumed`` is work found done in journals,
    which the rates and the ETA leave out.
    """

    stage: str
    total: int
    unit: str = "calls"
    every: float = 5.0
    mode: str = "auto"  # one of MODES; "auto" is a bar on a terminal, lines otherwise
    state_file: Path | None = None  # logs/progress.json: the latest figures, for `status`
    done: int = 0
    resumed: int = 0
    failed: int = 0
    units_done: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    _last: float = 0.0
    _bar: Any = None

    def __post_init__(self) -> None:
        if self.mode == "auto":
            self.mode = "bar" if sys.stderr.isatty() else "lines"

    def _show(self, calls: int) -> None:
        if self.mode != "bar":
            return
        if self._bar is None:  # made on first use: the stage may set ``total`` first
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total,
                desc=self.stage,
                unit=self.unit,
                dynamic_ncols=True,
                leave=True,
                disable=False,  # libraries' bars are off during a build (TQDM_DISABLE)
            )
            calls = self.done
        self._bar.update(calls)

    # -- counting ------------------------------------------------------------------------------
    def add(
        self, calls: int = 0, *, failed: int = 0, prompt_tokens: int = 0, completion_tokens: int = 0
    ) -> None:
        self.done += calls
        self.failed += failed
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self._show(calls)

    def skip(self, calls: int) -> None:
        """Calls found done in journals: counted as done, left out of rates and ETA."""
        self.resumed += calls
        self.done += calls
        self._show(calls)

    # -- reporting -----------------------------------------------------------------------------
    @property
    def active(self) -> float:
        return time.monotonic() - self.started

    def eta(self) -> float | None:
        """Seconds left, from this process's own pace (None until it has done something)."""
        worked = self.done - self.resumed
        left = max(self.total - self.done, 0)
        if left == 0:
            return 0.0
        if worked <= 0:
            return None
        return self.active / worked * left

    def figures(self) -> str:
        t = max(self.active, 1e-9)
        eta = self.eta()
        return (
            f"{self.units_done} {'discussions' if self.stage == 'discuss' else 'shards'} done, "
            f"{self.failed} failed, {fmt_rate(self.prompt_tokens / t)} prompt + "
            f"{fmt_rate(self.completion_tokens / t)} generated tok/s, "
            f"ETA {'?' if eta is None else fmt_duration(eta)}"
        )

    def line(self) -> str:
        return (
            f"{self.stage}: {self.done:,}/{self.total:,} {self.unit} "
            f"({self.figures()}, elapsed {fmt_duration(self.active)})"
        )

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (1.0 if self._bar is not None else self.every):
            return
        self._last = now
        self._show(0)
        if self._bar is not None:
            self._bar.set_postfix_str(self.figures(), refresh=True)
            log.debug(self.line())  # the run log keeps the figures a bar shows
        elif self.mode == "lines":
            log.info(self.line())
        else:
            log.debug(self.line())
        self._save()

    def close(self) -> None:
        self.tick(force=True)
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _save(self) -> None:
        if self.state_file is None:
            return
        state = {
            "stage": self.stage,
            "unit": self.unit,
            "total": self.total,
            "done": self.done,
            "resumed": self.resumed,
            "failed": self.failed,
            "active_seconds": round(self.active, 3),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(state) + "\n", encoding="utf-8")
            tmp.replace(self.state_file)
        except OSError:  # progress is a convenience: never fail a build over it
            pass
