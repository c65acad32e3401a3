"""FileLogStore: a durable, segmented, append-only Raft log and vote in a directory.

This module is the store's facade: the LogStore methods, opening (the FORMAT,
vote and identity files) and closing. The write-ahead log behind it lives in
raftcore.storage.wal, one concern per module:

- records: the directory layout, record framing and format version;
- oslayer: every file system call (FileOps), atomic file replacement;
- index: the in-memory log (LogIndex) and the segment files (Segment);
- recovery: reading the segments back on open (torn tails, corruption);
- writer: group commit (GroupCommit, a base class of FileLogStore) and why
  a group takes one of three write paths;
- threads: the flush thread and the GIL-free sync thread it writes on;
- iopath: which OS calls are used where Linux's are missing (or
  RAFTCORE_PORTABLE_IO=1 forces the fallbacks).

The names tests and tools import from here (FileOps, frame, the record
types, FORMAT_VERSION, PREALLOCATE) stay importable from this module.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
from typing import Any, Awaitable, Callable, Optional, Sequence

import msgpack

from raftcore.codec import decode_vote, encode_entries, encode_log_id, encode_vote
from raftcore.errors import NoSpace, StorageError, is_space_error
from raftcore.storage.base import (FlushCallback, LogState, LogStore, StoreIdentity,
                                   new_identity_token)
from raftcore.storage.wal.index import LogIndex, Segment, deletable
from raftcore.storage.wal.iopath import IOPath
from raftcore.storage.wal.oslayer import FileOps
from raftcore.storage.wal.records import (FORMAT_FILE, FORMAT_NAME, FORMAT_VERSION,
                                          IDENTITY_FILE, IDENTITY_TMP, LOCK_FILE,
                                          R_COMMITTED, R_ENTRIES, R_IDENTITY, R_PURGE,
                                          R_TRUNCATE, R_VOTE,
                                          READABLE_VERSIONS, SEG_RE, VOTE_FILE, VOTE_TMP,
                                          frame, frame_head, read_frame, unpack)
from raftcore.storage.wal.recovery import Recovery
from raftcore.storage.wal.threads import default_executor
from raftcore.storage.wal.writer import GroupCommit
from raftcore.types import Entry, LogId, Vote

# Tests and tools import these from here.
from raftcore.storage.wal.records import R_HEADER, R_MARKER  # noqa: F401,E402
from raftcore.storage.wal.writer import PREALLOCATE  # noqa: F401,E402

__all__ = ["FileLogStore", "FileOps", "FORMAT_VERSION"]

log = logging.getLogger("raftcore.storage.file")

DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024


class FileLogStore(GroupCommit, LogStore):
    """A durable Raft log and vote in directory `path` (created if missing).

    - segment_size: a segment is closed and a new one started once it holds
      this many bytes (at a group boundary, so a segment may exceed it by one
      group).
    - executor: None (default) runs the blocking writes and fsyncs (log
      groups, vote saves) on a thread of the store's own, started by the
      first write and joined by close(). Given, executor(fn, *args) ->
      awaitable runs them instead and the store starts no thread; a
      simulation passes one that runs fn inline.
    - ops: the file system layer (FileOps), for failure-injection tests;
      FileOps(io=PORTABLE) selects the portable I/O calls (see io_path).

    Opening recovers the log (see raftcore.storage.wal.recovery) and raises
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
        self._ops = ops or FileOps()
        self._closed = False
        self._failed: Optional[StorageError] = None
        self._dir_fd: Optional[int] = None
        self._lock_fd: Optional[int] = None
        self._fd: Optional[int] = None           # the active (last) segment, for appends
        self._segments: list[Segment] = []
        self._vote: Optional[Vote] = None
        self._identity: Optional[StoreIdentity] = None
        self._committed: Optional[LogId] = None
        self._index = LogIndex(1, None)
        self._init_group_commit(executor, ops)
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
        executor = kw.get("executor") or default_executor
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
        segs = sorted((int(m.group(1)), n) for n in names if (m := SEG_RE.match(n)))
        self._check_format(names, bool(segs))
        self._load_vote(names)
        self._load_identity(names)
        recovery = Recovery(ops, self.path, self._dir_fd)
        recovery.run(segs)
        self._segments, self._index, self._committed = \
            recovery.segments, recovery.index, recovery.committed
        ix = self._index
        self._taken = (ix.next_index, ix.purged, self._committed)
        if self._segments:
            self._fd = ops.open_segment(self._segments[-1].path, create=False)
        doomed = deletable(self._segments, ix.purged_index)
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
        self._ops.replace_file(path, f"{FORMAT_NAME} version {FORMAT_VERSION}\n".encode(),
                               self._dir_fd)

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
            version, v = unpack(body)
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
            version, cluster_id, incarnation = unpack(body)
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
        self._ops.replace_file(self._p(IDENTITY_FILE), data, self._dir_fd)

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
        self._ops.replace_file(self._p(VOTE_FILE), data, self._dir_fd)

    def set_space_listener(self, listener: Optional[Callable[[Optional[BaseException]],
                                                             None]]) -> None:
        """listener(NoSpace) when the disk fills and writes are held,
        listener(None) once they went through again."""
        self._space_listener = listener

    @property
    def io_path(self) -> IOPath:
        """The OS calls this store syncs, preallocates and wakes its event
        loop with (the platform's best, or the portable fallbacks that
        RAFTCORE_PORTABLE_IO=1 or FileOps(io=PORTABLE) select; see
        raftcore.storage.wal.iopath)."""
        return self._ops.io

    @property
    def no_space(self) -> Optional[NoSpace]:
        """The NoSpace error while writes are held for lack of disk space, else None."""
        return self._no_space

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
