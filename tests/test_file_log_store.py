"""FileLogStore: durability across reopen, torn tails vs corruption, the vote
file, segment rolls and purges, group commit, failure reporting, and a
3-node cluster restarted from its directories.

Every test body is a coroutine run by a plain sync test function. Waiting is
on conditions (flush callbacks, events, raft.wait); timeouts are failure
guards only.
"""
from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import re
import struct
import threading

import msgpack
import pytest

from async_runner import run_guarded
from raftcore import Config, Node, Raft, ServerState
from raftcore.errors import Fatal, ForwardToLeader, OutcomeUnknown, StorageError, Timeout
from raftcore.network import LocalRouter
from raftcore.storage import FileLogStore, MemStateMachine
from raftcore.storage.file import (FORMAT_VERSION, PREALLOCATE, R_ENTRIES, R_HEADER, R_MARKER, R_PURGE,
                                   FileOps, frame)
from raftcore.storage.wal.writer import AHEAD_JOB, AHEAD_RESERVE, AHEAD_STEP
from raftcore.types import ENTRY_NORMAL, Entry, LogId, Vote

GUARD = 20.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def ents(first: int, n: int, term: int = 1) -> list:
    return [Entry(term, i, ENTRY_NORMAL, ["set", f"k{i}", b"v" * (i % 7)])
            for i in range(first, first + n)]


def keys(entries) -> list:
    return [(e.term, e.index, e.kind, e.payload) for e in entries]


async def append(store, *batches) -> None:
    """Appends the batches and waits until every one is reported flushed."""
    done = asyncio.get_running_loop().create_future()
    results = []

    def cb(err):
        results.append(err)
        if len(results) == len(batches) and not done.done():
            done.set_result(None)
    for b in batches:
        store.append(b, cb)
    await asyncio.wait_for(done, GUARD)
    assert results == [None] * len(batches), results


async def inline_executor(fn, *args):
    """An executor that runs the store's blocking calls on the loop, inline."""
    return fn(*args)


def segments(path) -> list:
    return sorted(n for n in os.listdir(path) if n.startswith("seg-"))


def records(path) -> list:
    """(offset, size, type) of every record in a segment file (undamaged);
    the zeros after the last one are allocated space."""
    data = open(path, "rb").read()
    out, pos = [], 0
    while pos < len(data) and data[pos:pos + 4] != b"\0\0\0\0":
        length, _ = struct.unpack_from("<II", data, pos)
        out.append((pos, 8 + length, data[pos + 8]))
        pos += 8 + length
    assert pos <= len(data) and not data[pos:].strip(b"\0")
    return out


def written(path) -> bytes:
    """A segment's records, without the allocated zeros after them."""
    off, size, _ = records(path)[-1]
    return open(path, "rb").read()[:off + size]


def open_and_close(path, **kw):
    store = FileLogStore(path, **kw)
    asyncio.run(store.close())


def flip(path, offset) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


async def three_groups(path, **kw) -> list:
    """A store with three flushed groups (1..3, 4..6, 7..9) in one segment,
    closed. Returns the entries."""
    store = FileLogStore(path, **kw)
    e = ents(1, 9)
    for i in range(3):
        await append(store, e[3 * i:3 * i + 3])
    await store.close()
    return e


# ------------------------------------------------------------------ basics

def test_reopen_after_close_finds_everything(tmp_path):
    async def body():
        store = FileLogStore(tmp_path, segment_size=300)
        await store.save_vote(Vote(4, 2, True))
        await append(store, ents(1, 10))
        for i in range(11, 41, 5):
            await append(store, ents(i, 5, term=2))
        store.truncate_after(35)
        await append(store, ents(36, 3, term=3))
        store.purge(LogId(1, 6))
        await store.save_committed(LogId(2, 30))
        assert len(segments(tmp_path)) > 2
        before = keys(store.entries(7, 38))
        await store.close()

        store = FileLogStore(tmp_path, segment_size=300)
        assert await store.read_vote() == Vote(4, 2, True)
        st = await store.get_log_state()
        assert (st.last_purged_log_id, st.last_log_id) == (LogId(1, 6), LogId(3, 38))
        assert await store.read_committed() == LogId(2, 30)
        assert keys(await store.read_entries(7, 38)) == before
        with pytest.raises(StorageError):
            store.entries(6, 7)
        # And it goes on where it stopped.
        await append(store, ents(39, 2, term=3))
        await store.close()
        store = FileLogStore(tmp_path)
        assert (await store.get_log_state()).last_log_id == LogId(3, 40)
        await store.close()
    run(body())


def test_close_flushes_what_is_buffered(tmp_path):
    async def body():
        store = FileLogStore(tmp_path)
        flushed = []
        store.append(ents(1, 5), flushed.append)
        store.truncate_after(3)
        store.append(ents(4, 1, term=2), flushed.append)
        await store.close()
        assert flushed == [None, None]
        with pytest.raises(StorageError, match="closed"):
            store.append(ents(5, 1), flushed.append)
        store = FileLogStore(tmp_path)
        assert keys(store.entries(1, 4)) == keys(ents(1, 3) + ents(4, 1, term=2))
        await store.close()
    run(body())


def test_directory_is_locked_while_open(tmp_path):
    async def body():
        store = FileLogStore(tmp_path)
        with pytest.raises(StorageError, match="in use"):
            FileLogStore(tmp_path)
        await store.close()
        store = FileLogStore(tmp_path)
        await store.close()
    run(body())


def test_format_version_is_checked(tmp_path):
    run(three_groups(tmp_path))
    (tmp_path / "FORMAT").write_text("raftcore-filelog version 99\n")
    with pytest.raises(StorageError, match="version 99"):
        FileLogStore(tmp_path)
    os.unlink(tmp_path / "FORMAT")
    with pytest.raises(StorageError, match="no FORMAT"):
        FileLogStore(tmp_path)
    (tmp_path / "FORMAT").write_text("raftcore-filelog version 2\n")
    open_and_close(tmp_path)


def test_a_version_1_directory_is_read_and_upgraded(tmp_path):
    """Version 1 wrote segments without allocated space after them; such a
    directory opens with every entry, and its FORMAT says the current version after."""
    async def body():
        e = await three_groups(tmp_path)
        seg = tmp_path / segments(tmp_path)[0]
        data = written(seg)
        # Rewritten as version 1 wrote it: a header of five fields, groups
        # each ended by a marker (group number, group length), no zeros after.
        old, group = b"", b""
        for off, size, rtype in records(seg):
            rec = data[off:off + size]
            if rtype == R_HEADER:
                header = msgpack.unpackb(rec[9:])
                assert header[0] == FORMAT_VERSION and len(header) == 6
                rec = frame(R_HEADER, msgpack.packb([1] + header[1:5]))
            if rtype == R_MARKER:
                gnum = struct.unpack_from("<Q", rec, 9)[0]
                rec = frame(R_MARKER, struct.pack("<QI", gnum, len(group)))
                old, group = old + group + rec, b""
            else:
                group += rec
        seg.write_bytes(old)
        (tmp_path / "FORMAT").write_text("raftcore-filelog version 1\n")
        store = FileLogStore(tmp_path)
        assert (tmp_path / "FORMAT").read_text() == f"raftcore-filelog version {FORMAT_VERSION}\n"
        assert keys(store.entries(1, 9)) == keys(e)
        await append(store, ents(10, 2))
        await store.close()
        store = FileLogStore(tmp_path)
        assert keys(store.entries(1, 11)) == keys(e + ents(10, 2))
        await store.close()
    run(body())


def test_segments_are_allocated_ahead_and_groups_synced_without_metadata(tmp_path):
    """A segment file is longer than its records (allocated zeros), so a
    group is made durable with fdatasync; only a new segment gets fsync."""
    async def body():
        ops = RecordingOps()
        store = FileLogStore(tmp_path, ops=ops)
        ops.calls.clear()
        for i in range(1, 10, 3):
            await append(store, ents(i, 3))
        await store.close()
        seg = tmp_path / segments(tmp_path)[0]
        assert os.path.getsize(seg) >= PREALLOCATE > len(written(seg))
        # The first group (new segment): its space zero-filled, then fsync of
        # the file and its directory.
        assert [c[0] for c in ops.calls] == ["zero_fill", "write", "fsync", "fsync", "write",
                                            "sync_data", "write", "sync_data"], ops.calls
    run(body())


def test_damage_in_the_allocated_space_is_a_torn_tail(tmp_path):
    """Bytes that are not zero after the last group are what a write cut
    short leaves: cut and logged, every flushed entry kept."""
    async def body():
        e = await three_groups(tmp_path)
        seg = tmp_path / segments(tmp_path)[0]
        end = len(written(seg))
        size = os.path.getsize(seg)
        for at in (end, end + 1, end + 4096, size - 1):
            flip(seg, at)
            store = FileLogStore(tmp_path)
            assert keys(store.entries(1, 9)) == keys(e)
            await store.close()
            assert os.path.getsize(seg) == end
            with open(seg, "r+b") as f:       # allocated again for the next round
                f.truncate(size)
    run(body())


def test_open_off_the_event_loop(tmp_path):
    async def body():
        e = await three_groups(tmp_path)
        store = await FileLogStore.open(tmp_path)
        assert keys(store.entries(1, 9)) == keys(e)
        await store.close()
    run(body())


# ----------------------------------------------------- torn tail vs damage

@pytest.mark.parametrize("where", ["mid_record", "before_marker", "mid_marker", "zero_filled",
                                   "header_of_new_segment"])
def test_torn_tail_is_cut_and_logged(tmp_path, caplog, where):
    async def body():
        e = await three_groups(tmp_path)
        seg = tmp_path / segments(tmp_path)[-1]
        recs = records(seg)
        # The last group: its entries record and its marker.
        (ent_off, ent_size, t1), (mark_off, mark_size, t2) = recs[-2:]
        assert (t1, t2) == (R_ENTRIES, R_MARKER)
        size = os.path.getsize(seg)
        keep = e[:6]
        if where == "mid_record":
            os.truncate(seg, ent_off + ent_size // 2)
        elif where == "before_marker":
            os.truncate(seg, mark_off)
        elif where == "mid_marker":
            os.truncate(seg, mark_off + mark_size - 5)
        elif where == "zero_filled":
            # What a power cut can leave: the group's first bytes reached the
            # disk, the rest of it still reads as the allocated zeros.
            with open(seg, "r+b") as f:
                f.seek(ent_off + ent_size // 2)
                f.write(b"\0" * (size - ent_off - ent_size // 2))
        else:
            # A roll whose first group never made it: the new segment is cut
            # to nothing and removed; the old one keeps everything.
            keep = e
            nxt = tmp_path / f"seg-{int(seg.name[4:16]) + 1:012d}.log"
            nxt.write_bytes(open(seg, "rb").read()[:40])
            seg = nxt
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="raftcore.storage.file"):
            store = FileLogStore(tmp_path)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "torn tail" in warnings[0] and seg.name in warnings[0], \
            warnings
        st = await store.get_log_state()
        assert st.last_log_id == keep[-1].log_id
        assert keys(store.entries(1, len(keep))) == keys(keep)
        if where == "header_of_new_segment":
            assert not seg.exists()
        else:
            assert os.path.getsize(seg) == recs[-2][0]      # cut at the group's start
        # The log goes on, and the next open finds nothing to cut.
        more = ents(len(keep) + 1, 2, term=2)
        await append(store, more)
        await store.close()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="raftcore.storage.file"):
            store = FileLogStore(tmp_path)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert keys(store.entries(1, len(keep) + 2)) == keys(keep + more)
        await store.close()
    run(body())


def test_flipped_byte_in_a_committed_batch_names_file_and_offset(tmp_path):
    """Every single-byte flip anywhere in the segment (header, entries,
    markers, the last batch included) refuses the open with a StorageError
    naming the file and the offset of the damaged record; nothing is cut."""
    run(three_groups(tmp_path))
    seg = tmp_path / segments(tmp_path)[0]
    pristine = seg.read_bytes()
    recs = records(seg)
    for pos in range(len(written(seg))):
        seg.write_bytes(pristine)
        flip(seg, pos)
        damaged = seg.read_bytes()
        with pytest.raises(StorageError) as info:
            FileLogStore(tmp_path)
        msg = str(info.value)
        start = max(off for off, _, _ in recs if off <= pos)
        named = re.search(r"offset (\d+)", msg)
        assert seg.name in msg and named and int(named.group(1)) == start, (pos, start, msg)
        assert seg.read_bytes() == damaged, f"flip at {pos}: the open changed the file"
    seg.write_bytes(pristine)
    open_and_close(tmp_path)


def test_damage_in_an_older_segment_is_corruption(tmp_path):
    async def body():
        store = FileLogStore(tmp_path, segment_size=150)
        for i in range(1, 25, 3):
            await append(store, ents(i, 3))
        await store.close()
        segs = segments(tmp_path)
        assert len(segs) >= 3
        first = tmp_path / segs[0]
        # Cutting an older segment's tail is damage, not a torn write:
        # newer segments show it had been written completely.
        data = written(first)
        # Also a cut at a group boundary, which no checksum sees: the next
        # segment's header records how long this one was.
        ends = [off + size for off, size, t in records(first) if t == R_MARKER]
        assert len(ends) >= 2
        for size in (len(data) - 3, 0, ends[-2]):
            first.write_bytes(data[:size])
            with pytest.raises(StorageError, match=re.escape(segs[0])):
                FileLogStore(tmp_path)
            assert first.stat().st_size == size, "the open changed the damaged file"
    run(body())


def test_missing_segments_are_refused(tmp_path):
    async def body():
        store = FileLogStore(tmp_path, segment_size=60)
        for i in range(1, 13, 3):
            await append(store, ents(i, 3))
        await store.close()
        segs = segments(tmp_path)
        middle = tmp_path / segs[1]
        data = middle.read_bytes()
        os.unlink(middle)
        with pytest.raises(StorageError, match="missing"):
            FileLogStore(tmp_path)
        middle.write_bytes(data)
        os.unlink(tmp_path / segs[0])      # never purged: entries 1.. are gone
        with pytest.raises(StorageError, match="missing"):
            FileLogStore(tmp_path)
    run(body())


# -------------------------------------------------------------- the vote

def test_half_written_vote_tmp_is_ignored(tmp_path):
    async def body():
        store = FileLogStore(tmp_path)
        await store.save_vote(Vote(3, 1))
        await store.close()
        good = (tmp_path / "vote").read_bytes()
        newer = frame(7, msgpack.packb([1, [9, 2, True]]))
        for tmp in (newer[:len(newer) // 2], newer, b""):
            # A save that died before its rename: never acknowledged.
            (tmp_path / "vote.tmp").write_bytes(tmp)
            store = FileLogStore(tmp_path)
            assert await store.read_vote() == Vote(3, 1)
            assert not (tmp_path / "vote.tmp").exists()
            await store.close()
        assert (tmp_path / "vote").read_bytes() == good
        flip(tmp_path / "vote", len(good) - 2)
        with pytest.raises(StorageError, match="vote"):
            FileLogStore(tmp_path)
    run(body())


# ----------------------------------------------------- segments and purge

class RecordingOps(FileOps):
    """Records writes, fsyncs and unlinks, in order (thread-safe enough:
    the store runs one job at a time)."""

    def __init__(self):
        self.calls = []

    def pwrite(self, fd, data, offset):
        self.calls.append(("write", fd, bytes(data)))
        super().pwrite(fd, data, offset)

    def zero_fill(self, fd, offset, length):
        # One call, not the writes it makes.
        self.calls.append(("zero_fill", fd, offset, length))
        os.pwrite(fd, bytes(length), offset)

    def fsync(self, fd):
        self.calls.append(("fsync", fd))
        super().fsync(fd)

    def sync_data(self, fd):
        self.calls.append(("sync_data", fd))
        super().sync_data(fd)

    def unlink(self, path):
        self.calls.append(("unlink", os.path.basename(path)))
        super().unlink(path)


def test_segments_roll_and_purge_deletes_whole_segments(tmp_path):
    async def body():
        ops = RecordingOps()
        store = FileLogStore(tmp_path, segment_size=200, ops=ops)
        for i in range(1, 61, 3):
            await append(store, ents(i, 3))
        segs = segments(tmp_path)
        assert len(segs) >= 5
        assert [int(s[4:16]) for s in segs] == list(range(1, len(segs) + 1))
        for s in segs[:-1]:
            assert len(written(tmp_path / s)) >= 200, "rolled before the segment was full"
        # Which entries each segment holds.
        ranges = {}
        for s in segs:
            idx = []
            data = (tmp_path / s).read_bytes()
            for off, size, t in records(tmp_path / s):
                if t == R_ENTRIES:
                    flat = msgpack.unpackb(data[off + 9:off + size])
                    idx += flat[1::4]
            ranges[s] = (min(idx), max(idx)) if idx else None
        stats = {s: os.stat(tmp_path / s) for s in segs}
        upto = ranges[segs[2]][1] + 1          # inside segment 4: segments 1-3 can go
        ops.calls.clear()
        store.purge(LogId(1, upto))
        await append(store, ents(61, 1))       # flushed after the purge's group
        left = segments(tmp_path)
        assert left == segs[3:] + [s for s in segments(tmp_path) if s not in segs]
        for s in segs[3:-1]:
            st = os.stat(tmp_path / s)
            assert (st.st_ino, st.st_size) == (stats[s].st_ino, stats[s].st_size), \
                f"{s} was rewritten"
        # The purge record was written and fsynced before the first unlink.
        purge_rec = frame(R_PURGE, msgpack.packb([1, upto]))
        first_unlink = next(i for i, c in enumerate(ops.calls) if c[0] == "unlink")
        wrote = next(i for i, c in enumerate(ops.calls) if c[0] == "write" and purge_rec in c[2])
        assert any(c[0] in ("fsync", "sync_data") and c[1] == ops.calls[wrote][1]
                   for c in ops.calls[wrote:first_unlink]), ops.calls
        assert sorted(c[1] for c in ops.calls if c[0] == "unlink") == segs[:3]
        await store.close()

        store = FileLogStore(tmp_path, segment_size=200)
        st = await store.get_log_state()
        assert (st.last_purged_log_id, st.last_log_id) == (LogId(1, upto), LogId(1, 61))
        assert keys(store.entries(upto + 1, 61)) == keys(ents(upto + 1, 61 - upto))
        # Purging everything keeps the active segment (it holds the purge).
        store.purge(LogId(1, 61))
        await append(store, ents(62, 1, term=2))
        assert len(segments(tmp_path)) == 1
        await store.close()
        store = FileLogStore(tmp_path)
        st = await store.get_log_state()
        assert (st.last_purged_log_id, st.last_log_id) == (LogId(1, 61), LogId(2, 62))
        await store.close()
    run(body())


def test_purge_past_the_end_then_reopen(tmp_path):
    async def body():
        store = FileLogStore(tmp_path, segment_size=100)
        for i in range(1, 10, 3):
            await append(store, ents(i, 3))
        store.purge(LogId(5, 100))
        await append(store, ents(101, 2, term=5))
        await store.close()
        store = FileLogStore(tmp_path, segment_size=100)
        st = await store.get_log_state()
        assert (st.last_purged_log_id, st.last_log_id) == (LogId(5, 100), LogId(5, 102))
        assert segments(tmp_path) == segments(tmp_path)[-1:]
        await store.close()
    run(body())


@pytest.mark.parametrize("mode", ["same_group", "own_group", "across_roll"])
def test_truncation_then_append_then_reopen(tmp_path, mode):
    async def body():
        size = 150 if mode == "across_roll" else 1 << 20
        store = FileLogStore(tmp_path, segment_size=size)
        await append(store, ents(1, 10))
        if mode == "across_roll":
            await append(store, ents(11, 10))
            assert len(segments(tmp_path)) >= 2
            cut = 4                      # below the second segment's start
        else:
            cut = 6
        store.truncate_after(cut)
        if mode == "own_group":
            await store.save_committed(LogId(1, 2))       # a group of its own
        new = ents(cut + 1, 3, term=2)
        await append(store, new)
        await store.close()
        store = FileLogStore(tmp_path, segment_size=size)
        st = await store.get_log_state()
        assert st.last_log_id == LogId(2, cut + 3)
        assert keys(store.entries(1, cut + 3)) == keys(ents(1, cut) + new)
        await store.close()
    run(body())


# ---------------------------------------------------------- group commit

class GatedExecutor:
    """Counts calls; holds every job until `gate` is set."""

    def __init__(self):
        self.calls = []
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self, fn, *args):
        self.calls.append(fn.__name__)
        self.started.set()
        await self.gate.wait()
        return fn(*args)


def test_group_commit_many_appends_one_fsync(tmp_path):
    async def body():
        ex = GatedExecutor()
        ops = RecordingOps()
        store = FileLogStore(tmp_path, executor=ex, ops=ops)
        ex.gate.set()
        await append(store, ents(1, 1))          # creates the first segment
        ex.gate.clear()
        ex.started.clear()
        ex.calls.clear()
        ops.calls.clear()
        order = []
        store.append(ents(2, 1), lambda err: order.append((2, err)))
        await ex.started.wait()          # that group's write is in flight, held
        assert ex.calls == ["_write_group"]
        for i in range(3, 103):
            store.append(ents(i, 1), lambda err, i=i: order.append((i, err)))
        # Reads do not wait for the flush.
        assert store.entries(102, 102)[0].index == 102
        assert order == []
        ex.gate.set()
        await append(store, ents(103, 1))
        assert order == [(i, None) for i in range(2, 103)]
        # Two groups: the held append, and the 101 made while it was in flight.
        assert ex.calls == ["_write_group"] * 2, ex.calls
        assert [c[0] for c in ops.calls] == ["write", "sync_data"] * 2, \
            [c[:2] for c in ops.calls]
        await store.close()
    run(body())


@pytest.mark.parametrize("mode", ["executor", "thread"])
def test_appends_in_one_loop_iteration_share_one_fsync(tmp_path, mode):
    async def body():
        calls = []

        async def counting(fn, *args):
            calls.append(fn.__name__)
            return fn(*args)
        ops = RecordingOps()
        store = FileLogStore(tmp_path, executor=counting if mode == "executor" else None,
                             ops=ops)
        ops.calls.clear()       # the FORMAT file
        await append(store, *[ents(i, 1) for i in range(1, 51)])
        if mode == "executor":
            assert calls == ["_write_group"]
        # One write into the new segment's zero-filled space, fsynced (and
        # the segment's directory entry with it).
        assert [c[0] for c in ops.calls] == ["zero_fill", "write", "fsync", "fsync"], ops.calls
        await store.close()
    run(body())


# ----------------------------------------------------- the flush thread

def flush_threads(path) -> list:
    return [t for t in threading.enumerate() if t.name == f"raftcore-flush {path}"]


def sync_threads(path) -> list:
    """The compiled thread (SyncWorker) that writes and syncs plain groups."""
    return [t for t in threading.enumerate() if t.name == f"raftcore-sync {path}"]


async def blocking(fn, *args):
    """Waits for a blocking call (a threading.Event's wait) off the loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class GatedOps(RecordingOps):
    """RecordingOps that notes the thread of every write and fsync and, while
    `gate` is clear, holds each fsync (after setting `held`)."""

    def __init__(self):
        super().__init__()
        self.threads = set()
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()

    def pwrite(self, fd, data, offset):
        self.threads.add(threading.current_thread().name)
        super().pwrite(fd, data, offset)

    def write_file(self, path, data):
        self.threads.add(threading.current_thread().name)
        super().write_file(path, data)

    def fsync(self, fd):
        self._hold()
        super().fsync(fd)

    def sync_data(self, fd):
        self._hold()
        super().sync_data(fd)

    def _hold(self):
        self.threads.add(threading.current_thread().name)
        if not self.gate.is_set():
            self.held.set()
            assert self.gate.wait(GUARD), "the test never released the fsync"


def test_the_flush_thread_fsyncs_a_group_while_the_next_one_gathers(tmp_path):
    async def body():
        ops = GatedOps()
        store = FileLogStore(tmp_path, ops=ops)
        ops.threads.clear()                           # opening runs on the loop's thread
        assert flush_threads(store.path) == []       # started by the first write
        await append(store, ents(1, 1))               # creates the first segment
        await store.save_vote(Vote(2, 1))
        ops.calls.clear()
        ops.gate.clear()
        order = []
        store.append(ents(2, 1), lambda err: order.append((2, err)))
        assert await blocking(ops.held.wait, GUARD)   # its fsync is in flight, held
        for i in range(3, 103):
            store.append(ents(i, 1), lambda err, i=i: order.append((i, err)))
        store.append([], lambda err: order.append(("empty", err)))
        assert store.entries(102, 102)[0].index == 102    # readable before the flush
        assert order == []
        ops.gate.set()
        await append(store, ents(103, 1))
        assert order == [(i, None) for i in range(2, 103)] + [("empty", None)]
        # Two groups: the held append, and all that came while it was in flight.
        assert [c[0] for c in ops.calls] == ["write", "sync_data"] * 2, [c[:2] for c in ops.calls]
        # Log writes and the vote save ran on the store's own thread, nowhere else.
        assert ops.threads == {f"raftcore-flush {store.path}"}, ops.threads
        await store.close()
    run(body())


def test_an_empty_append_is_reported_after_the_group_in_flight(tmp_path):
    async def body():
        ops = GatedOps()
        store = FileLogStore(tmp_path, ops=ops)
        await append(store, ents(1, 1))
        ops.gate.clear()
        order = []
        done = asyncio.get_running_loop().create_future()
        store.append(ents(2, 1), lambda err: order.append(2))
        assert await blocking(ops.held.wait, GUARD)
        store.append([], lambda err: (order.append("empty"), done.set_result(None)))
        ops.gate.set()
        await asyncio.wait_for(done, GUARD)
        assert order == [2, "empty"]
        await store.close()
    run(body())


def test_close_ends_the_flush_threads_and_a_store_with_an_executor_starts_none(tmp_path):
    async def body():
        store = FileLogStore(tmp_path)
        await append(store, ents(1, 3))         # a new segment: the Python thread
        assert sync_threads(store.path) == []
        await append(store, ents(4, 3))         # a plain group: the compiled one
        [thread] = flush_threads(store.path)
        [syncer] = sync_threads(store.path)
        await store.close()
        assert not thread.is_alive() and not syncer.is_alive()
        store = FileLogStore(tmp_path, executor=inline_executor)
        await append(store, ents(7, 3))
        await store.save_vote(Vote(1, 1))
        assert flush_threads(store.path) == [] and sync_threads(store.path) == []
        await store.close()
        store = FileLogStore(tmp_path)
        assert keys(store.entries(1, 9)) == keys(ents(1, 9))
        await store.close()
    run(body())


def test_plain_groups_are_written_by_the_compiled_thread_with_the_same_bytes(tmp_path):
    """The compiled path (pwrite + fdatasync in SyncWorker) writes exactly
    what the Python path does: a store with a recording FileOps (every group
    through Python) and a plain one end up with identical segments."""
    async def body():
        for sub, ops in (("py", RecordingOps()), ("c", None)):
            store = FileLogStore(tmp_path / sub, segment_size=300, ops=ops)
            for i in range(1, 40, 3):
                await append(store, ents(i, 3))
            store.truncate_after(30)
            store.purge(LogId(1, 10))
            await append(store, ents(31, 2, term=2))
            if ops is None:
                assert sync_threads(store.path), "no group went to the compiled thread"
            await store.close()
        assert segments(tmp_path / "py") == segments(tmp_path / "c")
        for name in segments(tmp_path / "c"):
            assert written(tmp_path / "py" / name) == written(tmp_path / "c" / name), name
        store = FileLogStore(tmp_path / "c", segment_size=300)
        assert keys(store.entries(11, 32)) == keys(ents(11, 20) + ents(31, 2, term=2))
        await store.close()
    run(body())


def big_ents(first: int, n: int) -> list:
    """Entries of 64 KiB each: a few of them cross a zero-filled step."""
    return [Entry(1, i, ENTRY_NORMAL, b"%d" % i * (65536 // len(b"%d" % i)))
            for i in range(first, first + n)]


class ZeroFills:
    """Wraps FileOps.zero_fill (on the class: a store given plain FileOps
    takes the compiled path only then) to record each call's thread, range
    and descriptor (a job ahead has its own), and to check two invariants
    at each call: the store's active segment has not had `allocated` raised
    over the range before the zeros are written (a group written there
    meanwhile would be zeroed), and the range starts at the file's end (a
    zero-fill that failed was cut back). `fail_call`: the call (counting
    from 1) that raises EIO instead."""

    def __init__(self, monkeypatch, fail_call: int = 0) -> None:
        self.calls: list = []
        self.broken: list = []
        self.store = None
        self.fail_call = fail_call
        #: While clear, a zero-fill past the first waits (held: set meanwhile).
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()
        real = FileOps.zero_fill

        def zero_fill(ops, fd, offset, length):
            seg = self.store._segments[-1] if self.store is not None else None
            if seg is not None and seg.allocated > offset:
                self.broken.append(("allocated raised", offset, seg.allocated))
            if os.fstat(fd).st_size != offset:
                self.broken.append(("not at the end", offset, os.fstat(fd).st_size))
            own_fd = self.store is not None and fd != self.store._fd
            self.calls.append((threading.current_thread().name, offset, length, own_fd))
            if len(self.calls) > 1 and not self.gate.is_set():
                self.held.set()
                self.gate.wait(GUARD)
            if len(self.calls) == self.fail_call:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real(ops, fd, offset, length)
        monkeypatch.setattr(FileOps, "zero_fill", zero_fill)


def test_the_flush_thread_zero_fills_ahead_of_the_plain_groups(tmp_path, monkeypatch):
    """The plain groups go to the compiled thread while the flush thread
    zero-fills the space after them, in steps, each before `allocated` is
    raised over it; every group lands in written zeros and reads back."""
    async def body():
        fills = ZeroFills(monkeypatch)
        store = fills.store = FileLogStore(tmp_path)
        for i in range(1, 121, 2):              # 60 groups of 128 KiB: 7.5 MiB
            await append(store, big_ents(i, 2))
        assert sync_threads(store.path) and store._ahead_refused is None
        await store.close()
        assert fills.broken == []
        # The first group's space, then the rest (7.5 MiB of groups), all
        # contiguous, on the flush thread; jobs ahead (on their own
        # descriptor, AHEAD_STEP at a time) did at least one whole job of it.
        assert fills.calls[0][1] == 0
        assert fills.calls[-1][1] + fills.calls[-1][2] > 7 * 1024 * 1024
        assert {c[0] for c in fills.calls} == {f"raftcore-flush {store.path}"}
        assert all(a[1] + a[2] == b[1] for a, b in zip(fills.calls, fills.calls[1:]))
        ahead = [c for c in fills.calls[1:] if c[3]]     # (the first: a new segment's)
        assert len(ahead) >= AHEAD_JOB // AHEAD_STEP and {c[2] for c in ahead} == {AHEAD_STEP}
        reopened = FileLogStore(tmp_path)
        assert keys(reopened.entries(1, 120)) == keys(big_ents(1, 120))
        await reopened.close()
    run(body())


def test_a_failed_zero_fill_ahead_leaves_the_groups_to_allocate_their_space(
        tmp_path, monkeypatch, caplog):
    """Allocating ahead fails (EIO on its first step): a warning, and the
    groups allocate the space they need themselves; nothing is lost."""
    async def body():
        fills = ZeroFills(monkeypatch, fail_call=2)
        store = fills.store = FileLogStore(tmp_path)
        with caplog.at_level(logging.WARNING, logger="raftcore.storage.file"):
            for i in range(1, 121, 2):
                await append(store, big_ents(i, 2))
        assert store._ahead_refused is store._segments[-1]
        await store.close()
        assert "allocating segment space ahead failed" in caplog.text
        # After the refused job, the groups allocated PREALLOCATE at a time.
        assert any(c[2] >= PREALLOCATE for c in fills.calls[2:]), fills.calls
        reopened = FileLogStore(tmp_path)
        assert keys(reopened.entries(1, 120)) == keys(big_ents(1, 120))
        await reopened.close()
    run(body())


def test_an_allocation_ahead_failing_midway_takes_back_all_it_wrote(tmp_path, monkeypatch):
    """The second step of a job fails: the file is cut back to where the job
    began (the next zero-fill finds the file's end there: ZeroFills checks
    it), and `allocated` was never raised over the first step."""
    async def body():
        fills = ZeroFills(monkeypatch, fail_call=3)
        store = fills.store = FileLogStore(tmp_path)
        for i in range(1, 121, 2):
            await append(store, big_ents(i, 2))
        await store.close()
        assert fills.broken == []
        job_start, failed_step = fills.calls[1][1], fills.calls[2][1]
        assert failed_step == job_start + AHEAD_STEP and fills.calls[3][1] == job_start
        reopened = FileLogStore(tmp_path)
        assert keys(reopened.entries(1, 120)) == keys(big_ents(1, 120))
        await reopened.close()
    run(body())


def test_close_waits_for_an_allocation_ahead_without_blocking_the_loop(tmp_path, monkeypatch):
    """close() while a zero-fill job runs: the loop goes on meanwhile (close
    waits for the job as for a group in flight), and the store closes once
    the job is done."""
    async def body():
        fills = ZeroFills(monkeypatch)
        store = fills.store = FileLogStore(tmp_path)
        fills.gate.clear()
        await append(store, big_ents(1, 2))
        await append(store, big_ents(3, 2))       # a plain group: the job starts
        assert await blocking(fills.held.wait, GUARD)
        closing = asyncio.ensure_future(store.close())
        await asyncio.sleep(0.05)     # the loop runs while the job is held
        assert not closing.done()
        fills.gate.set()
        await asyncio.wait_for(closing, GUARD)
        assert not flush_threads(store.path)
        reopened = FileLogStore(tmp_path)
        assert keys(reopened.entries(1, 4)) == keys(big_ents(1, 4))
        await reopened.close()
    run(body())


def test_a_zero_fill_that_runs_out_of_space_gives_back_what_it_took(tmp_path):
    """The disk fills during a zero-fill: the file is cut back to where the
    fill began, so the blocks it took are free again for the snapshot or
    the batch that needs them, and the error is raised."""
    class FullAfterTwoWrites(FileOps):
        def __init__(self):
            self.writes = 0

        def pwrite(self, fd, data, offset):
            self.writes += 1
            if self.writes > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            super().pwrite(fd, data, offset)
    fd = os.open(tmp_path / "seg", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"abc")
        ops = FullAfterTwoWrites()
        with pytest.raises(OSError) as got:
            ops.zero_fill(fd, 3, 4 * 1024 * 1024)
        assert got.value.errno == errno.ENOSPC and ops.writes == 3
        assert os.fstat(fd).st_size == 3 and os.pread(fd, 8, 0) == b"abc"
    finally:
        os.close(fd)


@pytest.mark.parametrize("free_mib", [8, 4096])
def test_a_store_short_of_free_space_allocates_only_what_each_group_needs(tmp_path, free_mib):
    """With less free space than AHEAD_RESERVE beyond the step, a group
    allocates only its own bytes (zeros written ahead would be cut back at
    each group once the disk fills); with room, a step ahead of it."""
    class Free(FileOps):
        def free_space(self, fd):
            return free_mib * 1024 * 1024

    async def body():
        store = FileLogStore(tmp_path, ops=Free())
        for i in range(1, 9, 2):
            await append(store, big_ents(i, 2))
        seg = tmp_path / segments(tmp_path)[0]
        size = os.path.getsize(seg)
        await store.close()
        if free_mib * 1024 * 1024 < AHEAD_RESERVE:
            assert size == len(written(seg))
        else:
            assert size >= PREALLOCATE > len(written(seg))
        reopened = FileLogStore(tmp_path)
        assert keys(reopened.entries(1, 8)) == keys(big_ents(1, 8))
        await reopened.close()
    run(body())


async def fails_for_good(store, caplog, index: int, reason: str) -> None:
    """An append at `index` is reported failed with a StorageError naming
    `reason`, and the next one is refused at once."""
    got = []
    done = asyncio.get_running_loop().create_future()
    store.append(ents(index, 1), lambda err: (got.append(err), done.set_result(None)))
    with caplog.at_level(logging.ERROR, logger="raftcore.storage.file"):
        await asyncio.wait_for(done, GUARD)
    assert isinstance(got[0], StorageError) and reason in str(got[0]), got
    late = []
    store.append(ents(index + 1, 1), late.append)
    assert len(late) == 1 and isinstance(late[0], StorageError)


def test_a_failed_write_on_the_compiled_thread_fails_the_store(tmp_path, caplog):
    """pwrite failing in SyncWorker (here: the segment's descriptor made
    read-only behind the store's back) fails the group with a StorageError
    naming the OS error, and the store takes no more writes."""
    async def body():
        store = FileLogStore(tmp_path)
        await append(store, ents(1, 3))
        await append(store, ents(4, 1))
        assert sync_threads(store.path)
        seg = tmp_path / segments(tmp_path)[0]
        ro = os.open(seg, os.O_RDONLY)
        os.dup2(ro, store._fd)
        os.close(ro)
        await fails_for_good(store, caplog, 5, os.strerror(errno.EBADF))
        await store.close()
        store = FileLogStore(tmp_path)
        assert keys(store.entries(1, 4)) == keys(ents(1, 4))
        await store.close()
    run(body())


def test_a_store_dropped_without_close_ends_its_flush_thread(tmp_path):
    async def body():
        store = FileLogStore(tmp_path)
        await append(store, ents(1, 3))
        await append(store, ents(4, 1))
        [thread] = flush_threads(store.path)
        [syncer] = sync_threads(store.path)
        del store
        gc.collect()
        await blocking(thread.join, GUARD)
        await blocking(syncer.join, GUARD)
        assert not thread.is_alive() and not syncer.is_alive()
        store = FileLogStore(tmp_path)      # and the directory lock was released
        assert keys(store.entries(1, 4)) == keys(ents(1, 4))
        await store.close()
    run(body())


# ------------------------------------------------------------- failures

class FailingOps(FileOps):
    """Fails writes (after writing half) or fsyncs once armed."""

    def __init__(self):
        self.fail_write = None
        self.fail_fsync = None

    def pwrite(self, fd, data, offset):
        if self.fail_write is not None:
            super().pwrite(fd, data[:len(data) // 2], offset)
            raise self.fail_write
        super().pwrite(fd, data, offset)

    def fsync(self, fd):
        if self.fail_fsync is not None:
            raise self.fail_fsync
        super().fsync(fd)

    def sync_data(self, fd):
        if self.fail_fsync is not None:
            raise self.fail_fsync
        super().sync_data(fd)


@pytest.mark.parametrize("mode", ["thread", "executor"])
@pytest.mark.parametrize("failure", ["write_eio", "fsync_eio"])
def test_storage_failure_is_reported_through_on_flushed(tmp_path, caplog, failure, mode):
    # (ENOSPC holds the writes instead: tests/test_disk_full.py)
    async def body():
        ops = FailingOps()
        store = FileLogStore(tmp_path, ops=ops,
                             executor=inline_executor if mode == "executor" else None)
        await append(store, ents(1, 3))
        if failure == "write_eio":
            ops.fail_write = OSError(errno.EIO, os.strerror(errno.EIO))
        else:
            ops.fail_fsync = OSError(errno.EIO, os.strerror(errno.EIO))
        results = []
        done = asyncio.get_running_loop().create_future()

        def cb(err):
            results.append(err)
            if len(results) == 2:
                done.set_result(None)
        store.append(ents(4, 2), cb)
        store.append(ents(6, 1), cb)
        with caplog.at_level(logging.ERROR, logger="raftcore.storage.file"):
            await asyncio.wait_for(done, GUARD)
        assert all(isinstance(r, StorageError) for r in results), results
        assert os.strerror(errno.EIO) in str(results[0])
        # Failed for good: later writes are refused, never silently dropped.
        late = []
        store.append(ents(7, 1), late.append)
        assert len(late) == 1 and isinstance(late[0], StorageError)
        with pytest.raises(StorageError):
            store.truncate_after(1)
        with pytest.raises(StorageError):
            await store.save_vote(Vote(1, 1))
        await store.close()
        # What was flushed before the failure is all there after a reopen.
        store = FileLogStore(tmp_path)
        assert keys(store.entries(1, 3)) == keys(ents(1, 3))
        await store.close()
    run(body())


# --------------------------------------------------------------- cluster

HEARTBEAT, ELECTION_MIN, ELECTION_MAX = 0.03, 0.3, 0.6


def cfg(seed):
    return Config(heartbeat_interval=HEARTBEAT, election_timeout_min=ELECTION_MIN,
                  election_timeout_max=ELECTION_MAX, seed=seed)


async def start_nodes(router, dirs, seed):
    nodes = {}
    for i, d in dirs.items():
        # The default executor: flushes and vote saves in the thread pool.
        store = FileLogStore(d, segment_size=16 * 1024)
        nodes[i] = await Raft.create(i, cfg(seed * 10 + i), router.network(i), store,
                                     MemStateMachine())
        router.add(i, nodes[i])
    return nodes


async def leader_of(nodes):
    """The leader every node follows (waits on conditions; GUARD is a failure guard)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GUARD
    while True:
        waits = [asyncio.ensure_future(r.wait(GUARD).state(ServerState.LEADER))
                 for r in nodes.values()]
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        leaders = [r for r, t in zip(nodes.values(), waits) if t in done and not t.exception()]
        if not leaders:
            raise next(t.exception() for t in done)
        leader = leaders[0]
        term = leader.metrics.current_term
        try:
            await asyncio.gather(*(r.wait(1.0).metrics(
                lambda m: m.current_leader == leader.id and m.current_term == term)
                for r in nodes.values()))
            return leader
        except Timeout:
            if loop.time() > deadline:
                raise


async def stop_nodes(nodes):
    """Shuts every node down, then closes its store (idempotent)."""
    for r in nodes.values():
        await r.shutdown()
    for r in nodes.values():
        await r.log_store.close()


def test_cluster_restarted_from_its_directories_keeps_acknowledged_writes(tmp_path):
    async def body():
        dirs = {i: tmp_path / f"n{i}" for i in (1, 2, 3)}
        router = LocalRouter(seed=7)
        nodes = await start_nodes(router, dirs, seed=1)
        acked = {}                   # key -> value of every acknowledged write
        top = 0                      # highest acknowledged index
        try:
            await nodes[1].initialize({i: Node(f"n{i}") for i in dirs})
            leader = [await leader_of(nodes)]
            resps = await leader[0].client_write_many([["set", f"a{i}", i] for i in range(200)])
            acked.update({f"a{i}": i for i in range(200)})
            top = resps[-1].index

            # Writers still going when every node stops at once.
            enough = asyncio.Event()
            stopping = False

            async def writer(w):
                nonlocal top
                n = 0
                while not stopping:
                    try:
                        resp = await leader[0].client_write(["set", f"w{w}-{n}", n])
                    except Fatal:
                        return                  # the node stopped under it
                    except (ForwardToLeader, OutcomeUnknown):   # a set is safe to repeat
                        if not stopping:
                            leader[0] = await leader_of(nodes)
                        continue
                    acked[f"w{w}-{n}"] = n
                    top = max(top, resp.index)
                    n += 1
                    if len(acked) >= 400:
                        enough.set()
            writers = [asyncio.ensure_future(writer(w)) for w in range(8)]
            await asyncio.wait_for(enough.wait(), GUARD)
            stopping = True
            await stop_nodes(nodes)
            await asyncio.gather(*writers)
        finally:
            await stop_nodes(nodes)
        assert len(acked) >= 400

        # Restart every node from its directory, with empty state machines.
        router = LocalRouter(seed=8)
        nodes = await start_nodes(router, dirs, seed=2)
        try:
            # Before any replication: a quorum holds every acknowledged entry.
            lasts = sorted(r.metrics.last_log_index for r in nodes.values())
            assert lasts[1] >= top, (lasts, top)
            marker = None
            while marker is None:
                try:
                    marker = await (await leader_of(nodes)).client_write(["set", "__marker__", 1])
                except (ForwardToLeader, OutcomeUnknown):
                    pass
            await asyncio.gather(*(r.wait(GUARD).applied_index_at_least(marker.index)
                                   for r in nodes.values()))
            for r in nodes.values():
                data = r.state_machine.data
                lost = {k: v for k, v in acked.items() if data.get(k) != v}
                assert not lost, f"node {r.id} lost acknowledged writes: {sorted(lost)[:10]}"
            logs = [keys(r.log_store.entries(1, marker.index)) for r in nodes.values()]
            assert logs[0] == logs[1] == logs[2]
        finally:
            await stop_nodes(nodes)
    run_guarded(body(), 60)


def test_a_store_used_from_one_event_loop_then_another_reports_every_flush(tmp_path):
    """The compiled thread reports to the loop that started it; a store that
    moves on to a new loop (asyncio.run twice) gets a new one."""
    store = FileLogStore(tmp_path)

    async def write(first):
        await asyncio.wait_for(append(store, ents(first, 2)), GUARD)
    asyncio.run(write(1))       # a new segment: the Python thread
    asyncio.run(write(3))       # the compiled thread, on this loop
    asyncio.run(write(5))       # and on this one
    asyncio.run(store.close())
    store = FileLogStore(tmp_path)
    assert keys(store.entries(1, 6)) == keys(ents(1, 6))
    asyncio.run(store.close())


def test_no_descriptor_for_the_compiled_thread_fails_the_store_instead_of_stalling(
        tmp_path, monkeypatch, caplog):
    """If the compiled thread cannot be started (here: no eventfd, as when
    the process is out of descriptors), the group's on_flushed gets a
    StorageError, later writes are refused, and close() returns."""
    async def body():
        store = FileLogStore(tmp_path)
        await append(store, ents(1, 1))            # a new segment: the Python thread

        def no_fd(*args):
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        monkeypatch.setattr(os, "eventfd", no_fd)
        await fails_for_good(store, caplog, 2, os.strerror(errno.EMFILE))
        await asyncio.wait_for(store.close(), GUARD)
    run(body())
