"""A private asyncio event loop in a thread, so a synchronous engine can keep requests in flight.

The engine's methods are plain synchronous calls; the requests of a call run concurrently on
this loop. One loop for the engine's whole life, so the HTTP client's connections are reused
from call to call, and callers that are themselves inside a running event loop (notebooks,
async applications) are not disturbed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

_T = TypeVar("_T")


class LoopThread:
    """An asyncio event loop running in a daemon thread; :meth:`run` waits for a coroutine."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the loop and return its result (or raise its exception)."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("the openai engine cannot be called from its own event loop")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. Ctrl-C in the caller: stop the requests still open
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        if not self.thread.is_alive():
            self.loop.close()


async def gather_or_raise(coros: Sequence[Coroutine[Any, Any, _T]]) -> list[_T]:
    """Run coroutines concurrently, results in order; the first exception cancels the rest
    and is raised (an unrecoverable answer stops the whole call at once)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        pending = [t for t in tasks if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    # Read every exception (asyncio warns about unread ones); raise the first in order.
    errors = [t.exception() for t in tasks if not t.cancelled()]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return [t.result() for t in tasks]
