"""Named crash points, so the resume guarantees can be tested by killing a real build.

``SYNTH_DISCO_KILL_AT=discuss.step:3`` makes the process SIGKILL itself the 3rd time it
passes the point named ``discuss.step``. Unset (always, outside tests) it costs one dict
lookup per call.
"""

from __future__ import annotations

import os
import signal

_ENV = "SYNTH_DISCO_KILL_AT"
_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    target = os.environ.get(_ENV)
    if not target:
        return
    point, _, count = target.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
