"""Deadlines: bounds the attempts of a node's queries (their read
barriers) with one timer. (Commands have the node's own deadline sweep,
EmbeddedNode._expire, which also ends batched calls.)

asyncio.timeout_at costs a Timeout object, a timer handle and their
cancellation on every call: a large share of a call's cost through the
embedding layer (raftcore bench --embed). Every call of a node has the same
timeout, so the attempts in flight end nearly in the order they started (a
retry keeps its call's deadline); one timer at the earliest deadline is
enough. An attempt past its deadline has its task cancelled, and bounded()
turns that cancellation into asyncio.TimeoutError, as asyncio.timeout does
(a cancellation from elsewhere goes through untouched).
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Any, Awaitable, Optional

__all__ = ["Deadlines"]

# An attempt in flight: [deadline, its task (None once it ended), expired].
_DEADLINE, _TASK, _EXPIRED = 0, 1, 2


class Deadlines:
    """The deadlines of one node's attempts in flight (one event loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, list]] = []
        self._order = itertools.count()
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at = 0.0

    async def bounded(self, attempt: Awaitable[Any], deadline: float) -> Any:
        """`await attempt`, cancelled at loop time `deadline`
        (asyncio.TimeoutError)."""
        task = asyncio.current_task()
        if task is None or not hasattr(task, "uncancel"):   # Python 3.10
            return await asyncio.wait_for(attempt, max(deadline - self._loop.time(), 0.001))
        entry = [deadline, task, False]
        heapq.heappush(self._heap, (deadline, next(self._order), entry))
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline)
        try:
            return await attempt
        except asyncio.CancelledError:
            if entry[_EXPIRED] and task.uncancel() == 0:
                raise asyncio.TimeoutError() from None
            raise
        finally:
            entry[_TASK] = None
            heap = self._heap
            # Attempts mostly end in order: drop the ended ones on top.
            while heap and heap[0][2][_TASK] is None:
                heapq.heappop(heap)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._expire)
        self._timer_at = when

    def _expire(self) -> None:
        self._timer = None
        heap = self._heap
        now = self._loop.time()
        while heap and (heap[0][2][_TASK] is None or heap[0][0] <= now):
            entry = heapq.heappop(heap)[2]
            task = entry[_TASK]
            if task is not None:
                entry[_EXPIRED] = True
                task.cancel()
        if heap:
            self._arm(heap[0][0])
