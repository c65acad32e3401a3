"""An asyncio event loop on virtual time, for deterministic simulation.

The loop never sleeps: when nothing is ready, it jumps its clock straight to
the next scheduled timer. Minutes of cluster time pass in a second, and since
nothing depends on the wall clock or on threads, a run with the same seed
replays exactly. It serves in-process work only: there are no sockets (the
selector has nothing to wait for), and blocking work must run inline (pass
`inline_executor` as a Raft's executor).
"""
from __future__ import annotations

import asyncio
import selectors
from typing import Any, Callable


class SimulationStalled(RuntimeError):
    """Nothing is ready and nothing is scheduled: the simulation would hang."""


class _VirtualSelector(selectors.BaseSelector):
    """A selector with no file descriptors to watch: select(timeout) only
    advances the loop's virtual clock by `timeout`."""

    def __init__(self) -> None:
        self._map: dict = {}
        self.loop: "VirtualTimeLoop | None" = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._map[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._map.pop(fd)

    def select(self, timeout: float | None = None) -> list:
        if timeout is None:
            raise SimulationStalled("no task is ready and no timer is scheduled")
        if timeout > 0:
            self.loop.advance(timeout)
        return []

    def get_map(self) -> dict:
        return self._map

    def close(self) -> None:
        self._map.clear()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A SelectorEventLoop whose time() is virtual and jumps to the next timer."""

    def __init__(self, start: float = 0.0) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = start
        # Timers due within this much of now run together: keep it tiny so
        # ordering by deadline is exact.
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


def inline_executor(fn: Callable, *args: Any) -> "asyncio.Future":
    """Runs blocking work at once, in the loop's thread, and returns a done
    future: what a simulation passes as a Raft's executor."""
    fut = asyncio.get_running_loop().create_future()
    try:
        fut.set_result(fn(*args))
    except BaseException as exc:  # handed to the awaiting caller
        fut.set_exception(exc)
    return fut


def run(coro: Any, start: float = 0.0) -> Any:
    """Runs `coro` to completion on a fresh VirtualTimeLoop."""
    loop = VirtualTimeLoop(start)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        try:
            _cancel_all(loop)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in tasks:
        t.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
