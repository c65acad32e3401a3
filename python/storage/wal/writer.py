"""The WAL's writer: group commit, from the store's in-memory buffer to
durable records on disk.

Appends, truncations and purges only add records to an in-memory buffer
(entries are readable at once from the store's LogIndex). One loop
iteration later (so that the appends of one iteration go together) the whole
buffer is taken as one *group*, ended with a MARKER record, and written at
its offset in the active segment and made durable with one fdatasync off the
event loop; back on the loop every on_flushed of the group is called, in
append order. One group is in flight at a time: appends that arrive while an
fsync is in flight form the next group, taken as soon as that fsync
completes. A truncation or purge is a record in that same stream, so it is
durable before any later append is reported flushed; segments are deleted
only after the group holding the purge record is durable (and only whole
segments: nothing is rewritten).

Segment files are allocated ahead of their data (in steps of PREALLOCATE
bytes; on Linux by writing zeros, ahead of the groups: below), so a file
is usually longer than what it holds: the rest reads as zeros. Writing a
group then changes no file size and no block's state, and fdatasync makes
it durable without a metadata update: measured on an ext4 VM disk with three nodes syncing at once,
200-260 us per group against 275-350 us for append + fsync. A new segment's
first group is made durable with fsync and a directory fsync. Where
fdatasync is missing (macOS), or RAFTCORE_PORTABLE_IO=1 asks for it, the
store's IOPath (iopath.py) names the fallback: the file is grown with
ftruncate and every group fully synced.

Writing 4 MB of zeros takes about 15 ms (ext4 VM disk), too long for the
group that needs the space to wait for it. So while the plain groups of
the active segment go on below `allocated`, the flush thread zero-fills
the next AHEAD_JOB bytes once less than half of PREALLOCATE is left
(_allocate_ahead), on a descriptor of its own. Its invariants:
- `allocated` is raised only when the whole job's zeros are written and
  synced, and only the flush thread writes it (the event loop reads it to
  pick a group's path): no group is ever written where zeros are still to
  come, and a job that fails can cut the file back to where it began (no
  group lies above that), taking all its space or none;
- its syncs go through its own descriptor: a write-back error of a
  group's pages is reported to each open descriptor of the file, so the
  job's fdatasync cannot consume the error the group's own fdatasync must
  see (with one shared descriptor it could, and the group would be
  acknowledged);
- it starts only while the disk has AHEAD_RESERVE more free space than
  it takes (and a group allocating for itself then takes only what it
  needs): space taken ahead must not be what a snapshot or a vote save
  needs.
A job is short (AHEAD_JOB, in AHEAD_STEP steps, each synced so that a
group's fdatasync carries little else) because the flush thread's other
jobs (vote saves, new segments) wait behind it.

Three write paths, chosen per group in _submit; none can serve the others'
cases without losing speed or a caller's guarantee:

- GroupSyncer (compiled, GIL-free): a plain group (no new segment, no more
  allocated space, no segment to delete: nearly all of them) on the real
  file system. It can only pwrite and fdatasync, in C, bypassing FileOps;
  the flush thread would cost two extra thread wake-ups per group (job,
  then GIL), on the path every acknowledgement waits for.
- FlushThread (Python): the other groups (they call FileOps to create,
  allocate, fsync the directory, delete), and every group of a store given
  a FileOps subclass (a test's failure injection must see each call). It
  reports with a single call_soon_threadsafe straight to _group_written.
- the caller's executor (FileLogStore(executor=...)): the store starts no
  thread, and the caller decides where and when the work runs (a
  deterministic simulation runs it inline, in a fixed order); an awaitable
  needs a task, whose cancellation (the loop shutting down) fails the store.

All three end in _group_written on the event loop thread, the one place a
group's outcome is handled (durable, disk full, failed).
"""
from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import time
from typing import Any, Awaitable, Callable, Optional

from raftcore.codec import encode_log_id
from raftcore.errors import NoSpace, StorageError, is_space_error
from raftcore.storage.wal.index import LogIndex, Segment, deletable
from raftcore.storage.wal.oslayer import FileOps
from raftcore.storage.wal.records import (FORMAT_VERSION, MARKER, R_HEADER, R_MARKER, frame,
                                          seg_name)
from raftcore.storage.wal.threads import FlushThread, GroupSyncer, default_executor, settle
from raftcore.types import LogId

# The store's messages keep the logger name users and tests filter on.
log = logging.getLogger("raftcore.storage.file")

#: Segment files grow by this much at a time (at most to segment_size), or
#: by only what a group needs when the disk has less room than that.
PREALLOCATE = 4 * 1024 * 1024
#: The flush thread allocates ahead of the plain groups this much per job,
#: writing and syncing AHEAD_STEP at a time, and only while the disk has
#: AHEAD_RESERVE free beyond it (see the module docstring).
AHEAD_JOB = 1024 * 1024
AHEAD_STEP = 256 * 1024
AHEAD_RESERVE = 16 * 1024 * 1024
#: A group held for lack of disk space is retried after this many seconds,
#: doubling up to _SPACE_RETRY_MAX.
_SPACE_RETRY_MIN = 0.05
_SPACE_RETRY_MAX = 1.0


class Group:
    """Records taken from the buffer to be written and fsynced together."""

    __slots__ = ("data", "callbacks", "segment", "offset", "roll", "delete")

    def __init__(self) -> None:
        self.data = b""
        self.callbacks: list = []
        self.segment: Optional[Segment] = None      # where the data goes, at offset
        self.offset = 0
        self.roll = False                           # segment is new: create it
        self.delete: list = []


class GroupCommit:
    """FileLogStore's write half (a base class of it): the buffer, the group
    in flight, the threads, the disk-full hold.

    Owns the attributes set in _init_group_commit; reads (and, for _fd and
    _segments, updates) the ones declared below, which the store sets.
    Everything here runs on the event loop thread except _write_group and
    what it calls (the flush thread or the executor).
    """

    path: str
    segment_size: int
    _ops: FileOps
    _dir_fd: Optional[int]
    _fd: Optional[int]              # the active (last) segment
    _segments: list[Segment]
    _index: LogIndex
    _committed: Optional[LogId]
    _closed: bool
    _failed: Optional[StorageError]
    _packer: Any                    # a msgpack.Packer

    def _init_group_commit(self, executor: Optional[Callable[..., Awaitable]],
                           ops: Any) -> None:
        """`ops`: the FileOps the caller gave, or None."""
        self._executor = executor or default_executor
        self._own_thread = executor is None      # log writes on a FlushThread
        # Plain groups on the GIL-free SyncWorker: with the real file system
        # only (a test's ops see every call).
        self._fast_sync = self._own_thread and (ops is None or type(ops) is FileOps)
        self._buf: list[bytes] = []              # framed records not yet taken (heads and
        #                                          payloads, joined once per group)
        self._buf_callbacks: list = []           # on_flushed of the buffered appends
        self._buf_max_index = 0                  # highest entry index in the buffer
        self._taken: tuple = (1, None, None)     # (next index, purged, committed) as of
        #                                          the last group taken: a new header
        self._in_flight: Optional[Group] = None       # the group being written
        self._start_scheduled = False            # a _start_group is call_soon'd
        self._thread: Optional[FlushThread] = None
        self._syncer: Optional[GroupSyncer] = None
        self._flush_task: Optional[asyncio.Task] = None   # with an executor: the write's task
        # The loop a job zero-filling space ahead reports to, while one runs
        # (see _ahead_running), and a segment where that failed (the groups
        # then allocate as they go, and meet the error themselves).
        self._allocating: Optional[asyncio.AbstractEventLoop] = None
        self._ahead_refused: Optional[Segment] = None
        self._idle_waiters: list = []            # close() waiting for the writes to end
        # Disk full: the group in flight is held (it stays _in_flight, so
        # nothing overtakes it) and rewritten whole when the timer fires.
        self._no_space: Optional[NoSpace] = None
        self._space_retry: Optional[asyncio.TimerHandle] = None
        self._space_delay = _SPACE_RETRY_MIN
        self._space_listener: Optional[Callable] = None
        #: Called with the seconds each group took from submission to durable
        #: (its write and fsync), on the event loop thread; None: not timed.
        #: Once per group, never per entry (raftcore kv --http's histogram).
        self.sync_observer: Optional[Callable[[float], None]] = None
        self._submitted_at = 0.0

    def _kick(self) -> None:
        if self._start_scheduled or self._in_flight is not None:
            return      # the group in flight takes the buffer with it when it completes
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise StorageError("FileLogStore: append, truncate_after and purge must be "
                               "called from a running event loop") from None
        self._start_scheduled = True
        # Next iteration: what else is appended in this one joins the group.
        loop.call_soon(self._start_group)

    def write_now(self) -> None:
        """Starts writing the buffered records at once if no group is in
        flight, instead of at the next loop iteration (event loop thread).
        For a caller that knows no more appends come in this iteration (the
        runtime, at the end of a step): it saves a loop pass of latency.
        Only records start a group here, so a write that starts calls no
        on_flushed from inside this call (one that cannot start fails the
        store, and its on_flushed get that error at once, as an append to
        a failed store does). The call_soon'd _start_group that _kick
        scheduled then finds the group in flight (or takes what came
        since) and does nothing more."""
        if self._start_scheduled and self._in_flight is None and self._buf and \
                self._failed is None and self._no_space is None:
            self._start_group()

    def _group_syncer(self, loop: asyncio.AbstractEventLoop) -> GroupSyncer:
        """The compiled thread, reporting to `loop` (a new one if the store
        moved to another event loop: nothing would read the old one's fd)."""
        syncer = self._syncer
        if syncer is not None and syncer.loop is not loop:
            self._syncer = None
            syncer.stop(join=True)      # idle: no group is in flight
            syncer = None
        if syncer is None:
            syncer = self._syncer = GroupSyncer(self, loop, self._ops.io)
        return syncer

    def _flush_thread(self) -> FlushThread:
        if self._thread is None:
            self._thread = FlushThread(f"raftcore-flush {self.path}")
        return self._thread

    def _off_loop(self, fn: Callable, *args: Any) -> Awaitable:
        """Runs blocking fn(*args) on the store's thread, or in the executor."""
        if not self._own_thread:
            return self._executor(fn, *args)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._flush_thread().submit(loop, fn, args, functools.partial(settle, fut))
        return fut

    def _start_group(self) -> None:
        """Takes the buffer as one group and starts writing it, unless a group
        is in flight already (event loop thread)."""
        self._start_scheduled = False
        while self._in_flight is None and self._failed is None and \
                (self._buf or self._buf_callbacks):
            group = self._take_group()
            if not group.data:
                # Only on_flushed of empty appends: everything before them is durable.
                self._notify(group.callbacks, None)
                continue
            self._in_flight = group
            self._submit(group)
            return
        self._maybe_idle()

    def _submit(self, group: Group) -> None:
        """Starts writing the group in flight (event loop thread)."""
        args = (self._fd, group.data, group.segment, group.offset, group.roll,
                [s.path for s in group.delete])
        loop = asyncio.get_running_loop()
        seg = group.segment
        self._submitted_at = time.perf_counter()
        plain = self._fast_sync and not group.roll and not group.delete and \
            group.offset + len(group.data) <= seg.allocated
        try:
            if plain:
                self._group_syncer(loop).submit(self._fd, group.data, group.offset)
            elif self._own_thread:
                self._flush_thread().submit(loop, self._write_group, args,
                                            self._group_written)
            else:
                self._flush_task = loop.create_task(self._write_in_executor(args))
        except Exception as exc:    # no descriptor or thread to be had: fail, never stall
            self._in_flight = None
            self._fail(StorageError(f"FileLogStore {self.path}: cannot start writing the "
                                    f"log: {exc}; the store takes no more writes"),
                       group, exc)
            return
        if plain:
            # Outside the try: the group is in the compiled thread's hands.
            self._maybe_allocate_ahead(loop, seg, group.offset + len(group.data))

    async def _write_in_executor(self, args: tuple) -> None:
        try:
            try:
                fd = await self._executor(self._write_group, *args)
            finally:
                self._flush_task = None
        except asyncio.CancelledError:
            group, self._in_flight = self._in_flight, None
            self._fail(StorageError(
                f"FileLogStore {self.path}: a flush was cancelled; whether it reached the "
                "disk is unknown"), group)
            raise
        except BaseException as exc:
            self._group_written(None, exc)
            return
        self._group_written(fd, None)

    def _group_written(self, fd: Optional[int], exc: Optional[BaseException]) -> None:
        """The group in flight is durable (exc None) or failed (event loop thread)."""
        if is_space_error(exc) and not self._closed:
            self._hold_for_space(exc)
            return
        group, self._in_flight = self._in_flight, None
        if exc is not None:
            self._fail(StorageError(
                f"FileLogStore {self.path}: writing the log failed: {exc}; the store takes "
                "no more writes"), group, exc)
            return
        self._fd = fd
        if self.sync_observer is not None:
            self.sync_observer(time.perf_counter() - self._submitted_at)
        if self._no_space is not None:
            self._space_freed()
        if group.delete:
            del self._segments[:len(group.delete)]
        if self._buf:
            # Records wait: the next group goes to the disk first, so its
            # write overlaps this group's callbacks (it cannot complete
            # before they have run).
            self._start_group()
            self._notify(group.callbacks, None)
        else:
            # Only callbacks (empty appends) may wait: they come after these.
            self._notify(group.callbacks, None)
            self._start_group()

    def _hold_for_space(self, exc: OSError) -> None:
        """The disk is full: nothing of the group in flight counts as written
        (a partial write is rewritten whole, a new segment was removed);
        keep it in flight and write it again later (event loop thread)."""
        if self._no_space is None:
            self._no_space = NoSpace(
                f"FileLogStore {self.path}: the disk is full ({exc.strerror}); the log's "
                "writes are held and retried until space is freed")
            self._no_space.__cause__ = exc
            log.error("%s", self._no_space)
            self._tell_space(self._no_space)
        loop = asyncio.get_running_loop()
        self._space_retry = loop.call_later(self._space_delay, self._retry_for_space)
        self._space_delay = min(self._space_delay * 2, _SPACE_RETRY_MAX)
        self._maybe_idle()

    def _retry_for_space(self) -> None:
        self._space_retry = None
        self._submit(self._in_flight)

    def _space_freed(self) -> None:
        self._no_space = None
        self._ahead_refused = None      # allocating ahead may work again
        self._space_delay = _SPACE_RETRY_MIN
        log.warning("FileLogStore %s: disk space is available again; the held log writes "
                    "went through", self.path)
        self._tell_space(None)

    def _tell_space(self, err: Optional[NoSpace]) -> None:
        if self._space_listener is not None:
            try:
                self._space_listener(err)
            except Exception:
                log.exception("FileLogStore %s: the space listener raised", self.path)

    def _idle(self) -> bool:
        """No write under way (a group held for space waits on a timer
        only), and no space being allocated ahead."""
        return not self._start_scheduled and not self._ahead_running() and \
            (self._in_flight is None or self._space_retry is not None)

    def _maybe_idle(self) -> None:
        if self._idle_waiters and self._idle():
            waiters, self._idle_waiters = self._idle_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _take_group(self) -> Group:
        """Takes the buffered records as one group (event loop thread)."""
        group = Group()
        group.callbacks = self._buf_callbacks
        self._buf_callbacks = []
        records = self._buf
        if not records:
            return group
        self._buf = []
        parts = []
        active = self._segments[-1] if self._segments else None
        if active is None or active.size >= self.segment_size:
            seq = active.seq + 1 if active is not None else 1
            prev_size = active.size if active is not None else 0
            active = Segment(seq, os.path.join(self.path, seg_name(seq)))
            start, purged, committed = self._taken
            parts.append(frame(R_HEADER, self._packer.pack(
                [FORMAT_VERSION, seq, start, encode_log_id(purged),
                 encode_log_id(committed), prev_size])))
            self._segments.append(active)
            group.roll = True
        group.segment = active
        group.offset = active.size
        active.groups += 1
        parts.extend(records)
        glen = sum(map(len, parts))
        parts.append(frame(R_MARKER, MARKER.pack(active.groups, glen)))
        group.data = b"".join(parts)
        active.size += len(group.data)
        if self._buf_max_index > active.max_index:
            active.max_index = self._buf_max_index
        self._buf_max_index = 0
        ix = self._index
        self._taken = (ix.next_index, ix.purged, self._committed)
        group.delete = deletable(self._segments, ix.purged_index)
        return group

    def _write_group(self, fd: Optional[int], data: bytes, seg: Segment, offset: int,
                     roll: bool, delete: list) -> int:
        """Runs on the flush thread (or in the executor): writes a group at
        `offset` of segment `seg` (a new file if `roll`), makes it durable,
        deletes segments; returns the fd of the segment written."""
        ops = self._ops
        if roll:
            new_fd = ops.open_segment(seg.path, create=True)
            try:
                self._allocate(new_fd, seg, offset + len(data))
                ops.pwrite(new_fd, data, offset)
                ops.fsync(new_fd)
                ops.fsync(self._dir_fd)
            except BaseException:
                ops.close(new_fd)
                # Never reported written: gone, the group is written again
                # into a new file (on open, recovery would remove it as torn).
                seg.allocated = 0
                ops.remove_quietly(seg.path)
                raise
            if fd is not None:
                ops.close(fd)
            fd = new_fd
        else:
            self._allocate(fd, seg, offset + len(data))
            ops.pwrite(fd, data, offset)
            ops.sync_data(fd)
        if delete:
            # The purge that allows this is durable now (this group or earlier).
            for path in delete:
                self._unlink_durably(path)
        return fd

    def _allocate(self, fd: int, seg: Segment, end: int) -> None:
        """Grows the segment file ahead of its data (flush thread): at least
        to `end`, by PREALLOCATE at a time (AHEAD_STEP where the flush
        thread allocates ahead of the plain groups: this group waits for
        no more than it needs), to no more than segment_size unless `end`
        is past it."""
        if end <= seg.allocated:
            return
        step = AHEAD_STEP if self._allocates_ahead(seg) else PREALLOCATE
        target = max(end, min(end + step, self.segment_size))
        if self._ops.io.allocate == "zero-fill" and target > end and \
                self._short_of_room(fd, target - seg.allocated):
            # Zeros written only to be cut back when the disk fills would
            # cost a write of the free space per group: only what it needs.
            target = end
        try:
            self._ops.allocate(fd, seg.allocated, target - seg.allocated)
        except OSError as exc:
            if not is_space_error(exc) or target == end:
                raise
            target = end     # little space left: only what this group needs
            self._ops.allocate(fd, seg.allocated, target - seg.allocated)
        seg.allocated = target

    def _short_of_room(self, fd: int, length: int) -> bool:
        """Whether taking `length` more bytes of zeros ahead would leave the
        disk less than AHEAD_RESERVE free (flush thread; the space a
        snapshot or a vote save needs is not taken for speed)."""
        return self._ops.free_space(fd) < length + AHEAD_RESERVE

    def _allocates_ahead(self, seg: Segment) -> bool:
        """Whether the flush thread allocates `seg`'s space ahead of its
        groups: only zeros take long to write (posix_fallocate and
        ftruncate return at once), only beside the compiled thread's
        groups, and not in a segment where it failed."""
        return self._fast_sync and self._ops.io.allocate == "zero-fill" and \
            self._ahead_refused is not seg

    def _ahead_running(self) -> bool:
        """A job allocating ahead will report to the running loop. (One that
        reports to another loop, stopped or closed, is not waited for: it
        may never report. The flush thread's join at close bounds it.)"""
        loop = self._allocating
        return loop is not None and loop is asyncio._get_running_loop()

    def _maybe_allocate_ahead(self, loop: asyncio.AbstractEventLoop, seg: Segment,
                              end: int) -> None:
        """Has the flush thread zero-fill segment `seg`'s next space if less
        than half of PREALLOCATE is left after `end` (event loop thread,
        after a plain group went to the GroupSyncer)."""
        if self._ahead_running() or not self._allocates_ahead(seg) or \
                seg.allocated >= self.segment_size or seg.allocated - end > PREALLOCATE // 2:
            return
        try:
            self._flush_thread().submit(loop, self._allocate_ahead, (seg,),
                                        functools.partial(self._allocated_ahead, seg))
        except Exception as exc:    # no thread to be had: the groups allocate themselves
            self._allocated_ahead(seg, None, exc)
            return
        self._allocating = loop

    def _allocate_ahead(self, seg: Segment) -> None:
        """Flush thread: zero-fills the AHEAD_JOB bytes after seg.allocated
        through a descriptor of its own, AHEAD_STEP at a time, each synced;
        then raises seg.allocated over them all. If anything fails, the
        file is cut back to where the job began and the error raised. The
        jobs of this thread run one at a time, so a group written here
        (_write_group) sees the new `allocated`. (See the module docstring
        for why each of these.)"""
        ops = self._ops
        start = seg.allocated
        target = min(start + AHEAD_JOB, self.segment_size)
        if target <= start:
            return
        fd = ops.open_segment(seg.path, create=False)
        try:
            if self._short_of_room(fd, target - start):
                raise OSError(errno.ENOSPC, "too little free space to allocate the log's "
                                            "segment space ahead")
            try:
                for pos in range(start, target, AHEAD_STEP):
                    ops.zero_fill(fd, pos, min(AHEAD_STEP, target - pos))
                    ops.sync_data(fd)
            except BaseException:
                try:
                    ops.shrink(fd, start)
                except OSError:       # the error that stopped the job is the one to report
                    log.warning("FileLogStore %s: cutting a segment back after allocating "
                                "ahead failed, failed too", self.path, exc_info=True)
                raise
        finally:
            ops.close(fd)
        seg.allocated = target

    def _allocated_ahead(self, seg: Segment, result: Any,
                         exc: Optional[BaseException]) -> None:
        if self._allocating is asyncio._get_running_loop():
            self._allocating = None     # (else a later job, on another loop, runs)
        if exc is not None:
            # Nothing is lost: no group was written past `allocated`, and
            # each group's own fdatasync reports its own write errors. The
            # groups allocate their own space from here on in this segment
            # (until a full disk has space again), and meet any error
            # themselves.
            self._ahead_refused = seg
            log.warning("FileLogStore %s: allocating segment space ahead failed (%s); the "
                        "writes allocate it themselves", self.path, exc)
        self._maybe_idle()

    def _unlink_durably(self, path: str) -> None:
        # One directory fsync per deleted segment, oldest first: on a file
        # system that does not keep directory changes in order, a crash then
        # leaves a prefix of the deletions, never a gap in segment numbers.
        self._ops.unlink(path)
        self._ops.fsync(self._dir_fd)

    def _notify(self, callbacks: list, err: Optional[BaseException]) -> None:
        for cb in callbacks:
            try:
                cb(err)
            except Exception:
                log.exception("FileLogStore %s: an on_flushed callback raised", self.path)

    def _fail(self, err: StorageError, group: Optional[Group],
              cause: Optional[BaseException] = None) -> None:
        if cause is not None:
            err.__cause__ = cause
        log.error("%s", err)
        self._failed = err
        callbacks = (group.callbacks if group is not None else []) + self._buf_callbacks
        self._buf_callbacks = []
        self._buf = []
        self._notify(callbacks, err)
        self._maybe_idle()

    def _drop_held_writes(self) -> None:
        """Closing on a full disk: what is held was never written (a torn
        part of it is cut on open); its on_flushed get the NoSpace error."""
        if self._space_retry is None:
            return
        self._space_retry.cancel()
        self._space_retry = None
        group, self._in_flight = self._in_flight, None
        callbacks = group.callbacks + self._buf_callbacks
        self._buf_callbacks = []
        self._buf = []
        self._notify(callbacks, self._no_space)

    def _stop_thread(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop()
            thread.join()       # idle: it ends at once
        syncer, self._syncer = self._syncer, None
        if syncer is not None:
            syncer.stop(join=True)
