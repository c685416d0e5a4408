"""Background loops that stop between passes.

A pass cancelled in the middle of a statement can leave its database connection checked out
and never closed (SQLite's driver connection is then only found by the garbage collector). So a
loop is told to stop, finishes the pass under way, and is cancelled only when that pass takes
longer than a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib

#: How long a stopping loop's pass under way may take before it is cancelled.
STOP_GRACE_SECONDS = 10.0


async def pause(stopping: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds``, or until ``stopping`` is set: whether it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
    return stopping.is_set()


async def finish(task: asyncio.Task[None] | None) -> None:
    """Wait for a loop told to stop to end; cancel it past ``STOP_GRACE_SECONDS``."""
    if task is None or task.done():
        return
    try:
        await asyncio.wait_for(asyncio.shield(task), STOP_GRACE_SECONDS)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
