"""FileLogStore's portable I/O path (raftcore.storage.wal.iopath): the
fallbacks for fdatasync, preallocation and eventfd that platforms without
them (macOS) take, forced on Linux by RAFTCORE_PORTABLE_IO=1 or
FileOps(io=PORTABLE). The storage conformance suite and the power-cut tests
run with both paths (test_storage_suite.py, test_crash_powercut.py); these
tests show that the path a store reports is the one it really takes: the
descriptor its sync thread wakes the loop with, the sync call it makes, and
whether its segment space is reserved or only a grown size.
"""
from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import os
import pathlib
import stat
import subprocess
import sys

import pytest

from raftcore.storage import FileLogStore
from raftcore.storage.file import PREALLOCATE, FileOps
from raftcore.storage.sync_worker import SYNC_CALLS, SyncWorker
from raftcore.storage.wal.iopath import NATIVE, PORTABLE, PORTABLE_ENV, portable_requested
from raftcore.storage.wal.writer import AHEAD_STEP
from raftcore.types import ENTRY_NORMAL, Entry

TESTS = pathlib.Path(__file__).parent
GUARD = 20.0


async def append(store: FileLogStore, entries: list) -> None:
    done = asyncio.get_running_loop().create_future()
    store.append(entries, done.set_result)
    assert await asyncio.wait_for(done, GUARD) is None


def wakeup_kind(fd: int) -> str:
    """"pipe", or what /proc says the descriptor is (an eventfd)."""
    if stat.S_ISFIFO(os.fstat(fd).st_mode):
        return "pipe"
    return os.readlink(f"/proc/self/fd/{fd}")


def probe(path: str, io_name: str = "") -> dict:
    """Opens a store in `path` (with FileOps(io=NATIVE/PORTABLE) if io_name
    names one, else the default), writes a group that starts a segment (the
    Python flush thread allocates it) and one that the compiled sync thread
    writes, and reports what the store did."""
    async def body() -> dict:
        io = {"native": NATIVE, "portable": PORTABLE}.get(io_name)
        store = FileLogStore(path, ops=FileOps(io=io) if io else None)
        await append(store, [Entry(1, 1, ENTRY_NORMAL, "a")])
        await append(store, [Entry(1, 2, ENTRY_NORMAL, "b")])
        syncer = store._syncer
        assert syncer is not None, "the second group did not go through the sync thread"
        seg = max(p for p in os.listdir(path) if p.startswith("seg-"))
        st = os.stat(os.path.join(path, seg))
        out = {"io": dataclasses.asdict(store.io_path), "sync_call": syncer.sync_call,
               "wakeup": wakeup_kind(syncer._read_fd), "size": st.st_size,
               "reserved": st.st_blocks * 512}
        await store.close()
        store = FileLogStore(path)
        out["payloads"] = [e.payload for e in store.entries(1, 2)]
        await store.close()
        return out
    return asyncio.run(body())


def probe_in_subprocess(path, env_value: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(TESTS), **{PORTABLE_ENV: env_value})
    proc = subprocess.run(
        [sys.executable, "-c",
         "import json, sys, test_portable_io as t; print(json.dumps(t.probe(sys.argv[1])))",
         str(path)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_portable(out: dict) -> None:
    assert out["io"] == dataclasses.asdict(PORTABLE) == \
        {"sync_data": "fsync", "sync": "fsync", "allocate": "ftruncate", "wakeup": "pipe"}
    assert out["sync_call"] == "fsync"
    assert out["wakeup"] == "pipe"
    # Grown by ftruncate: the preallocated size, without the blocks behind it.
    assert out["size"] >= PREALLOCATE and out["reserved"] < PREALLOCATE // 2, out
    assert out["payloads"] == ["a", "b"]


def assert_native(out: dict) -> None:
    assert out["io"] == dataclasses.asdict(NATIVE) == \
        {"sync_data": "fdatasync", "sync": "fsync", "allocate": "zero-fill",
         "wakeup": "eventfd"}
    assert out["sync_call"] == "fdatasync"
    assert out["wakeup"] == "anon_inode:[eventfd]"
    # Zeros were written ahead of the groups (the flush thread goes on
    # writing them, AHEAD_STEP at a time): every byte of the size has its block.
    assert out["size"] >= AHEAD_STEP and out["reserved"] >= out["size"], out
    assert out["payloads"] == ["a", "b"]


def test_the_environment_variable_makes_stores_take_the_portable_calls(tmp_path):
    assert_portable(probe_in_subprocess(tmp_path / "portable", "1"))


@pytest.mark.parametrize("value", ["0", ""])
def test_without_the_environment_variable_stores_take_linux_calls(tmp_path, value):
    assert_native(probe_in_subprocess(tmp_path / "native", value))


def test_a_store_given_portable_file_ops_takes_the_portable_calls(tmp_path):
    assert_portable(probe(str(tmp_path / "portable"), "portable"))
    assert_native(probe(str(tmp_path / "native"), "native"))


class NoFallocateOps(FileOps):
    """A file system that cannot reserve blocks (as musl reports it), for a
    store asked to preallocate with posix_fallocate."""

    def __init__(self) -> None:
        super().__init__(io=dataclasses.replace(NATIVE, allocate="posix_fallocate"))
        self.fallocate_calls = 0

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        self.fallocate_calls += 1
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))


def test_a_file_system_without_fallocate_makes_the_store_grow_files_with_ftruncate(
        tmp_path, caplog):
    async def body() -> None:
        ops = NoFallocateOps()
        store = FileLogStore(str(tmp_path), ops=ops)
        for i in range(1, 4):
            await append(store, [Entry(1, i, ENTRY_NORMAL, f"v{i}")])
        assert store.io_path.allocate == "ftruncate"
        assert ops.fallocate_calls == 1        # tried once, then not again
        await store.close()
        store = FileLogStore(str(tmp_path))
        assert [e.payload for e in store.entries(1, 3)] == ["v1", "v2", "v3"]
        await store.close()
    with caplog.at_level("WARNING", logger="raftcore.storage"):
        asyncio.run(body())
    assert "posix_fallocate is not supported here" in caplog.text


def test_a_bad_environment_value_is_refused_naming_the_variable():
    env = dict(os.environ, **{PORTABLE_ENV: "yes"})
    proc = subprocess.run([sys.executable, "-c", "import raftcore"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert f"{PORTABLE_ENV} must be 1" in proc.stderr and "'yes'" in proc.stderr


def test_the_environment_value_is_read_strictly():
    assert [portable_requested(v) for v in (None, "", "0", " 1 ", "1")] == \
        [False, False, False, True, True]
    for bad in ("true", "2", "on"):
        with pytest.raises(ValueError, match=PORTABLE_ENV):
            portable_requested(bad)


def test_the_sync_worker_refuses_a_sync_call_the_build_lacks():
    assert SYNC_CALLS == ("fdatasync", "fsync")      # a Linux build
    r, w = os.pipe()
    try:
        assert SyncWorker(w).sync_call == "fdatasync"
        assert SyncWorker(w, "fsync").sync_call == "fsync"
        with pytest.raises(ValueError, match="F_FULLFSYNC"):
            SyncWorker(w, "F_FULLFSYNC")
    finally:
        os.close(r)
        os.close(w)
