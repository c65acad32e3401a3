"""Smoke test of an installed raftcore wheel (no pytest, no source tree).

Run as `python tests/smoke/cluster.py` with the Python the wheel was
installed into, from any folder: cibuildwheel's test-command and .ci/run
(.ci/wheels.py) run it for every wheel, once as is and once with
RAFTCORE_PORTABLE_IO=1. It checks that

- the engine and runtime modules are compiled extensions, the .pyi stubs,
  py.typed and the status page ship, and no Cython source (.pyx, .pxd, .c)
  does;
- the version is one: raftcore.__version__, the installed metadata and
  `raftcore --version` agree;
- a 3-node cluster (in process, LocalRouter) on FileLogStore elects a
  leader and replicates writes to every node, and after a shutdown the
  stores reopen with every entry, and the restarted cluster takes a write;
- the stores use the portable I/O calls when RAFTCORE_PORTABLE_IO=1 asks;
- the Redis apply reads this CPython's dict layout right where it reads
  it at all (kv.redis.dict_slots, on CPython 3.11 to 3.13).

Exits non-zero (an assertion or an exception) when any check fails.
"""
from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.metadata
import os
import pathlib
import subprocess
import sys
import sysconfig
import tempfile

import raftcore
from raftcore import Config, ForwardToLeader, Node, Raft, ServerState
from raftcore.errors import OutcomeUnknown
from raftcore.network import LocalRouter
from raftcore.storage import FileLogStore, MemStateMachine

COMPILED = ["engine", "core", "codec", "storage.sync_worker"]
WRITES = 100
TIMEOUT = 30.0


def check_package() -> None:
    pkg = pathlib.Path(raftcore.__file__).parent
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for name in COMPILED:
        mod = __import__(f"raftcore.{name}", fromlist=["_"])
        assert mod.__file__.endswith(suffixes), f"raftcore.{name} is not compiled: {mod.__file__}"
        assert (pkg / (name.replace(".", "/") + ".pyi")).is_file(), f"no stub for {name}"
    assert (pkg / "py.typed").is_file()
    assert (pkg / "kv" / "status_page.html").is_file()
    sources = [str(p.relative_to(pkg)) for ext in ("*.pyx", "*.pxd", "*.c")
               for p in pkg.rglob(ext)]
    assert not sources, f"Cython sources shipped in the wheel: {sources}"


def check_dict_layout() -> None:
    from raftcore.kv.redis import fast
    reads = (sys.implementation.name == "cpython" and (3, 11) <= sys.version_info[:2] <= (3, 13)
             and not sysconfig.get_config_var("Py_GIL_DISABLED"))
    assert fast.DICT_SLOTS_READ == reads, (fast.DICT_SLOTS_READ, sys.version)
    d = {b"key:%012d" % i: b"v" for i in range(20000)}
    hits = fast.first_probe_hits(d)
    assert (len(d) // 2 < hits <= len(d)) if reads else hits == 0, hits


def check_version() -> None:
    version = importlib.metadata.version("raftcore")
    assert raftcore.__version__ == version, (raftcore.__version__, version)
    script = pathlib.Path(sys.executable).parent / "raftcore"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == f"raftcore {version}", out


async def start(router: LocalRouter, stores: dict) -> list[Raft]:
    rafts = []
    for i, store in stores.items():
        raft = await Raft.create(i, Config(seed=i), router.network(i), store, MemStateMachine())
        router.add(i, raft)
        rafts.append(raft)
    return rafts


async def leader(rafts: list[Raft]) -> Raft:
    """The node that leads, once one does."""
    async def first(raft: Raft) -> Raft:
        await raft.wait(TIMEOUT).state(ServerState.LEADER)
        return raft
    tasks = [asyncio.ensure_future(first(r)) for r in rafts]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()
    return done.pop().result()


async def write(rafts: list[Raft], value: int) -> int:
    """Writes k=value through whichever node leads, again if an election
    got in the way (a set is safe to apply twice); returns its log index."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        try:
            return (await (await leader(rafts)).client_write(["set", "k", value])).index
        except (ForwardToLeader, OutcomeUnknown):
            if asyncio.get_running_loop().time() > deadline:
                raise


async def write_and_check(rafts: list[Raft], value: int) -> int:
    """Writes k=value; every node applies it. Returns its log index."""
    index = await write(rafts, value)
    for r in rafts:
        await r.wait(TIMEOUT).applied_index_at_least(index)
        assert r.state_machine.get("k") == value, (r.metrics, value)
    return index


async def cluster(root: str, portable: bool) -> None:
    ids = (1, 2, 3)
    stores = {i: FileLogStore(os.path.join(root, f"n{i}")) for i in ids}
    for store in stores.values():
        assert store.io_path.portable == portable, store.io_path
    router = LocalRouter()
    rafts = await start(router, stores)
    await rafts[0].initialize({i: Node(f"n{i}") for i in ids})
    for n in range(WRITES):
        await write(rafts, n)
    last = await write_and_check(rafts, WRITES)
    for r in rafts:
        await r.shutdown()
    for store in stores.values():
        await store.close()

    # Everything is on disk: the reopened stores hold every entry, and the
    # restarted cluster elects a leader and takes a write.
    stores = {i: FileLogStore(os.path.join(root, f"n{i}")) for i in ids}
    for store in stores.values():
        state = await store.get_log_state()
        assert state.last_log_id is not None and state.last_log_id.index >= last, state
    rafts = await start(LocalRouter(), stores)
    await write_and_check(rafts, WRITES + 1)
    for r in rafts:
        await r.shutdown()
    for store in stores.values():
        await store.close()


def main() -> None:
    check_package()
    check_dict_layout()
    check_version()
    portable = os.environ.get("RAFTCORE_PORTABLE_IO", "") == "1"
    with tempfile.TemporaryDirectory(prefix="raftcore-smoke-") as root:
        asyncio.run(asyncio.wait_for(cluster(root, portable), 4 * TIMEOUT))
    io = "portable I/O" if portable else "the platform's I/O"
    print(f"smoke test ok: raftcore {raftcore.__version__} on Python "
          f"{sys.version.split()[0]}, 3-node FileLogStore cluster with {io}")


if __name__ == "__main__":
    main()
