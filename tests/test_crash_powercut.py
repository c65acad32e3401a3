"""Power cuts under FileLogStore: only what was fsynced survives.

kill -9 cannot catch a missing fsync (the page cache outlives the process),
so FileLogStore goes through a file-operations layer (`ops=`) and these tests
give it `PowerCutFS`: an in-memory file system that knows, for every file,
which bytes were fsynced, and for the directory, which entries (creations,
renames, unlinks) were made durable by fsyncing it. "Cutting the power" stops
every later call and builds the file system a reboot would find:

- every file as of its last fsync (or fdatasync), plus -- depending on the
  mode -- a random prefix of the writes made after it, in order (the last
  one possibly in part: at any byte where it makes the file longer, at a
  sector boundary where it writes over bytes the file has; allocating space
  is a write of zeros), possibly followed by zeros (a size update that
  reached the disk before the data);
- the directory as of its last fsync, plus a random prefix of the entry
  changes made after it (journaling file systems keep metadata in order).

A seeded random stream (random.Random(seed)) of appends (some empty, used as
flush barriers), truncations, purges (some past the end), vote saves and
committed saves runs against a store with small segments, yields to the
event loop at random so that group commit forms groups of varying size, and
the power is cut at a random file operation -- including during the recovery
of an earlier cut. After every cut the store is reopened from what survived
and checked:

- the log (purged id, entries, committed id) equals the log after some prefix
  of the operations, and that prefix includes every operation up to the last
  append whose on_flushed(None) was called: no entry reported flushed is
  lost, no truncation or purge followed by a flushed append is undone, and no
  entry appears that was not appended at that index (or was truncated away
  for good);
- the vote is the one whose save_vote returned last, or one saved after it
  (a save in progress may or may not have landed).

Then the stream goes on from the recovered store, for several cuts per seed.
A failure message names the seed and mode: `run_seed(seed, mode)` replays it
exactly (the executor runs the store's blocking calls on the loop, in order).
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import errno
import logging
import os
import random
from dataclasses import dataclass, field
from typing import Optional

import pytest

from async_runner import run_guarded
from raftcore.errors import StorageError
from raftcore.storage import FileLogStore
from raftcore.storage.file import FileOps
from raftcore.storage.wal.iopath import NATIVE, PORTABLE, IOPath
from raftcore.types import ENTRY_NORMAL, Entry, LogId, Vote

ROOT = "/powercut"              # never touches the real disk: PowerCutFS is in memory
STORE = ROOT + "/store"
GUARD = 20.0
SECTOR = 512        # a torn write's zero-filled part starts at a sector boundary


class PowerCut(Exception):
    """Raised by every file operation once the power is off."""


# --------------------------------------------------------------- the disk

class Inode:
    __slots__ = ("data", "synced", "pending")

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)     # what a read sees now (page cache)
        self.synced = bytes(data)       # what the disk holds (as of the last fsync)
        self.pending: list = []         # (offset, bytes) written since, in order;
        #                                 (None, size) for a truncation

    def write(self, offset: int, data: bytes) -> None:
        _put(self.data, offset, data)
        self.pending.append((offset, bytes(data)))

    def truncate(self, size: int) -> None:
        """Sets the size (ftruncate): cuts the file, or grows it with zeros."""
        _resize(self.data, size)
        self.pending.append((None, size))

    def sync(self) -> None:
        self.synced = bytes(self.data)
        self.pending = []

    def survivor(self, rng: random.Random, mode: str) -> bytes:
        """What the disk may hold after a power cut."""
        data = bytearray(self.synced)
        if mode == "strict" or not self.pending:
            return bytes(data)
        keep = rng.randint(0, sum(len(b) for o, b in self.pending if o is not None))
        for offset, b in self.pending:
            if offset is None:              # a size change, in order with the writes
                if rng.random() < 0.5:
                    break
                _resize(data, b)
                continue
            if keep >= len(b):
                _put(data, offset, b)
                keep -= len(b)
                continue
            end = offset + len(b)
            if end <= len(data):
                # Over bytes the file has (its allocated space): the disk
                # writes whole sectors, so what reached it ends at one.
                cuts = [0] + [x - offset for x in range(-(-offset // SECTOR) * SECTOR, end,
                                                        SECTOR)]
                _put(data, offset, b[:rng.choice(cuts)])
            elif mode == "zeros" and rng.random() < 0.5:
                # The new size reached the disk, the data only up to a
                # sector boundary (or not at all): zeros from there on.
                cuts = [0] + [x - offset for x in range(-(-offset // SECTOR) * SECTOR, end,
                                                        SECTOR)]
                _put(data, offset, b[:rng.choice(cuts)])
                size = rng.randint(len(data), end)
                data.extend(bytes(size - len(data)))
            else:
                _put(data, offset, b[:keep])
            break
        return bytes(data)


def _resize(buf: bytearray, size: int) -> None:
    if size < len(buf):
        del buf[size:]
    else:
        buf.extend(bytes(size - len(buf)))


def _put(buf: bytearray, offset: int, data: bytes) -> None:
    if offset > len(buf):
        buf.extend(bytes(offset - len(buf)))
    buf[offset:offset + len(data)] = data


class PowerCutFS(FileOps):
    """An in-memory directory (STORE) behind FileOps, tracking durability.

    Files are inodes; the directory maps names to inodes. `fsync(fd)` of a
    file makes its current bytes durable; `fsync` of the directory's fd makes
    its current entries durable. Directory changes since the last directory
    fsync are kept in order, so a power cut can keep a prefix of them.

    `cut_at`: the power goes off just before the cut_at-th mutating step
    (create, write, fsync, rename, unlink, truncate; write_file is three
    steps), or never if None. After that every call raises PowerCut, except
    close() (the store's clean-up must not mask the cut).

    It models FileOps' primitives (zero_fill, fallocate, extend, fdatasync,
    fsync), so
    the store's IOPath (self.io) picks among them as it does on a real disk;
    `calls` counts each one's calls, to show which path was taken.
    """

    def __init__(self, files: Optional[dict] = None, cut_at: Optional[int] = None) -> None:
        files = files or {}
        self.names: dict[str, Inode] = {n: Inode(d) for n, d in files.items()}
        self.synced_names: dict[str, Inode] = dict(self.names)
        self.dir_log: list[tuple] = []          # entry changes since the last dir fsync
        self.fds: dict[int, Optional[Inode]] = {}   # None: the directory
        self.next_fd = 100
        self.steps = 0
        self.cut_at = cut_at
        self.dead = False
        self.calls: collections.Counter = collections.Counter()

    # -- power

    def _step(self) -> None:
        if self.dead:
            raise PowerCut("the power is off")
        self.steps += 1
        if self.cut_at is not None and self.steps >= self.cut_at:
            self.dead = True
            raise PowerCut(f"power cut at file operation {self.steps}")

    def _alive(self) -> None:
        if self.dead:
            raise PowerCut("the power is off")

    def cut(self) -> None:
        self.dead = True

    def survivors(self, rng: random.Random, mode: str) -> dict[str, bytes]:
        """The files a reboot finds: {name: bytes}."""
        names = dict(self.synced_names)
        if mode != "strict":
            if mode == "unordered":     # any subset, in any order (see MODES)
                changes = [op for op in self.dir_log if rng.random() < 0.5]
            else:                       # a prefix: metadata journaled in order
                changes = self.dir_log[:rng.randint(0, len(self.dir_log))]
            for op in changes:
                if op[0] == "link":
                    names[op[1]] = op[2]
                elif op[0] == "unlink":
                    names.pop(op[1], None)
                else:                                   # rename
                    names.pop(op[1], None)
                    names[op[2]] = op[3]
        return {name: ino.survivor(rng, mode) for name, ino in names.items()}

    # -- paths

    @staticmethod
    def _name(path: str) -> str:
        d, name = os.path.split(path)
        assert d == STORE, f"FileLogStore touched {path} outside its directory"
        return name

    def _lookup(self, path: str) -> Inode:
        ino = self.names.get(self._name(path))
        if ino is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return ino

    def _link(self, name: str, ino: Inode) -> None:
        self.names[name] = ino
        self.dir_log.append(("link", name, ino))

    def _new_fd(self, ino: Optional[Inode]) -> int:
        self.next_fd += 1
        self.fds[self.next_fd] = ino
        return self.next_fd

    # -- FileOps

    def makedirs(self, path: str) -> None:
        assert path == STORE, path
        self._alive()               # the directory exists (durably) from the start

    def listdir(self, path: str) -> list[str]:
        self._alive()
        assert path == STORE
        return list(self.names)

    def exists(self, path: str) -> bool:
        self._alive()
        return path in (STORE, ROOT) or self._name(path) in self.names

    def open_dir(self, path: str) -> int:
        self._alive()
        assert path == STORE
        return self._new_fd(None)

    def open_lock(self, path: str) -> int:
        name = self._name(path)
        if name not in self.names:
            self._step()
            self._link(name, Inode())
        self._alive()
        return self._new_fd(self.names[name])

    def open_segment(self, path: str, create: bool) -> int:
        name = self._name(path)
        if create:
            self._step()
            if name in self.names:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
            self._link(name, Inode())
        self._alive()
        return self._new_fd(self._lookup(path))

    def write(self, fd: int, data: bytes) -> None:
        self._step()
        ino = self.fds[fd]
        ino.write(len(ino.data), data)

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        self._step()
        self.fds[fd].write(offset, data)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        # Blocks reserved and zeroed: a write of zeros, as far as a cut goes.
        self.calls["fallocate"] += 1
        self._step()
        ino = self.fds[fd]
        if offset + length > len(ino.data):
            ino.write(len(ino.data), bytes(offset + length - len(ino.data)))

    def zero_fill(self, fd: int, offset: int, length: int) -> None:
        # FileOps' own: writes of zeros (pwrite, above), a step each.
        self.calls["zero_fill"] += 1
        super().zero_fill(fd, offset, length)

    def free_space(self, fd: int) -> int:
        return 1 << 40          # the model's disk never fills

    def shrink(self, fd: int, size: int) -> None:
        # ftruncate cutting the file (after a failed zero-fill): a size change.
        self._step()
        self.fds[fd].truncate(size)

    def extend(self, fd: int, size: int) -> None:
        # ftruncate growing the file: a size change.
        self.calls["extend"] += 1
        self._step()
        ino = self.fds[fd]
        if size > len(ino.data):
            ino.truncate(size)

    def fsync(self, fd: int) -> None:
        self.calls["fsync"] += 1
        self._step()
        ino = self.fds[fd]
        if ino is None:
            self.synced_names = dict(self.names)
            self.dir_log = []
        else:
            ino.sync()

    def fdatasync(self, fd: int) -> None:
        # Through fsync, so that a disk whose fsync is broken breaks this too
        # (calls["fsync"] counts both).
        self.calls["fdatasync"] += 1
        self.fsync(fd)

    def close(self, fd: int) -> None:
        self.fds.pop(fd, None)

    def read_file(self, path: str) -> bytes:
        self._alive()
        return bytes(self._lookup(path).data)

    def write_file(self, path: str, data: bytes) -> None:
        name = self._name(path)
        self._step()                                    # open(O_CREAT | O_TRUNC)
        ino = self.names.get(name)
        if ino is None:
            ino = Inode()
            self._link(name, ino)
        else:
            ino.truncate(0)
        self._step()                                    # write
        ino.write(0, data)
        self._step()                                    # fsync
        ino.sync()

    def truncate(self, path: str, size: int) -> None:
        ino = self._lookup(path)
        self._step()                                    # ftruncate
        ino.truncate(size)
        self._step()                                    # fsync
        ino.sync()

    def rename(self, src: str, dst: str) -> None:
        self._step()
        s, d = self._name(src), self._name(dst)
        ino = self._lookup(src)
        del self.names[s]
        self.names[d] = ino
        self.dir_log.append(("rename", s, d, ino))

    def unlink(self, path: str) -> None:
        self._step()
        self._lookup(path)
        name = self._name(path)
        del self.names[name]
        self.dir_log.append(("unlink", name))


def inline_executor(fn, *args):
    """Runs the store's blocking calls on the loop, one loop iteration later
    (as a thread would, but in a fixed order): appends made meanwhile join
    the next group."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def run():
        if fut.cancelled():
            return
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:        # PowerCut included: the store reports it
            fut.set_exception(exc)
    loop.call_soon(run)
    return fut


# ------------------------------------------------------------- the model

@dataclass(frozen=True)
class LogModel:
    """The log as the store should present it: purged id, entries after it
    (term, index, payload), committed id."""
    purged: Optional[tuple] = None
    entries: tuple = ()
    committed: Optional[tuple] = None

    @property
    def first(self) -> int:
        return (self.purged[1] if self.purged else 0) + 1

    @property
    def next_index(self) -> int:
        return self.first + len(self.entries)

    def last(self) -> Optional[tuple]:
        if self.entries:
            return self.entries[-1][:2]
        return self.purged

    def term_at(self, index: int) -> int:
        return self.entries[index - self.first][0]

    def append(self, batch: list) -> "LogModel":
        return LogModel(self.purged, self.entries + tuple(batch), self.committed)

    def truncate_after(self, index: int) -> "LogModel":
        return LogModel(self.purged, self.entries[:index - self.first + 1], self.committed)

    def purge(self, upto: tuple) -> "LogModel":
        drop = upto[1] - self.first + 1
        return LogModel(upto, self.entries[drop:], self.committed)

    def commit(self, log_id: tuple) -> "LogModel":
        return LogModel(self.purged, self.entries, log_id)


def lid(log_id: Optional[LogId]) -> Optional[tuple]:
    return None if log_id is None else (log_id.term, log_id.index)


async def observe(store: FileLogStore) -> LogModel:
    st = await store.get_log_state()
    purged, last = lid(st.last_purged_log_id), lid(st.last_log_id)
    first = (purged[1] if purged else 0) + 1
    last_index = last[1] if last else 0
    entries = tuple((e.term, e.index, e.payload)
                    for e in await store.read_entries(first, last_index))
    return LogModel(purged, entries, lid(await store.read_committed()))


@dataclass
class Epoch:
    """What one run of the stream between two cuts did."""
    states: list = field(default_factory=list)      # LogModel after each WAL operation
    frontier: int = 0                               # states[frontier] is known durable
    votes: list = field(default_factory=list)       # votes whose save started, in order
    vote_returned: int = -1                         # index in votes of the last returned


# ------------------------------------------------------------- the stream

class Stream:
    def __init__(self, seed: int, mode: str, io: IOPath = NATIVE) -> None:
        self.seed = seed
        self.mode = mode
        self.io = io                            # the store's OS calls (see iopath)
        self.calls: collections.Counter = collections.Counter()   # of every PowerCutFS
        self.rng = random.Random(seed)
        self.segment_size = self.rng.choice([200, 400, 1000, 4000])
        self.term = 1
        self.vote: Optional[Vote] = None        # the last vote known durable (or None)
        self.vote_term = 0
        self.n = 0                              # payload counter: every payload is unique
        self.cuts = 0
        self.flushed_entries = 0                # entries seen reported flushed, all epochs
        self.recoveries = 0
        self.fs_class = PowerCutFS              # a test may swap in a broken disk
        self.executor = inline_executor         # None: the store's own flush thread

    def where(self) -> str:
        thread = ", writes on the store's flush thread" if self.executor is None else ""
        io = ", portable I/O" if self.io.portable else ""
        return f"seed {self.seed}, mode {self.mode!r}{thread}{io}, after {self.cuts} cuts"

    async def run(self, epochs: int) -> None:
        """`epochs` times: drive the stream, cut the power, reopen, check."""
        files: dict = {}
        model = LogModel()
        epoch: Optional[Epoch] = None
        while True:
            store, ops = await self.reopen(files)
            if epoch is not None:
                model = await self.check(store, epoch)
            if self.recoveries == epochs:
                await store.close()
                return
            epoch = Epoch(states=[model])
            await self.drive(store, ops, epoch)
            files = ops.survivors(self.rng, self.mode)
            self.cuts += 1

    async def reopen(self, files: dict):
        """Opens the store on `files`, cutting the power during recovery at
        random (and then recovering from what that left)."""
        while True:
            cut_at = self.rng.randint(1, 12) if self.rng.random() < 0.3 else None
            ops = self.fs_class(files, cut_at=cut_at)
            ops.io, ops.calls = self.io, self.calls
            try:
                store = FileLogStore(STORE, segment_size=self.segment_size,
                                     executor=self.executor, ops=ops)
            except PowerCut:
                files = ops.survivors(self.rng, self.mode)
                self.cuts += 1
                continue
            except StorageError as exc:
                raise AssertionError(f"{self.where()}: the store refuses to open after a "
                                     f"power cut: {exc}") from exc
            return store, ops

    async def drive(self, store: FileLogStore, ops: PowerCutFS, epoch: Epoch) -> None:
        rng = self.rng
        states = epoch.states
        tasks: list[asyncio.Task] = []
        outstanding = [0]
        settled: list[asyncio.Future] = []
        loop = asyncio.get_running_loop()
        ops.cut_at = ops.steps + rng.randint(1, 120)

        def on_flushed(pos: int, n_entries: int):
            outstanding[0] += 1

            def cb(err):
                outstanding[0] -= 1
                if err is None:
                    epoch.frontier = max(epoch.frontier, pos)
                    self.flushed_entries += n_entries
                if outstanding[0] == 0:
                    for f in settled:
                        if not f.done():
                            f.set_result(None)
                    settled.clear()
            return cb

        async def save_vote(k: int, v: Vote):
            await store.save_vote(v)
            epoch.vote_returned = max(epoch.vote_returned, k)

        async def save_committed(pos: int):
            await store.save_committed(LogId(*states[pos].committed))
            epoch.frontier = max(epoch.frontier, pos)

        for _step in range(rng.randint(20, 150)):
            if ops.dead:
                break
            m = states[-1]
            r = rng.random()
            try:
                if r < 0.40:                                    # append a batch
                    k = rng.choice([0, 1, 1, 2, 3, 5])
                    batch = []
                    for i in range(m.next_index, m.next_index + k):
                        self.n += 1
                        batch.append((self.term, i, [f"s{self.seed}-{self.n}",
                                                     rng.randbytes(rng.randint(0, 120))]))
                    if k:
                        states.append(m.append(batch))
                    pos = len(states) - 1
                    store.append([Entry(t, i, ENTRY_NORMAL, p) for t, i, p in batch],
                                 on_flushed(pos, k))
                elif r < 0.48:                                  # truncate (a conflict)
                    if m.entries:
                        at = rng.randint(m.first - 1, m.next_index - 2)
                        store.truncate_after(at)
                        states.append(m.truncate_after(at))
                        self.term += 1                          # a new leader's entries
                elif r < 0.55:                                  # purge
                    if rng.random() < 0.15:                     # past the end (a snapshot)
                        upto = (self.term, m.next_index - 1 + rng.randint(1, 5))
                    elif m.entries:
                        i = rng.randint(m.first, m.next_index - 1)
                        upto = (m.term_at(i), i)
                    else:
                        continue
                    store.purge(LogId(*upto))
                    states.append(m.purge(upto))
                elif r < 0.63:                                  # save a vote
                    self.vote_term += rng.choice([0, 1])
                    v = Vote(self.vote_term, rng.choice([1, 2, 3]), rng.random() < 0.5)
                    epoch.votes.append(v)
                    tasks.append(loop.create_task(save_vote(len(epoch.votes) - 1, v)))
                elif r < 0.67:                                  # save the committed id
                    if m.entries:
                        i = rng.randint(m.first, m.next_index - 1)
                        states.append(m.commit((m.term_at(i), i)))
                        tasks.append(loop.create_task(save_committed(len(states) - 1)))
                        # Its record enters the store's buffer in the task's
                        # first step: let it take its place in the stream now.
                        await asyncio.sleep(0)
                elif r < 0.95:                                  # let the store run
                    for _ in range(rng.randint(1, 4)):
                        await asyncio.sleep(0)
                else:                                           # wait for every flush
                    if outstanding[0]:
                        f = loop.create_future()
                        settled.append(f)
                        await asyncio.wait_for(f, GUARD)
            except StorageError:
                # The store failed (the power is off): it takes no more writes.
                assert ops.dead, f"{self.where()}: StorageError while the power is on"
                break
        ops.cut()
        # Let everything in flight see the cut: close() waits for the flusher
        # and the vote lock; the saves fail.
        await asyncio.wait_for(store.close(), GUARD)
        for t in tasks:
            try:
                await asyncio.wait_for(t, GUARD)
            except (PowerCut, StorageError):
                pass

    async def check(self, store: FileLogStore, epoch: Epoch) -> LogModel:
        """Checks the reopened store against what the last epoch did."""
        got = await observe(store)
        states = epoch.states
        if not any(states[j] == got for j in range(epoch.frontier, len(states))):
            raise AssertionError(self.explain(got, epoch))
        # The vote: the last one whose save returned, or one saved after it.
        vote = await store.read_vote()
        if epoch.vote_returned < 0:
            last, allowed = self.vote, [self.vote] + epoch.votes
        else:
            last, allowed = epoch.votes[epoch.vote_returned], epoch.votes[epoch.vote_returned:]
        assert vote in allowed, (f"{self.where()}: recovered vote {vote}; the last save that "
                                 f"returned: {last}; saves started after it: {allowed[1:]}")
        self.vote = vote
        self.recoveries += 1
        return got

    def explain(self, got: LogModel, epoch: Epoch) -> str:
        durable = epoch.states[epoch.frontier]
        lines = [f"{self.where()}: the recovered log is not the log after any prefix of the "
                 f"operations that includes everything reported flushed (operation "
                 f"{epoch.frontier} of {len(epoch.states) - 1})",
                 f"  recovered: purged {got.purged}, committed {got.committed}, "
                 f"entries {[e[:2] for e in got.entries]}",
                 f"  durable  : purged {durable.purged}, committed {durable.committed}, "
                 f"entries {[e[:2] for e in durable.entries]}"]
        d = {e[1]: e for e in durable.entries}
        for e in got.entries:
            if e[1] in d and d[e[1]] != e:
                lines.append(f"  entry {e[1]} differs: {e[:2]} recovered, {d[e[1]][:2]} flushed")
                break
        missing = [i for i in d if i not in {e[1] for e in got.entries}]
        if missing:
            lines.append(f"  flushed entries missing: {missing[:20]}")
        return "\n".join(lines)


def run_seed(seed: int, mode: str, epochs: int = 4, flush_thread: bool = False,
             io: IOPath = NATIVE) -> Stream:
    """One seeded stream with `epochs` power cuts; raises AssertionError on a
    durability violation. Replays exactly for a given (seed, mode, io),
    unless the store writes on its own flush thread (the default set-up):
    where groups split and cuts land then depends on that thread's timing.
    `io`: the OS calls the store makes (PORTABLE: the fallbacks macOS takes)."""
    stream = Stream(seed, mode, io)
    if flush_thread:
        stream.executor = None
    logger = logging.getLogger("raftcore.storage.file")
    level = logger.level
    logger.setLevel(logging.CRITICAL)       # the store logs every cut it sees
    try:
        run_guarded(stream.run(epochs), 120)
    finally:
        logger.setLevel(level)
    return stream


# ------------------------------------------------------------------- tests

#: strict: only fsynced bytes and entries survive; torn: plus a prefix of the
#: unsynced bytes of each file and of the unsynced directory changes; zeros:
#: like torn, or a file's new size survives with its data only up to a sector
#: boundary and zeros after it; unordered: any subset of the unsynced
#: directory changes, as a file system without ordered metadata could keep.
#: (Under "unordered", deleting several purged segments under one directory
#: fsync could leave a gap in the segment numbers, as run_seed(177,
#: "unordered") shows; so each deletion is made durable on its own, oldest
#: first.)
MODES = ["strict", "torn", "zeros", "unordered"]
SEEDS_PER_TEST = 25


#: The OS calls the store makes: the platform's best (on Linux, segment space
#: zero-filled), the same with posix_fallocate's reserved blocks, and the
#: fallbacks that RAFTCORE_PORTABLE_IO=1 selects (what macOS runs).
FALLOCATE = dataclasses.replace(NATIVE, allocate="posix_fallocate")
IO_PATHS = [pytest.param(NATIVE, id="native"), pytest.param(FALLOCATE, id="fallocate"),
            pytest.param(PORTABLE, id="portable")]
ALLOCATE_CALLS = {"zero-fill": "zero_fill", "posix_fallocate": "fallocate",
                  "ftruncate": "extend"}


def assert_took(calls: collections.Counter, io: IOPath) -> None:
    """The store made the calls `io` names, and not the others."""
    assert {call for call in ALLOCATE_CALLS.values() if calls[call] > 0} == \
        {ALLOCATE_CALLS[io.allocate]}, calls
    assert (calls["fdatasync"] > 0) == (io.sync_data == "fdatasync"), calls


@pytest.mark.parametrize("io", IO_PATHS)
@pytest.mark.parametrize("chunk", range(4))
@pytest.mark.parametrize("mode", MODES)
def test_power_cuts_keep_everything_flushed(mode, chunk, io):
    """100 seeds per mode, 4 cuts each (plus cuts during recovery)."""
    totals = [0, 0]
    calls: collections.Counter = collections.Counter()
    for seed in range(chunk * SEEDS_PER_TEST, (chunk + 1) * SEEDS_PER_TEST):
        s = run_seed(seed, mode, io=io)
        totals[0] += s.flushed_entries
        totals[1] += s.recoveries
        calls += s.calls
    # The streams did work: entries were reported flushed and then checked.
    assert totals[0] > SEEDS_PER_TEST and totals[1] == SEEDS_PER_TEST * 4, totals
    assert_took(calls, io)


@pytest.mark.parametrize("io", IO_PATHS)
@pytest.mark.parametrize("mode", MODES)
def test_power_cuts_keep_everything_flushed_with_the_flush_thread(mode, io):
    """The store as nodes run it, writing on its own thread: 20 seeds per
    mode, 4 cuts each."""
    totals = [0, 0]
    calls: collections.Counter = collections.Counter()
    for seed in range(1000, 1020):
        s = run_seed(seed, mode, flush_thread=True, io=io)
        totals[0] += s.flushed_entries
        totals[1] += s.recoveries
        calls += s.calls
    assert totals[0] > 20 and totals[1] == 20 * 4, totals
    assert_took(calls, io)


def test_the_disk_model_keeps_a_grown_size_in_order_with_the_writes():
    """PowerCutFS's ftruncate growth (the portable allocate): lost with what
    follows it unless synced; the zeros it adds are overwritten in sectors."""
    fs = PowerCutFS()
    fs.io = PORTABLE
    d = fs.open_dir(STORE)
    fd = fs.open_segment(STORE + "/a", create=True)
    fs.fsync(d)
    fs.allocate(fd, 0, 4 * SECTOR)
    fs.pwrite(fd, b"x" * SECTOR, 0)
    assert fs.calls["extend"] == 1 and fs.calls["fallocate"] == 0
    seen = {fs.survivors(random.Random(i), "torn")["a"] for i in range(50)}
    assert {b"", bytes(4 * SECTOR)} <= seen <= \
        {b"", bytes(4 * SECTOR), b"x" * SECTOR + bytes(3 * SECTOR)}
    fs.sync_data(fd)
    assert fs.calls["fdatasync"] == 0
    assert fs.survivors(random.Random(0), "strict")["a"] == b"x" * SECTOR + bytes(3 * SECTOR)


def test_the_disk_model_loses_what_was_not_fsynced():
    """PowerCutFS itself: unsynced bytes and directory entries are lost in
    strict mode, a prefix survives in the others."""
    fs = PowerCutFS()
    d = fs.open_dir(STORE)
    fd = fs.open_segment(STORE + "/a", create=True)
    fs.write(fd, b"hello")
    fs.fsync(fd)
    assert fs.survivors(random.Random(0), "strict") == {}       # the entry is not durable
    fs.fsync(d)
    fs.write(fd, b" world")
    assert fs.survivors(random.Random(0), "strict") == {"a": b"hello"}
    seen = {fs.survivors(random.Random(i), "torn")["a"] for i in range(50)}
    assert all(b"hello world".startswith(s) and s.startswith(b"hello") for s in seen)
    assert len(seen) > 2
    fs.write(fd, b"!" * 1200)
    for i in range(50):
        got = fs.survivors(random.Random(i), "zeros")["a"]
        data = b"hello world" + b"!" * 1200
        assert len(got) <= len(data)
        if got != data[:len(got)]:          # zeros from a sector boundary or where a write began
            k = len(got.rstrip(b"\0"))
            assert got[:k] == data[:k] and (k % SECTOR == 0 or k in (5, 11)), (i, k)
    fs.fsync(fd)
    # Writes into allocated space reach the disk in whole sectors, in order.
    base = b"hello world" + b"!" * 1200
    fs.allocate(fd, len(base), 4 * SECTOR)
    new = b"?" * (2 * SECTOR)
    fs.pwrite(fd, new, 3 * SECTOR)
    allocated = base + bytes(4 * SECTOR)
    seen = set()
    for i in range(50):
        got = fs.survivors(random.Random(i), "torn")["a"]
        seen.add(got)
        if len(got) < len(allocated):           # the allocation itself in part
            assert got == allocated[:len(got)], i
        else:
            kept = len(got[3 * SECTOR:5 * SECTOR].rstrip(b"\0"))
            assert kept % SECTOR == 0 and got == allocated[:3 * SECTOR] + new[:kept] + \
                allocated[3 * SECTOR + kept:], (i, kept)
    assert len(seen) > 3
    fs.sync_data(fd)
    assert fs.survivors(random.Random(0), "strict")["a"] == \
        allocated[:3 * SECTOR] + new + allocated[5 * SECTOR:]
    fs.write_file(STORE + "/t", b"vote")
    fs.rename(STORE + "/t", STORE + "/v")
    assert "v" not in fs.survivors(random.Random(0), "strict")
    fs.fsync(d)
    assert fs.survivors(random.Random(0), "strict")["v"] == b"vote"
    fs.unlink(STORE + "/v")
    assert "v" in fs.survivors(random.Random(0), "strict")
    fs.cut_at = fs.steps + 1
    with pytest.raises(PowerCut):
        fs.fsync(d)
    with pytest.raises(PowerCut):
        fs.listdir(STORE)


class NoFileFsync(PowerCutFS):
    """A disk whose fsync of a file does nothing (as if the store skipped it)."""

    def fsync(self, fd: int) -> None:
        if self.fds.get(fd) is None:
            return super().fsync(fd)
        self._step()


class NoDirFsync(PowerCutFS):
    """A disk whose fsync of the directory does nothing."""

    def fsync(self, fd: int) -> None:
        if self.fds.get(fd) is not None:
            return super().fsync(fd)
        self._step()


@pytest.mark.parametrize("disk", [NoFileFsync, NoDirFsync])
def test_a_missing_fsync_is_caught(disk):
    """The harness has teeth: with the store's file (or directory) fsyncs
    turned into no-ops, some seed loses an entry reported flushed."""
    caught = None
    for seed in range(20):
        stream = Stream(seed, "strict")
        stream.fs_class = disk
        try:
            run_guarded(stream.run(2), 120)
        except AssertionError as exc:
            caught = str(exc)
            break
    assert caught is not None and "reported flushed" in caught, caught


# ------------------------------------------- zero-filled torn commit marker

def _written(path) -> bytes:
    """A segment's records, without the allocated zeros after them."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + 4 <= len(data) and data[pos:pos + 4] != bytes(4):
        pos += 8 + int.from_bytes(data[pos:pos + 4], "little")
    assert not data[pos:].strip(b"\0")
    return data[:pos]


def _store_ending_at_sector_boundary(path, zeroed: int) -> bytes:
    """Writes a store whose second (newest) group ends `zeroed` bytes past a
    512-byte boundary of its segment; returns that segment's bytes."""
    import msgpack
    from raftcore.codec import encode_entries

    async def write(payload_len: int) -> None:
        store = FileLogStore(path)
        for batch in ([Entry(1, i, ENTRY_NORMAL, ["set", i, b"x" * 30]) for i in (1, 2, 3)],
                      [Entry(1, 4, ENTRY_NORMAL, ["set", 4, b"y" * payload_len])]):
            done = asyncio.get_running_loop().create_future()
            store.append(batch, done.set_result)
            assert await done is None
        await store.close()

    # The newest group: its ENTRIES record (9-byte head + payload) and a 21-byte marker.
    def group_size(n: int) -> int:
        return 9 + len(msgpack.packb(encode_entries(
            [Entry(1, 4, ENTRY_NORMAL, ["set", 4, b"y" * n])]), use_bin_type=True)) + 21
    asyncio.run(write(0))
    seg = os.path.join(path, "seg-000000000001.log")
    first_group_end = len(_written(seg)) - group_size(0)
    n = next(n for n in range(600) if (first_group_end + group_size(n) - zeroed) % SECTOR == 0)
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    asyncio.run(write(n))
    data = _written(seg)
    assert (len(data) - zeroed) % SECTOR == 0
    return data


@pytest.mark.parametrize("allocated", [0, 4096], ids=["file_ends", "allocated_zeros"])
@pytest.mark.parametrize("zeroed", [1, 2, 3, 4, 5, 8, 11, 12, 13, 17, 21])
def test_a_torn_write_zero_filled_from_a_sector_boundary_inside_the_marker_is_cut(
        tmp_path, caplog, zeroed, allocated):
    """A power cut during the newest group's write left the file at its full
    size with the last sector unwritten: zeros from a 512-byte boundary that
    falls inside the group's commit marker. That group was never fsynced, so
    never reported flushed: recovery must cut it as a torn tail (and log it),
    not refuse to start. (Found by the zeros mode above: before the fix in
    Recovery._tail_marker (raftcore.storage.wal.recovery) a zeroed group
    length -- the marker's last field -- left 3 of its 4 fields intact and
    was taken for damage.) The same with the file's allocated zeros after
    the group."""
    data = _store_ending_at_sector_boundary(str(tmp_path), zeroed)
    seg = tmp_path / "seg-000000000001.log"
    torn = data[:-zeroed] + bytes(zeroed)
    seg.write_bytes(torn + bytes(allocated))
    with caplog.at_level(logging.WARNING, logger="raftcore.storage.file"):
        store = FileLogStore(tmp_path)
    try:
        last = asyncio.run(store.get_log_state()).last_log_id
        if torn == data:
            # The bytes that did not reach the disk were zeros anyway (the
            # high bytes of the group length): the group is complete.
            assert last == LogId(1, 4) and "torn tail" not in caplog.text
        else:
            assert last == LogId(1, 3) and "torn tail" in caplog.text
    finally:
        asyncio.run(store.close())


@pytest.mark.parametrize("allocated", [0, 4096], ids=["file_ends", "allocated_zeros"])
@pytest.mark.parametrize("zeroed", [3, 11])
def test_a_zeroed_marker_end_not_at_a_sector_boundary_is_still_damage(tmp_path, zeroed,
                                                                      allocated):
    """The other side: zeros over the same fields of a flushed group's marker,
    but starting one byte after a sector boundary (after a non-zero byte),
    where no torn write starts: damage, and the store refuses to open
    rather than drop the group. (3: the group length's upper bytes; 11:
    the group number's upper bytes and the group length.)"""
    data = _store_ending_at_sector_boundary(str(tmp_path), zeroed + 1)
    damaged = data[:-zeroed] + bytes(zeroed)
    assert damaged != data and data[-zeroed - 1] != 0
    (tmp_path / "seg-000000000001.log").write_bytes(damaged + bytes(allocated))
    with pytest.raises(StorageError, match="commit marker is present"):
        FileLogStore(tmp_path)
