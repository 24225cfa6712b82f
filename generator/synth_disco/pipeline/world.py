"""Which worker this process is: its rank among those ``accelerate launch`` / ``torchrun`` started.

Shards are split ``index % size == rank``; rank 0 assembles once every worker is done.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    """This process's rank among the workers started by ``accelerate launch`` / ``torchrun``."""

    rank: int = 0
    size: int = 1
    barrier: Callable[[], None] = lambda: None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_world() -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    import torch
    from accelerate import PartialState

    # Without CUDA, PartialState must be told it is on the CPU, or every rank takes everything.
    state = PartialState(cpu=not torch.cuda.is_available())
    return World(state.process_index, state.num_processes, state.wait_for_everyone)
