"""FileLogStore: a durable, segmented, append-only Raft log and vote in a directory.

Directory layout::

    FORMAT                  "raftcore-filelog" and the format version
    LOCK                    flock()ed while a store has the directory open
    vote                    the vote, replaced atomically (vote.tmp, fsync, rename, fsync dir)
    identity                the cluster id and the store's incarnation (made with the
                            directory; a new directory is a new incarnation), replaced
                            atomically like the vote
    seg-000000000001.log    log segments, numbered consecutively; the last one is written

Segment files are allocated ahead of their data (posix_fallocate, in steps of
PREALLOCATE bytes), so a file is usually longer than what it holds: the rest
reads as zeros. Writing a group then changes no file size, and fdatasync
makes it durable without a metadata update: measured on an ext4 VM disk with
three nodes syncing at once, 200-260 us per group against 275-350 us for
append + fsync. A new segment's first group is made durable with fsync and a
directory fsync.

Records. Every record is framed as::

    u32 length   (of type + payload), little endian
    u32 crc32    (zlib.crc32 over length, type and payload)
    u8  type
    payload

with a msgpack payload (codec.encode_* layouts) except for the commit marker.
Record types: HEADER (first record of every segment: format version, segment
number, index of its first entry, purged log id, committed log id, and from
version 2 the byte length of the previous segment's groups), ENTRIES
(one appended batch), TRUNCATE (index), PURGE (log id), COMMITTED (log id),
MARKER (group number within the segment, byte length of the group).

Group commit. Appends, truncations and purges only add records to an
in-memory buffer (entries are readable at once from an in-memory index of
every entry since the last purge). One loop iteration later (so that the
appends of one iteration go together) the whole buffer is taken as one
*group*, ended with a MARKER record and handed to the store's flush thread,
which writes it at its offset, makes it durable with one fdatasync and wakes the
event loop once; there every on_flushed of the group is called, in append
order. A group that needs nothing else (no new segment, no more allocated
space, no segment to delete: nearly all of them) goes to a compiled thread
that never takes the GIL (sync_worker.SyncWorker, signalling completion on
an eventfd the loop watches); the others, and vote saves, to a Python thread
(_FlushThread, completion by call_soon_threadsafe). Both are started by the
first write that needs them and stopped by close(). One group is in flight at a time: appends that arrive
while an fsync is in flight form the next group, taken as soon as that fsync
completes. (With an `executor` given, the group goes to the executor instead
and the store starts no thread.) A truncation or purge is a record in that
same stream, so it is durable before any later append is reported flushed;
segments are deleted only after the group holding the purge record is durable
(and only whole segments: nothing is rewritten).

Recovery. On open every segment is read and each group is replayed only once
its marker has been read. Zeros after the last marker of a segment are
allocated space, not yet written. Anything else that follows the last marker
of the last segment is classified:

- a torn tail (the batch was never completely written, so never reported
  flushed): the file ends inside it, or it reads as zeros from a sector
  boundary on (a write into allocated space reaches the disk in whole
  512-byte sectors). It is cut off (the file truncated) and a WARNING is
  logged.
- corruption: a damaged record in a group whose marker is present (a valid
  marker of this or a later group follows it, or the group's own marker sits
  at the end of the file with only its checksum or one field damaged). The
  store refuses to open: StorageError naming the file and offset.

Anything wrong in a segment that is not the last one is corruption. A flushed
entry is therefore never dropped silently: either it is recovered, or the store
refuses to open. The other way round, refusing is the safe side: a batch torn
by a disk that persisted its end (marker) but not its middle, or damage that
happens to contain an intact marker, is reported as corruption.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import logging
import os
import queue
import re
import struct
import threading
import weakref
import zlib
from typing import Any, Awaitable, Callable, Optional, Sequence

import msgpack

from raftcore.codec import (decode_entries, decode_log_id, decode_vote, encode_entries,
                            encode_log_id, encode_vote)
from raftcore.errors import NoSpace, StorageError, is_space_error
from raftcore.storage.base import (FlushCallback, LogState, LogStore, StoreIdentity,
                                   new_identity_token)
from raftcore.storage.sync_worker import SyncWorker
from raftcore.types import Entry, LogId, Vote

__all__ = ["FileLogStore", "FileOps", "FORMAT_VERSION"]

log = logging.getLogger("raftcore.storage.file")

#: On-disk format version, in FORMAT, in every segment header and in the vote file.
#: Version 2 segments may end in allocated zeros, which version 1 readers take
#: for damage; version 1 directories are read, and upgraded on open.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
FORMAT_NAME = "raftcore-filelog"

DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024
#: Segment files grow by this much at a time (at most to segment_size), or
#: by only what a group needs when the disk has less room than that.
PREALLOCATE = 4 * 1024 * 1024
#: A group held for lack of disk space is retried after this many seconds,
#: doubling up to _SPACE_RETRY_MAX.
_SPACE_RETRY_MIN = 0.05
_SPACE_RETRY_MAX = 1.0

R_HEADER = 1
R_ENTRIES = 2
R_TRUNCATE = 3
R_PURGE = 4
R_COMMITTED = 5
R_MARKER = 6
R_VOTE = 7
R_IDENTITY = 8
_RECORD_NAMES = {R_HEADER: "header", R_ENTRIES: "entries", R_TRUNCATE: "truncate",
                 R_PURGE: "purge", R_COMMITTED: "committed", R_MARKER: "commit marker",
                 R_VOTE: "vote", R_IDENTITY: "identity"}

_HEAD = struct.Struct("<II")            # length of (type + payload), crc32
_LEN_TYPE = struct.Struct("<IB")        # what the crc covers before the payload
_HEAD_TYPE = struct.Struct("<IIB")      # length, crc32, type
_MARKER = struct.Struct("<QI")          # group number in the segment, group byte length
HEAD_SIZE = _HEAD.size                  # 8
MARKER_LEN = 1 + _MARKER.size           # 13: type + marker payload
MARKER_FRAME_SIZE = HEAD_SIZE + MARKER_LEN   # 21
_MARKER_LEN_BYTES = struct.pack("<I", MARKER_LEN)
MAX_RECORD = (1 << 32) - 1
# The smallest unit a disk writes: a torn write zero-fills from a multiple of it.
_SECTOR = 512

FORMAT_FILE = "FORMAT"
LOCK_FILE = "LOCK"
VOTE_FILE = "vote"
VOTE_TMP = "vote.tmp"
IDENTITY_FILE = "identity"
IDENTITY_TMP = "identity.tmp"
_SEG_RE = re.compile(r"^seg-(\d{12})\.log$")


def _seg_name(seq: int) -> str:
    return f"seg-{seq:012d}.log"


def frame_head(rtype: int, payload: bytes) -> bytes:
    """The 9 bytes (length, crc32, type) that go before `payload`."""
    length = len(payload) + 1
    if length > MAX_RECORD:
        raise StorageError(f"a log record of {length} bytes is over the limit of "
                           f"{MAX_RECORD} bytes; append smaller batches")
    return _HEAD_TYPE.pack(length, zlib.crc32(payload, zlib.crc32(_LEN_TYPE.pack(length, rtype))),
                           rtype)


def frame(rtype: int, payload: bytes) -> bytes:
    """One framed record."""
    return frame_head(rtype, payload) + payload


def read_frame(data: Any, pos: int) -> Optional[tuple[int, memoryview, int]]:
    """(type, payload, next position) of the record at pos in the memoryview
    `data`, or None if no intact record starts there."""
    end = len(data)
    if pos + HEAD_SIZE + 1 > end:
        return None
    length, crc = _HEAD.unpack_from(data, pos)
    nxt = pos + HEAD_SIZE + length
    if length < 1 or nxt > end:
        return None
    rtype = data[pos + HEAD_SIZE]
    payload = data[pos + HEAD_SIZE + 1:nxt]
    if zlib.crc32(payload, zlib.crc32(_LEN_TYPE.pack(length, rtype))) != crc:
        return None
    return rtype, payload, nxt


def _zeros_from(data: memoryview, pos: int) -> bool:
    """Whether data holds only zero bytes from pos on (True at the end)."""
    n = len(data) - pos
    return n <= 0 or data[pos:].tobytes() == bytes(n)


def _unpack(payload: Any) -> Any:
    return msgpack.unpackb(payload, raw=False, strict_map_key=False)


# ------------------------------------------------------------------ file ops

class FileOps:
    """The file system calls FileLogStore makes, in one place.

    A test can pass a subclass (FileLogStore(..., ops=...)) to inject failures
    (ENOSPC, EIO) or to model a power cut that keeps only fsynced bytes; a
    store given one makes every call through it (with plain FileOps, most
    groups are written and synced by compiled code instead: SyncWorker).
    Methods run on the event loop thread during open and close, and in
    between on the store's flush thread, one call at a time. With an
    executor given they run through it instead; a thread pool may then run
    a vote save beside a log write, so they must be thread-safe (plain os
    calls are).
    """

    def makedirs(self, path: str) -> None:
        """Creates `path` and missing parents, each made durable in its parent."""
        missing = []
        p = os.path.abspath(path)
        while not os.path.isdir(p):
            missing.append(p)
            p = os.path.dirname(p)
        os.makedirs(path, exist_ok=True)
        for d in reversed(missing):
            fd = self.open_dir(os.path.dirname(d))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def open_dir(self, path: str) -> int:
        return os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))

    def open_lock(self, path: str) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_segment(self, path: str, create: bool) -> int:
        """Opens a segment for positioned writes (pwrite); `create`: a new
        file, which must not exist."""
        flags = os.O_WRONLY
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        return os.open(path, flags, 0o644)

    def write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    def allocate(self, fd: int, offset: int, length: int) -> None:
        """Makes the file at least offset + length bytes long, the new part
        zeros, with its blocks allocated where the file system can."""
        os.posix_fallocate(fd, offset, length)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def sync_data(self, fd: int) -> None:
        """fdatasync: the data and what is needed to read it back (the size)."""
        os.fdatasync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def read_file(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def write_file(self, path: str, data: bytes) -> None:
        """Creates or replaces `path` with `data` and fsyncs it (not its directory)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def truncate(self, path: str, size: int) -> None:
        """Cuts `path` to `size` bytes and fsyncs it."""
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)


# --------------------------------------------------------------- the index

class _Index:
    """Entries since the last purge: entries[i] has index first + i.

    In a live store first == purged index + 1. While replaying, first can be
    higher: the entries between were in segments already deleted, and a
    later purge record must cover them (checked at the end of recovery).
    """

    __slots__ = ("first", "entries", "purged")

    def __init__(self, first: int, purged: Optional[LogId]) -> None:
        self.first = first
        self.entries: list = []
        self.purged = purged

    @property
    def purged_index(self) -> int:
        return self.purged.index if self.purged is not None else 0

    @property
    def next_index(self) -> int:
        return self.first + len(self.entries)

    @property
    def last_log_id(self) -> Optional[LogId]:
        if self.entries:
            return self.entries[-1].log_id
        if self.first == self.purged_index + 1:
            return self.purged
        return None     # only mid-replay

    def truncate_after(self, index: int) -> None:
        if index < self.first - 1:
            self.entries = []
            self.first = max(index, self.purged_index) + 1
        else:
            del self.entries[index - self.first + 1:]

    def purge(self, upto: LogId) -> None:
        if upto.index <= self.purged_index:
            return
        self.purged = upto
        if upto.index >= self.first:
            del self.entries[:upto.index - self.first + 1]
            self.first = upto.index + 1


class _Segment:
    __slots__ = ("seq", "path", "size", "allocated", "max_index", "groups")

    def __init__(self, seq: int, path: str, size: int = 0, allocated: int = 0) -> None:
        self.seq = seq
        self.path = path
        self.size = size        # bytes of groups taken (event loop thread)
        self.allocated = allocated  # file length (flush thread, once open)
        self.max_index = 0      # highest entry index ever written in it
        self.groups = 0         # groups (commit markers) in it

    def __repr__(self) -> str:
        return f"_Segment({self.seq}, size={self.size}, max_index={self.max_index})"


class _Group:
    """Records taken from the buffer to be written and fsynced together."""

    __slots__ = ("data", "callbacks", "segment", "offset", "roll", "delete")

    def __init__(self) -> None:
        self.data = b""
        self.callbacks: list = []
        self.segment: Optional[_Segment] = None     # where the data goes, at offset
        self.offset = 0
        self.roll = False                           # segment is new: create it
        self.delete: list = []


# ----------------------------------------------------------------- the store

def _default_executor(fn: Callable, *args: Any) -> Awaitable:
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _settle(fut: asyncio.Future, result: Any, exc: Optional[BaseException]) -> None:
    if fut.cancelled():
        return      # the caller gave up; the work was done all the same
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class _FlushThread:
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


class _GroupSyncer:
    """A SyncWorker on a thread of its own, reporting to an event loop: a
    finished job calls store._group_written(fd, error) there. Holds the
    store only weakly between jobs, so a store dropped without close() can
    be collected (and stop it)."""

    def __init__(self, store: "FileLogStore", loop: asyncio.AbstractEventLoop) -> None:
        if hasattr(os, "eventfd"):
            self._read_fd = self._write_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:
            self._read_fd, self._write_fd = os.pipe()
            os.set_blocking(self._read_fd, False)
        self._store = weakref.ref(store)
        self.loop = loop
        self._fd = -1
        self._pinned: Optional["FileLogStore"] = None
        self._watched = False
        self.thread: Optional[threading.Thread] = None
        try:
            self._worker = SyncWorker(self._write_fd)
            self.thread = threading.Thread(target=self._worker.run,
                                           name=f"raftcore-sync {store.path}", daemon=True)
            self.thread.start()
            loop.add_reader(self._read_fd, self._completed)
            self._watched = True
        except BaseException:
            self.stop(join=True)
            raise

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


class FileLogStore(LogStore):
    """A durable Raft log and vote in directory `path` (created if missing).

    - segment_size: a segment is closed and a new one started once it holds
      this many bytes (at a group boundary, so a segment may exceed it by one
      group).
    - executor: None (default) runs the blocking writes and fsyncs (log
      groups, vote saves) on a thread of the store's own, started by the
      first write and joined by close(). Given, executor(fn, *args) ->
      awaitable runs them instead and the store starts no thread; a
      simulation passes one that runs fn inline.
    - ops: the file system layer (FileOps), for failure-injection tests.

    Opening recovers the log (see the module docstring) and raises
    StorageError if it is damaged; it reads every segment, so open a large
    log off the event loop with ``await FileLogStore.open(path)``. Only one
    store may have a directory open at a time (an flock on LOCK).

    Payloads are stored with msgpack: they must be msgpack-able (bytes, str,
    numbers, lists, dicts, None), and tuples come back as lists.
    """

    def __init__(self, path: str | os.PathLike, *, segment_size: int = DEFAULT_SEGMENT_SIZE,
                 executor: Optional[Callable[..., Awaitable]] = None,
                 ops: Optional[FileOps] = None) -> None:
        if not isinstance(segment_size, int) or segment_size <= 0:
            raise ValueError(f"segment_size must be a positive int, got {segment_size!r}")
        self.path = os.fspath(path)
        self.segment_size = segment_size
        self._executor = executor or _default_executor
        self._own_thread = executor is None      # log writes on a _FlushThread
        # Plain groups on the GIL-free SyncWorker: with the real file system
        # only (a test's ops see every call).
        self._fast_sync = self._own_thread and (ops is None or type(ops) is FileOps)
        self._ops = ops or FileOps()
        self._closed = False
        self._failed: Optional[StorageError] = None
        self._dir_fd: Optional[int] = None
        self._lock_fd: Optional[int] = None
        self._fd: Optional[int] = None           # the active (last) segment, for appends
        self._segments: list[_Segment] = []
        self._vote: Optional[Vote] = None
        self._identity: Optional[StoreIdentity] = None
        self._committed: Optional[LogId] = None
        self._index = _Index(1, None)
        # writer state (event loop thread only)
        self._buf: list[bytes] = []              # framed records not yet taken (heads and
        #                                          payloads, joined once per group)
        self._buf_callbacks: list = []           # on_flushed of the buffered appends
        self._buf_max_index = 0                  # highest entry index in the buffer
        self._taken: tuple = (1, None, None)     # (next index, purged, committed) as of
        #                                          the last group taken: a new header
        self._in_flight: Optional[_Group] = None      # the group being written
        self._start_scheduled = False            # a _start_group is call_soon'd
        self._thread: Optional[_FlushThread] = None
        self._syncer: Optional[_GroupSyncer] = None
        self._flush_task: Optional[asyncio.Task] = None   # with an executor: the write's task
        self._idle_waiters: list = []            # close() waiting for the writes to end
        # Disk full: the group in flight is held (it stays _in_flight, so
        # nothing overtakes it) and rewritten whole when the timer fires.
        self._no_space: Optional[NoSpace] = None
        self._space_retry: Optional[asyncio.TimerHandle] = None
        self._space_delay = _SPACE_RETRY_MIN
        self._space_listener: Optional[Callable] = None
        self._vote_lock = asyncio.Lock()
        self._packer = msgpack.Packer(use_bin_type=True)
        try:
            self._open()
        except OSError as exc:
            self._release()
            raise StorageError(f"FileLogStore {self.path}: cannot open: {exc}") from exc
        except BaseException:
            self._release()
            raise

    @classmethod
    async def open(cls, path: str | os.PathLike, **kw: Any) -> "FileLogStore":
        """Opens (and recovers) the store in the executor, off the event loop."""
        executor = kw.get("executor") or _default_executor
        return await executor(lambda: cls(path, **kw))

    def __repr__(self) -> str:
        return (f"FileLogStore({self.path!r}, segments={len(self._segments)}, "
                f"last={self._index.last_log_id})")

    # ----------------------------------------------------------------- open

    def _p(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _open(self) -> None:
        ops = self._ops
        ops.makedirs(self.path)
        self._dir_fd = ops.open_dir(self.path)
        try:
            self._lock_fd = ops.open_lock(self._p(LOCK_FILE))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StorageError(
                    f"FileLogStore {self.path}: the directory is in use by another store "
                    "(in this or another process); close that one first") from None
            raise StorageError(
                f"FileLogStore {self.path}: cannot lock {LOCK_FILE}: {exc}") from exc
        names = ops.listdir(self.path)
        segs = sorted((int(m.group(1)), n) for n in names if (m := _SEG_RE.match(n)))
        self._check_format(names, bool(segs))
        self._load_vote(names)
        self._load_identity(names)
        self._recover(segs)
        ix = self._index
        self._taken = (ix.next_index, ix.purged, self._committed)
        if self._segments:
            self._fd = ops.open_segment(self._segments[-1].path, create=False)
        doomed = self._deletable(ix.purged_index)
        if doomed:
            for seg in doomed:
                self._unlink_durably(seg.path)
            del self._segments[:len(doomed)]

    def _check_format(self, names: list, has_segments: bool) -> None:
        path = self._p(FORMAT_FILE)
        if FORMAT_FILE in names:
            try:
                text = self._ops.read_file(path).decode("utf-8", "replace")
            except OSError as exc:
                raise StorageError(f"cannot read {path}: {exc}") from exc
            words = text.split()
            if len(words) != 3 or words[0] != FORMAT_NAME or words[1] != "version":
                raise StorageError(f"{path} is not a FileLogStore format file: {text[:80]!r}")
            if words[2] not in map(str, READABLE_VERSIONS):
                raise StorageError(
                    f"{path}: format version {words[2]}, this raftcore reads versions "
                    f"{', '.join(map(str, READABLE_VERSIONS))}; use the raftcore version that "
                    "wrote it")
            if words[2] == str(FORMAT_VERSION):
                return
            # An older version: what this store writes from now on (segments
            # ending in allocated zeros) needs this version to be read.
        elif has_segments or VOTE_FILE in names:
            raise StorageError(
                f"{self.path} holds log or vote files but no {FORMAT_FILE} file: it was not "
                "written by FileLogStore, or the file was lost; refusing to guess its format")
        tmp = path + ".tmp"
        self._ops.write_file(tmp, f"{FORMAT_NAME} version {FORMAT_VERSION}\n".encode())
        self._ops.rename(tmp, path)
        self._ops.fsync(self._dir_fd)

    def _load_vote(self, names: list) -> None:
        if VOTE_TMP in names:
            # A vote save that did not reach its rename: never acknowledged.
            log.info("FileLogStore %s: removing %s left by an interrupted vote save",
                     self.path, VOTE_TMP)
            self._ops.unlink(self._p(VOTE_TMP))
        if VOTE_FILE not in names:
            return
        path = self._p(VOTE_FILE)
        body = self._read_single_record(path, R_VOTE, "the vote file is damaged (bad checksum "
                                        "or length at offset 0); the node's vote is unknown")
        try:
            version, v = _unpack(body)
            if version not in READABLE_VERSIONS:
                raise StorageError(f"{path}: vote format version {version}, expected one of "
                                   f"{READABLE_VERSIONS}")
            self._vote = decode_vote(v)
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(f"{path}: undecodable vote record at offset 0: {exc}") from exc

    def _read_single_record(self, path: str, kind: int, damaged: str):
        """The body of a file that holds exactly one record of `kind` (the
        vote, the identity); StorageError naming the file if it does not."""
        data = memoryview(self._ops.read_file(path))
        rec = read_frame(data, 0)
        if rec is None or rec[0] != kind or rec[2] != len(data):
            raise StorageError(f"{path}: {damaged}; refusing to open")
        return rec[1]

    def _load_identity(self, names: list) -> None:
        """Reads the identity file, or makes one (a new incarnation) for a
        directory without: new storage, or one written before identities."""
        if IDENTITY_TMP in names:
            self._ops.unlink(self._p(IDENTITY_TMP))
        if IDENTITY_FILE not in names:
            identity = StoreIdentity(None, new_identity_token())
            self._replace_identity(self._identity_record(identity))
            self._identity = identity
            return
        path = self._p(IDENTITY_FILE)
        body = self._read_single_record(path, R_IDENTITY, "the identity file is damaged (bad "
                                        "checksum or length at offset 0)")
        try:
            version, cluster_id, incarnation = _unpack(body)
            if version not in READABLE_VERSIONS:
                raise StorageError(f"{path}: identity format version {version}, expected one "
                                   f"of {READABLE_VERSIONS}")
            if not (cluster_id is None or type(cluster_id) is str) or type(incarnation) is not str:
                raise StorageError(f"{path}: the cluster id and incarnation must be strings")
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(f"{path}: undecodable identity record: {exc}") from exc
        self._identity = StoreIdentity(cluster_id, incarnation)

    @staticmethod
    def _identity_record(identity: StoreIdentity) -> bytes:
        return frame(R_IDENTITY, msgpack.packb(
            [FORMAT_VERSION, identity.cluster_id, identity.incarnation], use_bin_type=True))

    def _replace_identity(self, data: bytes) -> None:
        ops = self._ops
        tmp = self._p(IDENTITY_TMP)
        ops.write_file(tmp, data)
        ops.rename(tmp, self._p(IDENTITY_FILE))
        ops.fsync(self._dir_fd)

    # -------------------------------------------------------------- recovery

    def _recover(self, segs: list) -> None:
        for k in range(1, len(segs)):
            if segs[k][0] != segs[k - 1][0] + 1:
                raise StorageError(
                    f"FileLogStore {self.path}: segment {segs[k - 1][0] + 1} is missing "
                    f"between {segs[k - 1][1]} and {segs[k][1]}; refusing to open a log "
                    "with a hole")
        ix: Optional[_Index] = None
        committed: Optional[LogId] = None
        for k, (seq, name) in enumerate(segs):
            path = self._p(name)
            last = k == len(segs) - 1
            data = memoryview(self._ops.read_file(path))
            groups, good_end, torn = self._parse_segment(path, data, last)
            allocated = len(data)
            if torn:
                # Cut (_parse_segment logged it), so that no part of it is
                # read after a later group's marker.
                self._ops.truncate(path, good_end)
                allocated = good_end
            if not groups:
                if not last:
                    raise StorageError(
                        f"{path} holds no complete batch, but newer segments follow it: it "
                        "was damaged; refusing to open a log with a hole")
                # The first group of the newest segment was torn: a roll that
                # never completed.
                self._ops.unlink(path)
                self._ops.fsync(self._dir_fd)
                continue
            seg = _Segment(seq, path, good_end, allocated)
            seg.groups = len(groups)
            # Before the header's other checks: a lost end of the segment
            # before is the precise diagnosis.
            self._check_previous_end(path, seq, groups[0][0])
            for gi, group in enumerate(groups):
                for ri, (rtype, payload, off) in enumerate(group):
                    try:
                        if gi == 0 and ri == 0:
                            if rtype != R_HEADER:
                                raise StorageError("the first record of a segment must be "
                                                   f"its header, found {_RECORD_NAMES.get(rtype)}")
                            ix, committed = self._replay_header(ix, committed, seq,
                                                                _unpack(payload))
                            continue
                        if rtype == R_ENTRIES:
                            entries = decode_entries(_unpack(payload))
                            if entries:
                                if entries[0].index != ix.next_index:
                                    raise StorageError(
                                        f"entries from index {entries[0].index} follow the "
                                        f"log ending at {ix.next_index - 1}")
                                ix.entries.extend(entries)
                                if entries[-1].index > seg.max_index:
                                    seg.max_index = entries[-1].index
                        elif rtype == R_TRUNCATE:
                            ix.truncate_after(_unpack(payload))
                        elif rtype == R_PURGE:
                            ix.purge(decode_log_id(_unpack(payload)))
                        elif rtype == R_COMMITTED:
                            committed = decode_log_id(_unpack(payload))
                        else:
                            raise StorageError(f"unexpected record type {rtype}")
                    except Exception as exc:
                        raise StorageError(
                            f"{path}: bad {_RECORD_NAMES.get(rtype, 'unknown')} record at "
                            f"offset {off} (its checksum is intact, so this log was written "
                            f"by something else or a bug): {exc}") from exc
            self._segments.append(seg)
        if ix is None:
            return
        if ix.first > ix.purged_index + 1:
            raise StorageError(
                f"FileLogStore {self.path}: entries {ix.purged_index + 1}..{ix.first - 1} are "
                f"missing (the oldest segment left, {self._segments[0].path}, starts after "
                "them and they were never purged); refusing to open a log with a hole")
        self._index = ix
        self._committed = committed

    def _replay_header(self, ix: Optional[_Index], committed: Optional[LogId], seq: int,
                       h: Any) -> tuple:
        version = h[0]
        if version not in READABLE_VERSIONS:
            raise StorageError(f"segment format version {version}, expected one of "
                               f"{READABLE_VERSIONS}")
        if version == 1:
            version, hseq, start, purged, hcommitted = h
        else:
            version, hseq, start, purged, hcommitted, prev_size = h
            if type(prev_size) is not int or prev_size < 0:
                raise StorageError(f"the header's previous segment size is {prev_size!r}")
        if hseq != seq:
            raise StorageError(f"the header says segment {hseq}, the file name says {seq}")
        purged = decode_log_id(purged)
        if ix is None:
            return _Index(start, purged), decode_log_id(hcommitted)
        if start != ix.next_index or purged != ix.purged:
            raise StorageError(
                f"the header says the segment starts at index {start} with purged {purged}; "
                f"the segments before end at {ix.next_index - 1} with purged {ix.purged}")
        return ix, committed

    def _check_previous_end(self, path: str, seq: int, first_record: tuple) -> None:
        """A segment's header records how many bytes of groups the segment
        before it held when it was closed: a cut at a group boundary of an
        older segment (which no checksum sees) is refused, not replayed as
        a log with a hole. (A header that cannot say is reported by the replay.)"""
        if not self._segments or self._segments[-1].seq != seq - 1:
            return      # the first segment, or the one before was purged
        rtype, payload, _off = first_record
        try:
            h = _unpack(payload)
            prev_size = h[5] if rtype == R_HEADER and h[0] != 1 else None
        except Exception:
            return
        if type(prev_size) is not int:
            return
        prev = self._segments[-1]
        if prev.size != prev_size:
            raise StorageError(
                f"{prev.path} holds {prev.size} bytes of batches, but {path} records that it "
                f"held {prev_size} when it was closed: flushed data is lost; refusing to open a "
                "log with a hole (restore this node's directory or rebuild the node from its "
                "peers)")

    def _parse_segment(self, path: str, data: memoryview,
                       last: bool) -> tuple[list, int, bool]:
        """The complete groups of a segment, as lists of (type, payload,
        offset), the offset where they end, and whether a torn tail of the
        last segment follows them (reported here, to be cut); raises
        StorageError on corruption."""
        groups: list = []
        pending: list = []
        pos = group_start = 0
        gseq = 1
        end = len(data)
        while pos < end:
            rec = read_frame(data, pos)
            if rec is None:
                break
            rtype, payload, nxt = rec
            if rtype == R_MARKER:
                if len(payload) != _MARKER.size:
                    raise StorageError(f"{path}: malformed commit marker at offset {pos}")
                seq, glen = _MARKER.unpack(payload)
                if seq != gseq or glen != pos - group_start or not pending:
                    raise StorageError(
                        f"{path}: the commit marker at offset {pos} says group {seq} of "
                        f"{glen} bytes, but it ends group {gseq} of {pos - group_start} bytes "
                        f"starting at offset {group_start}: records are missing or misplaced")
                groups.append(pending)
                pending = []
                gseq += 1
                group_start = nxt
            else:
                pending.append((rtype, payload, pos))
            pos = nxt
        if not pending and _zeros_from(data, pos):
            return groups, pos, False   # the rest is allocated space (or nothing)
        # Something follows the last complete group: torn tail or corruption.
        bad = pos if pos < end else group_start
        committed_at = self._find_marker(data, pos + 1, gseq) if pos < end else None
        if committed_at is None:
            committed_at = self._tail_marker(data, group_start, gseq)
        if committed_at is not None:
            what = "damaged record" if pos < end else "records without their commit marker"
            raise StorageError(
                f"{path}: {what} at offset {bad}, inside a batch whose commit marker is "
                f"present (at offset {committed_at}): flushed data is damaged; refusing to "
                "open a log with a hole (restore this node's directory or rebuild the node "
                "from its peers)")
        if not last:
            raise StorageError(
                f"{path}: damaged or incomplete batch at offset {bad}, but newer segments "
                "follow this one, so it had been written completely: flushed data is "
                "damaged; refusing to open")
        log.warning(
            "FileLogStore %s: cut a torn tail from %s: %d bytes from offset %d, a batch that "
            "was never completely written (no commit marker), so never reported flushed",
            self.path, path, end - group_start, group_start)
        return groups, group_start, True

    @staticmethod
    def _find_marker(data: memoryview, start: int, min_seq: int) -> Optional[int]:
        """Offset of an intact commit marker of group min_seq or later at or
        after `start`, or None."""
        raw = data.obj if isinstance(data.obj, bytes) else bytes(data)
        i = raw.find(_MARKER_LEN_BYTES, start)
        while i != -1:
            rec = read_frame(data, i)
            if rec is not None and rec[0] == R_MARKER and len(rec[1]) == _MARKER.size:
                if _MARKER.unpack(rec[1])[0] >= min_seq:
                    return i
            i = raw.find(_MARKER_LEN_BYTES, i + 1)
        return None

    @staticmethod
    def _tail_marker(data: memoryview, group_start: int, gseq: int) -> Optional[int]:
        """Offset of the group's own commit marker where the written data
        ends if it is there with at most one of its fields damaged (a torn
        write leaves the file short or zero-filled from a sector boundary,
        never a marker with the right group number and length); else None.

        The written data ends where the final run of zeros starts (the rest
        of the file is allocated space), or up to a marker's length later:
        an intact marker may end in zero bytes."""
        raw = bytes(data[group_start:])
        zeros = group_start + len(raw.rstrip(b"\0"))   # file offset where the zeros start
        first = max(group_start + 1, zeros - MARKER_FRAME_SIZE)
        last = min(zeros, len(data) - MARKER_FRAME_SIZE)
        for at in range(first, last + 1):
            if FileLogStore._damaged_marker_at(data, at, group_start, gseq, zeros):
                return at
        return None

    @staticmethod
    def _damaged_marker_at(data: memoryview, at: int, group_start: int, gseq: int,
                           zeros: int) -> bool:
        # Fix (found by tests/test_crash_powercut.py, "zeros" mode): a power
        # cut during this group's write can leave its last sector unwritten,
        # reading as zeros from a sector boundary on. When that boundary falls
        # in the marker's last bytes (group length, high bytes of the group
        # number), three fields stayed intact and the batch -- never fsynced,
        # never reported flushed -- was taken for damaged flushed data: the
        # store refused to start after a plain power cut. If every byte that
        # differs from the marker this group would end with lies in the final
        # run of zeros and that run starts at a sector boundary, it is that
        # torn write.
        tail = bytes(data[at:at + MARKER_FRAME_SIZE])
        expected = frame(R_MARKER, _MARKER.pack(gseq, (at - group_start) & 0xFFFFFFFF))
        diff = next((i for i in range(MARKER_FRAME_SIZE) if tail[i] != expected[i]), None)
        if diff is not None and -(-zeros // _SECTOR) * _SECTOR <= at + diff:
            return False
        length, _crc = _HEAD.unpack_from(data, at)
        rtype = data[at + HEAD_SIZE]
        seq, glen = _MARKER.unpack_from(data, at + HEAD_SIZE + 1)
        score = (length == MARKER_LEN) + (rtype == R_MARKER) + (seq == gseq) + \
            (glen == at - group_start)
        return score >= 3

    def _deletable(self, purged_index: int) -> list:
        """The oldest segments (never the last one) holding only purged entries."""
        out = []
        for seg in self._segments[:-1]:
            if seg.max_index > purged_index:
                break
            out.append(seg)
        return out

    # ---------------------------------------------------------------- reads

    async def read_vote(self) -> Optional[Vote]:
        self._check_open()
        return self._vote

    async def read_identity(self) -> Optional[StoreIdentity]:
        self._check_open()
        return self._identity

    async def save_cluster_id(self, cluster_id: str) -> None:
        self._check_writable()
        identity = StoreIdentity(cluster_id, self._identity.incarnation)
        async with self._vote_lock:     # one directory fd user at a time, as close() expects
            self._check_writable()
            try:
                await self._off_loop(self._replace_identity, self._identity_record(identity))
            except OSError as exc:
                raise StorageError(f"FileLogStore {self.path}: saving the cluster id failed: "
                                   f"{exc}") from exc
            self._identity = identity

    async def get_log_state(self) -> LogState:
        self._check_open()
        return LogState(self._index.purged, self._index.last_log_id)

    async def read_entries(self, first: int, last: int) -> list[Entry]:
        return self.entries(first, last)

    def entries(self, first: int, last: int) -> list[Entry]:
        """Entries first..last inclusive, synchronously (from memory)."""
        self._check_open()
        ix = self._index
        if last < first:
            return []
        if first < ix.first or last >= ix.next_index:
            raise StorageError(
                f"FileLogStore holds entries {ix.first}..{ix.next_index - 1}; "
                f"{first}..{last} was asked for")
        return ix.entries[first - ix.first:last - ix.first + 1]

    async def read_committed(self) -> Optional[LogId]:
        self._check_open()
        return self._committed

    # --------------------------------------------------------------- writes

    def append(self, entries: Sequence[Entry], on_flushed: FlushCallback) -> None:
        self._check_open()
        if self._failed is not None:
            on_flushed(self._failed)
            return
        ix = self._index
        if entries:
            if type(entries) is not list:
                entries = list(entries)
            expected = ix.next_index
            if entries[0].index != expected or entries[-1].index != expected + len(entries) - 1:
                raise StorageError(
                    f"FileLogStore.append: the batch holds indexes {entries[0].index}.."
                    f"{entries[-1].index}, the log expects {expected}..."
                    f"{expected + len(entries) - 1}; appends must be contiguous")
            try:
                payload = self._packer.pack(encode_entries(entries))
            except Exception as exc:
                self._packer.reset()
                raise StorageError(
                    f"FileLogStore.append: cannot encode the entries with msgpack ({exc}); "
                    "payloads must be msgpack-able values") from exc
            self._buf.append(frame_head(R_ENTRIES, payload))
            self._buf.append(payload)
            ix.entries.extend(entries)
            self._buf_max_index = entries[-1].index
        self._buf_callbacks.append(on_flushed)
        self._kick()

    def truncate_after(self, index: int) -> None:
        self._check_writable()
        ix = self._index
        if index >= ix.next_index - 1:
            return
        self._buf.append(frame(R_TRUNCATE, self._packer.pack(index)))
        ix.truncate_after(index)
        self._kick()

    def purge(self, upto: LogId) -> None:
        self._check_writable()
        ix = self._index
        if upto.index <= ix.purged_index:
            return
        self._buf.append(frame(R_PURGE, self._packer.pack(encode_log_id(upto))))
        ix.purge(upto)
        self._kick()

    async def save_committed(self, committed: Optional[LogId]) -> None:
        """Records the commit point; returns once it is durable. Not for the
        per-commit path: it costs a write and an fsync."""
        self._check_writable()
        fut = asyncio.get_running_loop().create_future()
        self._buf.append(frame(R_COMMITTED, self._packer.pack(encode_log_id(committed))))
        self._committed = committed
        self._buf_callbacks.append(
            lambda err: fut.done() or (fut.set_exception(err) if err else fut.set_result(None)))
        self._kick()
        await fut

    async def save_vote(self, vote: Vote) -> None:
        self._check_writable()
        data = frame(R_VOTE, msgpack.packb([FORMAT_VERSION, encode_vote(vote)],
                                           use_bin_type=True))
        async with self._vote_lock:
            self._check_writable()
            try:
                await self._off_loop(self._replace_vote, data)
            except OSError as exc:
                if is_space_error(exc):
                    raise NoSpace(f"FileLogStore {self.path}: the disk is full, the vote "
                                  f"cannot be saved ({exc.strerror}); the saved vote is "
                                  "unchanged; free space on the disk") from exc
                raise StorageError(f"FileLogStore {self.path}: saving the vote failed: "
                                   f"{exc}") from exc
            self._vote = vote

    def _replace_vote(self, data: bytes) -> None:
        ops = self._ops
        tmp = self._p(VOTE_TMP)
        try:
            ops.write_file(tmp, data)
        except OSError:
            self._remove_quietly(tmp)      # gives back its space; open() would remove it
            raise
        ops.rename(tmp, self._p(VOTE_FILE))
        ops.fsync(self._dir_fd)

    # -------------------------------------------------------------- flusher

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

    def _group_syncer(self, loop: asyncio.AbstractEventLoop) -> _GroupSyncer:
        """The compiled thread, reporting to `loop` (a new one if the store
        moved to another event loop: nothing would read the old one's fd)."""
        syncer = self._syncer
        if syncer is not None and syncer.loop is not loop:
            self._syncer = None
            syncer.stop(join=True)      # idle: no group is in flight
            syncer = None
        if syncer is None:
            syncer = self._syncer = _GroupSyncer(self, loop)
        return syncer

    def _flush_thread(self) -> _FlushThread:
        if self._thread is None:
            self._thread = _FlushThread(f"raftcore-flush {self.path}")
        return self._thread

    def _off_loop(self, fn: Callable, *args: Any) -> Awaitable:
        """Runs blocking fn(*args) on the store's thread, or in the executor."""
        if not self._own_thread:
            return self._executor(fn, *args)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._flush_thread().submit(loop, fn, args, functools.partial(_settle, fut))
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

    def _submit(self, group: _Group) -> None:
        """Starts writing the group in flight (event loop thread)."""
        args = (self._fd, group.data, group.segment, group.offset, group.roll,
                [s.path for s in group.delete])
        loop = asyncio.get_running_loop()
        seg = group.segment
        try:
            if self._fast_sync and not group.roll and not group.delete and \
                    group.offset + len(group.data) <= seg.allocated:
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

    def set_space_listener(self, listener: Optional[Callable[[Optional[BaseException]],
                                                             None]]) -> None:
        self._space_listener = listener

    @property
    def no_space(self) -> Optional[NoSpace]:
        """The NoSpace error while writes are held for lack of disk space, else None."""
        return self._no_space

    def _idle(self) -> bool:
        """No write under way (a group held for space waits on a timer only)."""
        return not self._start_scheduled and (self._in_flight is None or
                                              self._space_retry is not None)

    def _maybe_idle(self) -> None:
        if self._idle_waiters and self._idle():
            waiters, self._idle_waiters = self._idle_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _take_group(self) -> _Group:
        """Takes the buffered records as one group (event loop thread)."""
        group = _Group()
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
            active = _Segment(seq, self._p(_seg_name(seq)))
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
        parts.append(frame(R_MARKER, _MARKER.pack(active.groups, glen)))
        group.data = b"".join(parts)
        active.size += len(group.data)
        if self._buf_max_index > active.max_index:
            active.max_index = self._buf_max_index
        self._buf_max_index = 0
        ix = self._index
        self._taken = (ix.next_index, ix.purged, self._committed)
        group.delete = self._deletable(ix.purged_index)
        return group

    def _write_group(self, fd: Optional[int], data: bytes, seg: _Segment, offset: int,
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
                self._remove_quietly(seg.path)
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

    def _allocate(self, fd: int, seg: _Segment, end: int) -> None:
        """Grows the segment file ahead of its data (flush thread): at least
        to `end`, by PREALLOCATE at a time, to no more than segment_size
        unless `end` is past it."""
        if end <= seg.allocated:
            return
        target = max(end, min(end + PREALLOCATE, self.segment_size))
        try:
            self._ops.allocate(fd, seg.allocated, target - seg.allocated)
        except OSError as exc:
            if not is_space_error(exc) or target == end:
                raise
            target = end     # little space left: only what this group needs
            self._ops.allocate(fd, seg.allocated, target - seg.allocated)
        seg.allocated = target

    def _remove_quietly(self, path: str) -> None:
        try:
            self._ops.unlink(path)
        except OSError:
            pass

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

    def _fail(self, err: StorageError, group: Optional[_Group],
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

    # ------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        """Flushes what is buffered (its on_flushed callbacks fire), then
        stops the flush thread and releases the directory and its file handles."""
        if self._closed:
            return
        while True:
            while not self._idle():
                fut = asyncio.get_running_loop().create_future()
                self._idle_waiters.append(fut)
                await fut
            async with self._vote_lock:     # a vote save in flight uses the directory fd
                if self._closed:
                    return
                if not self._idle():
                    continue    # written to while the vote save ended: flush that too
                self._closed = True
                self._drop_held_writes()
                self._stop_thread()
                self._release()
                return

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

    def _release(self) -> None:
        for attr in ("_fd", "_dir_fd", "_lock_fd"):
            fd = getattr(self, attr, None)
            if fd is not None:
                setattr(self, attr, None)
                try:
                    self._ops.close(fd)
                except OSError:
                    log.warning("FileLogStore %s: closing a file failed", self.path,
                                exc_info=True)

    def __del__(self) -> None:
        # A store dropped without close(): release the lock and handles.
        if getattr(self, "_closed", True) is False:
            self._closed = True
            thread = getattr(self, "_thread", None)
            if thread is not None:
                thread.stop()       # no join: this may run on that thread
            syncer = getattr(self, "_syncer", None)
            if syncer is not None:
                syncer.stop(join=False)
                if syncer.busy:
                    # Its thread may still write to the segment: the fd is
                    # left open (closed, its number could be reused by another
                    # file, which would take the write).
                    self._fd = None
            self._release()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"FileLogStore {self.path} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._failed is not None:
            raise StorageError(f"FileLogStore {self.path} failed earlier and takes no more "
                               f"writes: {self._failed}") from self._failed
