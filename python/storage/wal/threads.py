"""The threads a FileLogStore writes on, so that the event loop never waits
for a disk.

- FlushThread: a Python thread for any blocking job (the log groups that
  need more than a write and an fdatasync, vote and identity saves, every
  group of a store given a test's FileOps), one at a time.
- GroupSyncer: the compiled, GIL-free SyncWorker (sync_worker.pyx) on a
  thread of its own, for the plain groups (a write at an offset of the
  active segment and a data sync), which are nearly all of them. It wakes
  the event loop through an eventfd, or a pipe where there is none (or
  the store's IOPath asks for the portable path).

Both report back to the event loop with one wake-up per job and hold the
store only weakly (or not at all) between jobs, so a store dropped without
close() can still be collected, and then stops them.
"""
from __future__ import annotations

import asyncio
import os
import queue
import threading
import weakref
from typing import Any, Awaitable, Callable, Optional

from raftcore.storage.sync_worker import SyncWorker
from raftcore.storage.wal.iopath import IOPath


def default_executor(fn: Callable, *args: Any) -> Awaitable:
    """Runs blocking fn(*args) in the event loop's default executor."""
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


def settle(fut: asyncio.Future, result: Any, exc: Optional[BaseException]) -> None:
    """Completes `fut` with a FlushThread job's outcome (a done callback)."""
    if fut.cancelled():
        return      # the caller gave up; the work was done all the same
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class FlushThread:
    """A store's own thread for its blocking file work (log groups, vote saves).

    Runs one job at a time, in submission order, and reports each one to the
    event loop it came from with a single call_soon_threadsafe: no
    concurrent.futures Future, no pool, one wake-up of the loop per group.
    Between jobs it holds no reference to the store, so a store dropped
    without close() can still be collected (and stop it).
    """

    __slots__ = ("_jobs", "_thread")

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, args=(self._jobs,), name=name,
                                        daemon=True)
        self._thread.start()

    def submit(self, loop: asyncio.AbstractEventLoop, fn: Callable, args: tuple,
               done: Callable) -> None:
        """Runs fn(*args) on the thread, then done(result, exception) on `loop`."""
        self._jobs.put((loop, fn, args, done))

    def stop(self) -> None:
        """Lets the thread end once the job in hand (if any) is done."""
        self._jobs.put(None)

    def join(self) -> None:
        if threading.current_thread() is not self._thread:
            self._thread.join()

    @staticmethod
    def _run(jobs: queue.SimpleQueue) -> None:
        get = jobs.get
        while True:
            job = get()
            if job is None:
                return
            loop, fn, args, done = job
            job = None
            try:
                result, exc = fn(*args), None
            except BaseException as e:      # reported to the store, which fails
                result, exc = None, e
            fn = args = None
            try:
                loop.call_soon_threadsafe(done, result, exc)
            except RuntimeError:
                pass        # the loop is closed: nothing waits for this any more
            loop = done = result = exc = None


def wakeup_fds(io: IOPath) -> tuple[int, int]:
    """(read end, write end) of the descriptor the sync thread wakes the
    event loop with: one eventfd, or a pipe whose read end does not block."""
    if io.wakeup == "eventfd":
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        return fd, fd
    read_fd, write_fd = os.pipe()       # both close-on-exec (non-inheritable)
    os.set_blocking(read_fd, False)
    return read_fd, write_fd


class GroupSyncer:
    """A SyncWorker on a thread of its own, reporting to an event loop: a
    finished job calls store._group_written(fd, error) there. Holds the
    store only weakly between jobs, so a store dropped without close() can
    be collected (and stop it). `io` says how it syncs and wakes the loop."""

    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop, io: IOPath) -> None:
        self._read_fd, self._write_fd = wakeup_fds(io)
        self._store = weakref.ref(store)
        self.loop = loop
        self._fd = -1
        self._pinned: Any = None
        self._watched = False
        self.thread: Optional[threading.Thread] = None
        try:
            self._worker = SyncWorker(self._write_fd, io.sync_data)
            self.thread = threading.Thread(target=self._worker.run,
                                           name=f"raftcore-sync {store.path}", daemon=True)
            self.thread.start()
            loop.add_reader(self._read_fd, self._completed)
            self._watched = True
        except BaseException:
            self.stop(join=True)
            raise

    @property
    def sync_call(self) -> str:
        """The call the compiled thread makes a group durable with."""
        return self._worker.sync_call

    @property
    def busy(self) -> bool:
        """A job is in the thread's hands (its fd must stay open)."""
        return self._pinned is not None

    def submit(self, fd: int, data: bytes, offset: int) -> None:
        self._fd = fd
        # While the thread writes to fd, the store (which closes fd when it
        # is collected) must stay.
        self._pinned = self._store()
        self._worker.submit(fd, data, offset)

    def _completed(self) -> None:
        try:
            os.read(self._read_fd, 8)
        except BlockingIOError:
            return
        error = self._worker.result()
        store, self._pinned = self._pinned, None
        if store is not None:
            store._group_written(self._fd, error)

    def stop(self, join: bool) -> None:
        """Ends the thread once its job in hand is done (event loop thread,
        or any thread from a store's __del__ with join False)."""
        if self.thread is not None:
            self._worker.stop()
            if join:
                self.thread.join()
        if not self._watched:
            self._close_fds()
            return
        try:
            if join:
                self.loop.remove_reader(self._read_fd)
                self._close_fds()
            else:
                self.loop.call_soon_threadsafe(self._remove_and_close)
        except RuntimeError:        # the loop is closed: nothing watches the fd
            self._close_fds()

    def _remove_and_close(self) -> None:
        self.loop.remove_reader(self._read_fd)
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in {self._read_fd, self._write_fd}:
            os.close(fd)
